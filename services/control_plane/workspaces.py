"""WorkspaceService: the caller's workspace, the workspaces of their user, and members.

Who may call what is the policy table's business (policy.py); this module adds the rules
that depend on the data: admins manage members below owner only, no change may leave a
workspace without an owner, and a workspace never reaches a user it does not share —
CreateMember only creates new users (people with a user elsewhere join by invitation,
invitations.py), and only a personal key lists its user's other workspaces.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import grpc
from agentplatform.v1 import workspace_pb2, workspace_service_pb2, workspace_service_pb2_grpc
from google.protobuf import empty_pb2

from services.control_plane import store
from services.control_plane.auth import Principal
from services.control_plane.budgets import BUDGET_PATHS, budget_change, budget_to_proto
from services.control_plane.convert import member_to_proto, workspace_to_proto
from services.control_plane.policy import ROLES
from services.control_plane.runtime import Runtime
from services.rpc import validate
from services.rpc.db import Connection
from services.rpc.errors import ApiError, Reason, invalid_argument, not_found
from services.rpc.interceptors import current_principal
from services.rpc.names import (
    parse_member_name,
    parse_workspace_name,
)
from services.rpc.pagination import KEYSET, Page

Context = grpc.aio.ServicerContext[Any, Any]

DISPLAY_NAME_MAX = 100
# What UpdateWorkspace changes; an empty update_mask means the display name only, so a
# rename never clears a budget.
_UPDATABLE = frozenset({"display_name"} | BUDGET_PATHS)


def check_role(field: str, role: str) -> str:
    """Check a role name from a request."""
    if role not in ROLES:
        raise invalid_argument(field, f"{field} must be one of {', '.join(ROLES)}; got {role!r}.")
    return role


def check_member_change(actor_role: str, before: str | None, after: str | None) -> None:
    """Refuse an admin's change that touches an owner; only owners manage owners."""
    if actor_role != "owner" and "owner" in (before, after):
        raise ApiError(
            grpc.StatusCode.PERMISSION_DENIED,
            Reason.PERMISSION_DENIED,
            f"Your role ({actor_role}) cannot add, change or remove owners; it takes owner.",
            metadata={"role": actor_role, "required_role": "owner"},
        )


def last_owner() -> ApiError:
    """Build the refusal of a change that would leave a workspace without an owner."""
    return ApiError(
        grpc.StatusCode.FAILED_PRECONDITION,
        Reason.LAST_OWNER,
        "The workspace must keep at least one owner; make another member owner first.",
    )


