"""InvitationService: people join a workspace with their consent, never by being named.

    admin of A ── CreateInvitation(role) ──► token "apinv_…" (shown once; its SHA-256 stored)
         └─ hands the token to the person ─► AcceptInvitation(token), with a personal key
                                                 └─► member of A + a personal key for A

The token is the workspace's consent, the personal key the person's: a key an owner made
for someone (delegated) cannot accept for them. An unknown, expired, revoked or used token
answers the same NOT_FOUND, so a token reveals nothing until it works, and then once.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from agentplatform.v1 import (
    invitation_pb2,
    invitation_service_pb2,
    invitation_service_pb2_grpc,
)
from google.protobuf import empty_pb2

from services.control_plane import store
from services.control_plane.auth import Principal, new_api_key, require_personal_key
from services.control_plane.convert import (
    api_key_to_proto,
    invitation_to_proto,
    workspace_to_proto,
)
from services.control_plane.runtime import Runtime
from services.control_plane.workspaces import DISPLAY_NAME_MAX, check_member_change, check_role
from services.rpc import validate
from services.rpc.errors import ApiError, Reason, invalid_argument, not_found
from services.rpc.interceptors import current_principal
from services.rpc.names import parse_invitation_name, workspace_name
from services.rpc.pagination import KEYSET, Page

Context = grpc.aio.ServicerContext[Any, Any]

TOKEN_PREFIX = "apinv_"
_TOKEN_MAX = 200
DEFAULT_TTL = timedelta(days=7)
MAX_TTL = timedelta(days=30)
ACCEPTED_KEY_NAME = "invitation"


def new_invitation_token() -> tuple[str, bytes]:
    """Make a random invitation token; return it and the SHA-256 that is stored instead."""
    token = f"{TOKEN_PREFIX}{secrets.token_urlsafe(32)}"
    return token, hashlib.sha256(token.encode()).digest()


def token_digest(token: str, field: str) -> bytes:
    """Check an invitation token's form and return the SHA-256 it is stored by."""
    token = token.strip()
    if not token:
        raise invalid_argument(field, f"{field} is required.")
    if not token.startswith(TOKEN_PREFIX) or len(token) > _TOKEN_MAX:
        raise invalid_argument(field, f"{field} must be an invitation token, 'apinv_…'.")
    return hashlib.sha256(token.encode()).digest()


def expiration(invitation: invitation_pb2.Invitation, now: datetime) -> datetime:
    """Return when a new invitation expires: its expire_time or ttl, else DEFAULT_TTL."""
    which = invitation.WhichOneof("expiration")
    if which is None:
        return now + DEFAULT_TTL
    if which == "ttl":
        ttl = invitation.ttl
        seconds = ttl.seconds + ttl.nanos / 1e9
        if not 0 < seconds <= MAX_TTL.total_seconds():
            raise invalid_argument(
                "invitation.ttl", f"invitation.ttl must be above 0 and at most {MAX_TTL.days} days."
            )
        return now + timedelta(seconds=seconds)
    stamp = invitation.expire_time
    at = stamp.seconds + stamp.nanos / 1e9
    if not 0 < at - now.timestamp() <= MAX_TTL.total_seconds():
        raise invalid_argument(
            "invitation.expire_time",
            f"invitation.expire_time must be in the future and at most {MAX_TTL.days} days ahead.",
        )
    return datetime.fromtimestamp(at, UTC)


def invitation_not_found() -> ApiError:
    """Build the one answer for a token that does not work, whatever the reason."""
    return ApiError(
        grpc.StatusCode.NOT_FOUND,
        Reason.NOT_FOUND,
        "No invitation has that token: it is unknown, expired, revoked or used already.",
        metadata={"resource": "invitation"},
    )


