"""ApiKeyService: mint, list and revoke the API keys of the caller's workspace.

A key made for someone else is delegated: it acts in this workspace and never for its user
beyond it. Only a personal key making a key for its own user makes another personal one, so
no chain of keys an owner made turns into a key that speaks for someone.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from agentplatform.v1 import api_key_pb2, api_key_service_pb2, api_key_service_pb2_grpc
from google.protobuf import empty_pb2

from services.control_plane import store
from services.control_plane.auth import Principal, new_api_key
from services.control_plane.budgets import BUDGET_PATHS, budget_change
from services.control_plane.convert import api_key_to_proto
from services.control_plane.runtime import Runtime
from services.rpc import validate
from services.rpc.errors import invalid_argument, not_found
from services.rpc.interceptors import current_principal
from services.rpc.names import parse_api_key_name, parse_user_name
from services.rpc.pagination import KEYSET, Page

Context = grpc.aio.ServicerContext[Any, Any]

DISPLAY_NAME_MAX = 100


class ApiKeyService(api_key_service_pb2_grpc.ApiKeyServiceServicer):
    """Serve the caller's workspace's API keys; a key is shown once, when it is made."""

    def __init__(self, runtime: Runtime) -> None:
        self._rt = runtime

    async def CreateApiKey(
        self, request: api_key_service_pb2.CreateApiKeyRequest, context: Context
    ) -> api_key_service_pb2.CreateApiKeyResponse:
        principal: Principal = current_principal()
        spec = request.api_key
        display_name = validate.text_field(
            "api_key.display_name",
            spec.display_name.strip(),
            max_chars=DISPLAY_NAME_MAX,
            required=True,
        )
        user_id = parse_user_name(spec.user, "api_key.user") if spec.user else principal.user_id
        key = new_api_key()
        async with self._rt.pool.acquire() as conn, conn.transaction():
            # Membership, not mere existence: a key for a non-member would be a way in, and
            # any user this workspace does not share reads the same.
            if await store.member_get(conn, principal.workspace_id, user_id) is None:
                raise not_found(spec.user)
            key_id = await store.api_key_create(
                conn,
                workspace_id=principal.workspace_id,
                user_id=user_id,
                name=display_name,
                prefix=key.prefix,
                secret_sha256=key.secret_sha256,
                personal=principal.personal and user_id == principal.user_id,
            )
            row = await store.api_key_get(conn, principal.workspace_id, key_id)
        assert row is not None
        return api_key_service_pb2.CreateApiKeyResponse(api_key=api_key_to_proto(row), key=key.key)

    async def ListApiKeys(
        self, request: api_key_service_pb2.ListApiKeysRequest, context: Context
    ) -> api_key_service_pb2.ListApiKeysResponse:
        principal: Principal = current_principal()
        page = Page.of(
            request, f"api_keys:{principal.workspace_id}", KEYSET, default=100, maximum=1000
        )
        async with self._rt.pool.acquire() as conn:
            rows = await store.api_key_list(
                conn, principal.workspace_id, before=page.after, limit=page.fetch
            )
        rows, token = page.cut(rows, lambda r: (r["create_time"], r["id"]))
        return api_key_service_pb2.ListApiKeysResponse(
            api_keys=[api_key_to_proto(r) for r in rows], next_page_token=token
        )

    async def UpdateApiKey(
        self, request: api_key_service_pb2.UpdateApiKeyRequest, context: Context
    ) -> api_key_pb2.ApiKey:
        principal: Principal = current_principal()
        key_id = parse_api_key_name(request.api_key.name, "api_key.name")
        paths = set(request.update_mask.paths) or {"budget"}  # the one writable field
        if paths - BUDGET_PATHS:
            raise invalid_argument(
                "update_mask",
                "update_mask must name budget or one of its limits; other fields do not change.",
            )
        change = budget_change("api_key", request.api_key.budget, paths)
        assert change is not None
        async with self._rt.pool.acquire() as conn, conn.transaction():
            if not await store.api_key_budget_set(
                conn,
                principal.workspace_id,
                key_id,
                tokens=change.tokens,
                cost_micros=change.cost_micros,
                set_tokens=change.set_tokens,
                set_cost=change.set_cost,
            ):
                raise not_found(request.api_key.name)
            row = await store.api_key_get(conn, principal.workspace_id, key_id)
        assert row is not None
        return api_key_to_proto(row)

    async def DeleteApiKey(
        self, request: api_key_service_pb2.DeleteApiKeyRequest, context: Context
    ) -> empty_pb2.Empty:
        principal: Principal = current_principal()
        key_id = parse_api_key_name(request.name)
        since = asyncio.get_running_loop().time()
        async with self._rt.pool.acquire() as conn:
            # The revocation notifies every replica, which ends the key's open streams.
            if not await store.api_key_revoke(conn, principal.workspace_id, key_id):
                raise not_found(request.name)
        # This replica refuses the key from now on; the others once they hear the change,
        # which they do by the time this replica hears it too.
        self._rt.revocations.keys.forget_key(key_id)
        await self._rt.revocations.until_applied_everywhere(f"key:{key_id}", since=since)
        return empty_pb2.Empty()
