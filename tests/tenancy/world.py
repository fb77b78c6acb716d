"""Two workspaces with a user of every role, real resources in each, and ways to make more."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import asyncpg

from services.control_plane import store
from services.control_plane.auth import new_api_key
from services.control_plane.invitations import new_invitation_token
from services.control_plane.policy import ROLES, at_least
from services.rpc.db import role_dsn
from services.rpc.names import (
    api_key_name,
    invitation_name,
    member_name,
    parse_workspace_name,
    user_name,
)
from tests.harness import Client, Stack
from tests.integration.helpers import new_run, new_session


@dataclass
class Tenant:
    """One workspace: a client per role and names of real resources of every kind."""

    workspace_id: uuid.UUID
    clients: dict[str, Client]
    user_ids: dict[str, uuid.UUID]
    names: dict[str, str] = field(default_factory=dict)


@dataclass
class World:
    """Our workspace, a foreign one, and factories of fresh resources in either."""

    stack: Stack
    own: Tenant
    foreign: Tenant
    revoked_key: str

    async def fresh(self, tenant: Tenant, kind: str, role: str = "owner") -> str:
        """Make a new resource of `kind` in the tenant (for a call that changes or ends it).

        A session is made by the calling `role` when it may create one, since members may
        delete only their own sessions; otherwise by the owner.
        """
        make: dict[str, Callable[[Tenant], Awaitable[str]]] = {
            "session": lambda t: self._session(t, role),
            "run": self._run,
            "member": self._member,
            "api_key": self._api_key,
            "invitation": self._invitation,
        }
        maker = make.get(kind)
        return await maker(tenant) if maker is not None else tenant.names[kind]

    async def _session(self, tenant: Tenant, role: str = "owner") -> str:
        maker = role if at_least(role, "member") else "owner"
        return (await new_session(tenant.clients[maker])).name

    async def _run(self, tenant: Tenant) -> str:
        session = await self._session(tenant)
        return (await new_run(tenant.clients["owner"], session, "hi [[delay_ms=200]]")).name

    async def _member(self, tenant: Tenant) -> str:
        async with _connect(self.stack) as conn:
            user_id = await store.user_create(conn, "Fresh member")
            await store.member_add(conn, tenant.workspace_id, user_id, "viewer")
        return member_name(user_id)

    async def _api_key(self, tenant: Tenant) -> str:
        async with _connect(self.stack) as conn:
            key = new_api_key()
            key_id = await store.api_key_create(
                conn,
                workspace_id=tenant.workspace_id,
                user_id=tenant.user_ids["viewer"],
                name="fresh",
                prefix=key.prefix,
                secret_sha256=key.secret_sha256,
            )
        return api_key_name(key_id)

    async def _invitation(self, tenant: Tenant) -> str:
        return await new_invitation(self.stack, tenant)


async def new_invitation(stack: Stack, tenant: Tenant, role: str = "viewer") -> str:
    """Store an invitation to the tenant's workspace (its token is thrown away)."""
    _, digest = new_invitation_token()
    async with _connect(stack) as conn:
        row = await store.invitation_create(
            conn,
            workspace_id=tenant.workspace_id,
            role=role,
            display_name="matrix",
            token_sha256=digest,
            created_by=tenant.user_ids["owner"],
            expire_time=datetime.now(UTC) + timedelta(days=1),
        )
    return invitation_name(row["id"])


class _connect:
    """Connect to the stack's database as the control plane's role."""

    def __init__(self, stack: Stack) -> None:
        self._dsn = role_dsn(stack.admin_dsn, "ap_control_plane")
        self._conn: asyncpg.Connection | None = None

    async def __aenter__(self) -> asyncpg.Connection:
        self._conn = await asyncpg.connect(self._dsn)
        return self._conn

    async def __aexit__(self, *exc: object) -> None:
        assert self._conn is not None
        await self._conn.close()


async def add_member(stack: Stack, workspace_id: uuid.UUID, role: str) -> tuple[uuid.UUID, str]:
    """Add a new user of `role` to a workspace; return the user id and a personal key of theirs.

    Personal, as if they had joined by invitation: the matrix calls as the users themselves.
    """
    async with _connect(stack) as conn:
        user_id = await store.user_create(conn, f"{role} user")
        await store.member_add(conn, workspace_id, user_id, role)
        key = new_api_key()
        await store.api_key_create(
            conn,
            workspace_id=workspace_id,
            user_id=user_id,
            name=role,
            prefix=key.prefix,
            secret_sha256=key.secret_sha256,
            personal=True,
        )
    return user_id, key.key


async def revoke_all_keys(stack: Stack, workspace_id: uuid.UUID, user_id: uuid.UUID) -> None:
    """Revoke every key of a user in a workspace."""
    async with _connect(stack) as conn:
        await conn.execute(
            "UPDATE api_keys SET revoke_time = now() WHERE workspace_id = $1 AND user_id = $2",
            workspace_id,
            user_id,
        )


async def tenant(stack: Stack, name: str) -> Tenant:
    """Create a workspace with a user of every role and one resource of every kind."""
    owner = await stack.new_workspace(name, "owner")
    workspace_id = parse_workspace_name(owner.workspace)
    clients = {"owner": owner}
    async with _connect(stack) as conn:
        owner_id = await conn.fetchval(
            "SELECT user_id FROM memberships WHERE workspace_id = $1", workspace_id
        )
    user_ids = {"owner": owner_id}
    for role in ROLES:
        if role != "owner":
            user_ids[role], key = await add_member(stack, workspace_id, role)
            clients[role] = stack.client(key, owner.workspace)
    made = Tenant(workspace_id, clients, user_ids)
    session = await new_session(owner)
    run = await new_run(owner, session.name, "hi [[tokens=2]]")
    made.names = {
        "session": session.name,
        "run": run.name,
        "workspace": owner.workspace,
        "member": member_name(user_ids["viewer"]),
        # Each caller's own profile; `owner_profile` is someone else's, named by id.
        "profile": "users/me/profile",
        "owner_profile": f"{user_name(owner_id)}/profile",
        "secret": "secrets/MATRIX",
        "tool": "tools/matrix",
        "mcp_server": "mcpServers/matrix",
    }
    made.names["invitation"] = await new_invitation(stack, made)
    async with _connect(stack) as conn:
        key_id = await conn.fetchval(
            "SELECT id FROM api_keys WHERE workspace_id = $1 AND user_id = $2",
            workspace_id,
            user_ids["viewer"],
        )
    made.names["api_key"] = api_key_name(key_id)
    return made


async def build_world(stack: Stack) -> World:
    """Create our workspace, a foreign one, and a revoked key of our owner's."""
    own = await tenant(stack, "Own")
    foreign = await tenant(stack, "Foreign")
    user_id, revoked = await add_member(stack, own.workspace_id, "owner")
    await revoke_all_keys(stack, own.workspace_id, user_id)
    return World(stack, own, foreign, revoked)