class InvitationService(invitation_service_pb2_grpc.InvitationServiceServicer):
    """Serve the caller's workspace's invitations and the acceptance of any invitation."""

    def __init__(self, runtime: Runtime) -> None:
        self._rt = runtime

    async def CreateInvitation(
        self, request: invitation_service_pb2.CreateInvitationRequest, context: Context
    ) -> invitation_service_pb2.CreateInvitationResponse:
        principal: Principal = current_principal()
        spec = request.invitation
        role = check_role("invitation.role", spec.role)
        check_member_change(principal.role, None, role)
        display_name = validate.text_field(
            "invitation.display_name", spec.display_name.strip(), max_chars=DISPLAY_NAME_MAX
        )
        expire_time = expiration(spec, datetime.now(UTC))
        token, digest = new_invitation_token()
        async with self._rt.pool.acquire() as conn:
            row = await store.invitation_create(
                conn,
                workspace_id=principal.workspace_id,
                role=role,
                display_name=display_name,
                token_sha256=digest,
                created_by=principal.user_id,
                expire_time=expire_time,
            )
        return invitation_service_pb2.CreateInvitationResponse(
            invitation=invitation_to_proto(row), token=token
        )

    async def GetInvitation(
        self, request: invitation_service_pb2.GetInvitationRequest, context: Context
    ) -> invitation_pb2.Invitation:
        principal: Principal = current_principal()
        invitation_id = parse_invitation_name(request.name)
        async with self._rt.pool.acquire() as conn:
            row = await store.invitation_get(conn, principal.workspace_id, invitation_id)
        if row is None:
            raise not_found(request.name)
        return invitation_to_proto(row)

    async def ListInvitations(
        self, request: invitation_service_pb2.ListInvitationsRequest, context: Context
    ) -> invitation_service_pb2.ListInvitationsResponse:
        principal: Principal = current_principal()
        page = Page.of(
            request, f"invitations:{principal.workspace_id}", KEYSET, default=100, maximum=1000
        )
        async with self._rt.pool.acquire() as conn:
            rows = await store.invitation_list(
                conn, principal.workspace_id, before=page.after, limit=page.fetch
            )
        rows, token = page.cut(rows, lambda r: (r["create_time"], r["id"]))
        return invitation_service_pb2.ListInvitationsResponse(
            invitations=[invitation_to_proto(r) for r in rows], next_page_token=token
        )

    async def DeleteInvitation(
        self, request: invitation_service_pb2.DeleteInvitationRequest, context: Context
    ) -> empty_pb2.Empty:
        principal: Principal = current_principal()
        invitation_id = parse_invitation_name(request.name)
        async with self._rt.pool.acquire() as conn, conn.transaction():
            row = await store.invitation_get(conn, principal.workspace_id, invitation_id)
            if row is None:
                raise not_found(request.name)
            check_member_change(principal.role, row["role"], None)
            # None: accepted or revoked since the read; either way it is gone.
            if await store.invitation_delete(conn, principal.workspace_id, invitation_id) is None:
                raise not_found(request.name)
        return empty_pb2.Empty()

    async def AcceptInvitation(
        self, request: invitation_service_pb2.AcceptInvitationRequest, context: Context
    ) -> invitation_service_pb2.AcceptInvitationResponse:
        principal: Principal = current_principal()
        digest = token_digest(request.invitation_token, "invitation_token")
        key_name = validate.text_field(
            "api_key_display_name",
            request.api_key_display_name.strip() or ACCEPTED_KEY_NAME,
            max_chars=DISPLAY_NAME_MAX,
        )
        require_personal_key(principal, "accept an invitation for you")
        key = new_api_key()
        async with self._rt.pool.acquire() as conn, conn.transaction():
            invitation = await store.invitation_take(conn, digest)
            if invitation is None:
                raise invitation_not_found()
            workspace_id = invitation["workspace_id"]
            if (
                await store.member_add(conn, workspace_id, principal.user_id, invitation["role"])
                is None
            ):
                # Raising rolls the take back: the invitation stays for whom it was meant.
                raise ApiError(
                    grpc.StatusCode.ALREADY_EXISTS,
                    Reason.ALREADY_EXISTS,
                    "You are a member of that workspace already; the invitation still works.",
                    metadata={"resource": workspace_name(workspace_id)},
                )
            key_id = await store.api_key_create(
                conn,
                workspace_id=workspace_id,
                user_id=principal.user_id,
                name=key_name,
                prefix=key.prefix,
                secret_sha256=key.secret_sha256,
                personal=True,
            )
            workspace = await store.workspace_get(conn, workspace_id, principal.user_id)
            key_row = await store.api_key_get(conn, workspace_id, key_id)
        assert workspace is not None and key_row is not None
        return invitation_service_pb2.AcceptInvitationResponse(
            workspace=workspace_to_proto(workspace), api_key=api_key_to_proto(key_row), key=key.key
        )
