"""ProfileService: the caller's own profile.

A user has one profile, seen in every workspace they belong to, so only a personal key
changes it: a key an owner made for the user (delegated) must not let that workspace rename
them in the others.
"""

from __future__ import annotations

from typing import Any

import grpc
from agentplatform.v1 import profile_pb2, profile_service_pb2, profile_service_pb2_grpc

from services.control_plane import store
from services.control_plane.auth import Principal, require_personal_key
from services.control_plane.runtime import Runtime
from services.rpc import validate
from services.rpc.errors import invalid_argument, not_found
from services.rpc.interceptors import current_principal
from services.rpc.names import parse_profile_name, user_name, workspace_name

Context = grpc.aio.ServicerContext[Any, Any]

DISPLAY_NAME_MAX = 100


class ProfileService(profile_service_pb2_grpc.ProfileServiceServicer):
    """Serve the caller's profile; other users' profiles read as not found."""

    def __init__(self, runtime: Runtime) -> None:
        self._rt = runtime

    def _own(self, principal: Principal, name: str, field: str) -> None:
        user_id = parse_profile_name(name, field)
        if user_id is not None and user_id != principal.user_id:
            raise not_found(name)

    def _proto(self, principal: Principal, display_name: str) -> profile_pb2.Profile:
        return profile_pb2.Profile(
            name=f"{user_name(principal.user_id)}/profile",
            display_name=display_name,
            workspace=workspace_name(principal.workspace_id),
            role=principal.role,
        )

    async def GetProfile(
        self, request: profile_service_pb2.GetProfileRequest, context: Context
    ) -> profile_pb2.Profile:
        principal: Principal = current_principal()
        self._own(principal, request.name, "name")
        async with self._rt.pool.acquire() as conn:
            row = await store.profile_get(conn, principal.user_id)
        if row is None:
            raise not_found(request.name)
        return self._proto(principal, row["display_name"])

    async def UpdateProfile(
        self, request: profile_service_pb2.UpdateProfileRequest, context: Context
    ) -> profile_pb2.Profile:
        principal: Principal = current_principal()
        self._own(principal, request.profile.name, "profile.name")
        require_personal_key(principal, "change your profile, which all your workspaces see")
        paths = set(request.update_mask.paths) or {"display_name"}
        if paths - {"display_name"}:
            raise invalid_argument(
                "update_mask", "Only display_name can be updated; other fields are output only."
            )
        display_name = validate.text_field(
            "profile.display_name",
            request.profile.display_name.strip(),
            max_chars=DISPLAY_NAME_MAX,
            required=True,
        )
        async with self._rt.pool.acquire() as conn:
            row = await store.profile_update(conn, principal.user_id, display_name)
        if row is None:
            raise not_found(request.profile.name)
        return self._proto(principal, row["display_name"])