class WorkspaceService(workspace_service_pb2_grpc.WorkspaceServiceServicer):
    """Serve the caller's workspace and its members; other workspaces read as not found."""

    def __init__(self, runtime: Runtime) -> None:
        self._rt = runtime

    def _own_workspace(self, principal: Principal, name: str, field: str) -> None:
        if parse_workspace_name(name, field) != principal.workspace_id:
            raise not_found(name)

    async def GetWorkspace(
        self, request: workspace_service_pb2.GetWorkspaceRequest, context: Context
    ) -> workspace_pb2.Workspace:
        principal: Principal = current_principal()
        self._own_workspace(principal, request.name, "name")
        async with self._rt.pool.acquire() as conn:
            row = await store.workspace_get(conn, principal.workspace_id, principal.user_id)
            budget = await store.budget_get(conn, principal.workspace_id)
        if row is None or budget is None:
            raise not_found(request.name)
        workspace = workspace_to_proto(row)
        workspace.budget.CopyFrom(budget_to_proto(budget))
        return workspace

    async def ListWorkspaces(
        self, request: workspace_service_pb2.ListWorkspacesRequest, context: Context
    ) -> workspace_service_pb2.ListWorkspacesResponse:
        principal: Principal = current_principal()
        # Tokens are bound to the key, not the user: a delegated key's page is not a personal one's.
        page = Page.of(
            request, f"workspaces:{principal.api_key_id}", KEYSET, default=50, maximum=1000
        )
        async with self._rt.pool.acquire() as conn:
            if principal.personal:
                rows = await store.workspace_list(
                    conn, principal.user_id, after=page.after, limit=page.fetch
                )
            else:
                # A delegated key must not tell its workspace where else its user is; its
                # one row never fills a page, so there is no second page to ask for.
                own = await store.workspace_get(conn, principal.workspace_id, principal.user_id)
                rows = [own] if own is not None else []
        rows, token = page.cut(rows, lambda r: (r["create_time"], r["id"]))
        return workspace_service_pb2.ListWorkspacesResponse(
            workspaces=[workspace_to_proto(r) for r in rows], next_page_token=token
        )

    async def UpdateWorkspace(
        self, request: workspace_service_pb2.UpdateWorkspaceRequest, context: Context
    ) -> workspace_pb2.Workspace:
        principal: Principal = current_principal()
        self._own_workspace(principal, request.workspace.name, "workspace.name")
        paths = set(request.update_mask.paths) or {"display_name"}
        if paths - _UPDATABLE:
            raise invalid_argument(
                "update_mask",
                "Only display_name and budget (or its two limits) can be updated; other fields "
                "are output only.",
            )
        display_name = (
            validate.text_field(
                "workspace.display_name",
                request.workspace.display_name.strip(),
                max_chars=DISPLAY_NAME_MAX,
                required=True,
            )
            if "display_name" in paths
            else None
        )
        change = budget_change("workspace", request.workspace.budget, paths)
        async with self._rt.pool.acquire() as conn, conn.transaction():
            if display_name is not None:
                await store.workspace_rename(conn, principal.workspace_id, display_name)
            if change is not None:
                await store.budget_set(
                    conn,
                    principal.workspace_id,
                    tokens=change.tokens,
                    cost_micros=change.cost_micros,
                    set_tokens=change.set_tokens,
                    set_cost=change.set_cost,
                )
            row = await store.workspace_get(conn, principal.workspace_id, principal.user_id)
            budget = await store.budget_get(conn, principal.workspace_id)
        assert row is not None and budget is not None
        workspace = workspace_to_proto(row)
        workspace.budget.CopyFrom(budget_to_proto(budget))
        return workspace

    async def CreateMember(
        self, request: workspace_service_pb2.CreateMemberRequest, context: Context
    ) -> workspace_pb2.Member:
        principal: Principal = current_principal()
        spec = request.member
        role = check_role("member.role", spec.role)
        check_member_change(principal.role, None, role)
        if spec.user:
            # The same answer for any id, without a lookup: whether a user exists elsewhere
            # is not this workspace's to learn.
            raise invalid_argument(
                "member.user",
                "member.user is output only: CreateMember creates a new user. To add someone "
                "who has a user already, create an invitation (CreateInvitation) for them.",
            )
        display_name = validate.text_field(
            "member.display_name",
            spec.display_name.strip(),
            max_chars=DISPLAY_NAME_MAX,
            required=True,
        )
        async with self._rt.pool.acquire() as conn, conn.transaction():
            user_id = await store.user_create(conn, display_name)
            row = await store.member_add(conn, principal.workspace_id, user_id, role)
        assert row is not None  # a user made just now is nobody's member yet
        return member_to_proto(row)

    async def GetMember(
        self, request: workspace_service_pb2.GetMemberRequest, context: Context
    ) -> workspace_pb2.Member:
        principal: Principal = current_principal()
        user_id = parse_member_name(request.name)
        async with self._rt.pool.acquire() as conn:
            row = await store.member_get(conn, principal.workspace_id, user_id)
        if row is None:
            raise not_found(request.name)
        return member_to_proto(row)

    async def ListMembers(
        self, request: workspace_service_pb2.ListMembersRequest, context: Context
    ) -> workspace_service_pb2.ListMembersResponse:
        principal: Principal = current_principal()
        page = Page.of(
            request, f"members:{principal.workspace_id}", KEYSET, default=100, maximum=1000
        )
        async with self._rt.pool.acquire() as conn:
            rows = await store.member_list(
                conn, principal.workspace_id, after=page.after, limit=page.fetch
            )
        rows, token = page.cut(rows, lambda r: (r["create_time"], r["user_id"]))
        return workspace_service_pb2.ListMembersResponse(
            members=[member_to_proto(r) for r in rows], next_page_token=token
        )

    async def UpdateMember(
        self, request: workspace_service_pb2.UpdateMemberRequest, context: Context
    ) -> workspace_pb2.Member:
        principal: Principal = current_principal()
        user_id = parse_member_name(request.member.name, "member.name")
        if set(request.update_mask.paths) - {"role"}:
            raise invalid_argument("update_mask", "Only role can be updated.")
        role = check_role("member.role", request.member.role)
        since = asyncio.get_running_loop().time()
        async with self._rt.pool.acquire() as conn, conn.transaction():
            await self._locked_member(conn, principal, user_id, request.member.name, role)
            await store.member_update_role(conn, principal.workspace_id, user_id, role)
            row = await store.member_get(conn, principal.workspace_id, user_id)
        self._rt.revocations.keys.forget_member(principal.workspace_id, user_id)
        await self._rt.revocations.until_applied_everywhere(
            f"member:{principal.workspace_id}:{user_id}", since=since
        )
        assert row is not None
        return member_to_proto(row)

    async def DeleteMember(
        self, request: workspace_service_pb2.DeleteMemberRequest, context: Context
    ) -> empty_pb2.Empty:
        principal: Principal = current_principal()
        user_id = parse_member_name(request.name)
        since = asyncio.get_running_loop().time()
        async with self._rt.pool.acquire() as conn, conn.transaction():
            await self._locked_member(conn, principal, user_id, request.name, None)
            await store.member_remove(conn, principal.workspace_id, user_id)
        self._rt.revocations.keys.forget_member(principal.workspace_id, user_id)
        await self._rt.revocations.until_applied_everywhere(
            f"member:{principal.workspace_id}:{user_id}", since=since
        )
        return empty_pb2.Empty()

    async def _locked_member(
        self,
        conn: Connection,
        principal: Principal,
        user_id: uuid.UUID,
        name: str,
        new_role: str | None,
    ) -> None:
        """Lock the member and check the change of their role to `new_role` (None: removal).

        The workspace's owners are locked first, so two concurrent demotions of its last two
        owners serialise and the second sees one owner left.
        """
        owners = await store.member_owner_count(conn, principal.workspace_id)
        row = await store.member_lock(conn, principal.workspace_id, user_id)
        if row is None:
            raise not_found(name)
        before = str(row["role"])
        check_member_change(principal.role, before, new_role)
        if before == "owner" and new_role != "owner" and owners <= 1:
            raise last_owner()
