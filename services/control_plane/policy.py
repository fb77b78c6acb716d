"""The one authorization table: every RPC the control plane serves → the role it needs.

    no API key / bad key ─► UNAUTHENTICATED
    RPC not in POLICY    ─► PERMISSION_DENIED (fail closed: a new RPC is refused until listed)
    role below the need  ─► PERMISSION_DENIED
    otherwise            ─► the servicer, which scopes every lookup to the key's workspace,
                            so another workspace's resources read as NOT_FOUND

Roles are ordered viewer < member < admin < owner; a role may do what every lower one may.
`docs/tenancy.md` shows this table for people; `tests/tenancy` proves it for every RPC.
"""

from __future__ import annotations

from typing import Final, Literal

import grpc

from services.rpc.errors import ApiError, Reason

Role = Literal["viewer", "member", "admin", "owner"]
ROLES: Final[tuple[Role, ...]] = ("viewer", "member", "admin", "owner")
_RANK: Final[dict[str, int]] = {role: rank for rank, role in enumerate(ROLES)}

# Dispatch is for workers only: the deployment's internal token, never an API key.
INTERNAL: Final = "internal"

_V1 = "/agentplatform.v1."

POLICY: Final[dict[str, str]] = {
    # Sessions and runs: everyone reads; members and above start and cancel work.
    f"{_V1}SessionService/CreateSession": "member",
    f"{_V1}SessionService/GetSession": "viewer",
    f"{_V1}SessionService/ListSessions": "viewer",
    f"{_V1}SessionService/ListMessages": "viewer",
    # Members rename any session but delete only their own (sessions.py); admins delete any.
    f"{_V1}SessionService/UpdateSession": "member",
    f"{_V1}SessionService/DeleteSession": "member",
    f"{_V1}RunService/CreateRun": "member",
    f"{_V1}RunService/GetRun": "viewer",
    f"{_V1}RunService/ListRuns": "viewer",
    f"{_V1}RunService/ListRunEvents": "viewer",
    f"{_V1}RunService/StreamRunEvents": "viewer",
    f"{_V1}RunService/StreamSessionEvents": "viewer",
    f"{_V1}RunService/CancelRun": "member",
    # Deciding a tool call is running the session: the roles that start runs.
    f"{_V1}RunService/SubmitToolApprovals": "member",
    # Everyone reads and edits their own profile (the servicer allows only their own).
    f"{_V1}ProfileService/GetProfile": "viewer",
    f"{_V1}ProfileService/UpdateProfile": "viewer",
    # Credentials: members see metadata (never values), admins write.
    f"{_V1}SecretService/GetSecret": "member",
    f"{_V1}SecretService/ListSecrets": "member",
    f"{_V1}SecretService/PutSecret": "admin",
    f"{_V1}SecretService/DeleteSecret": "admin",
    # The master key protects every workspace's secrets.
    f"{_V1}MasterKeyService/GetMasterKeyStatus": "owner",
    f"{_V1}MasterKeyService/RotateMasterKey": "owner",
    # Tools: everyone sees them and the calls runs made, admins register and remove them.
    f"{_V1}ToolService/CreateTool": "admin",
    f"{_V1}ToolService/GetTool": "viewer",
    f"{_V1}ToolService/ListTools": "viewer",
    f"{_V1}ToolService/UpdateTool": "admin",
    f"{_V1}ToolService/DeleteTool": "admin",
    f"{_V1}ToolService/CreateMcpServer": "admin",
    f"{_V1}ToolService/ListMcpServers": "viewer",
    f"{_V1}ToolService/UpdateMcpServer": "admin",
    f"{_V1}ToolService/DeleteMcpServer": "admin",
    f"{_V1}ToolService/ListToolCalls": "viewer",
    # Workspace and members: everyone reads; admins manage members below owner (the
    # servicer refuses them owner changes); owners change the workspace itself.
    f"{_V1}WorkspaceService/GetWorkspace": "viewer",
    f"{_V1}WorkspaceService/ListWorkspaces": "viewer",
    f"{_V1}WorkspaceService/UpdateWorkspace": "owner",
    f"{_V1}WorkspaceService/CreateMember": "admin",
    f"{_V1}WorkspaceService/GetMember": "viewer",
    f"{_V1}WorkspaceService/ListMembers": "viewer",
    f"{_V1}WorkspaceService/UpdateMember": "admin",
    f"{_V1}WorkspaceService/DeleteMember": "admin",
    # Invitations: admins invite below owner (the servicer leaves owner invitations to
    # owners); anyone accepts one they were given (the servicer requires a personal key).
    f"{_V1}InvitationService/CreateInvitation": "admin",
    f"{_V1}InvitationService/GetInvitation": "admin",
    f"{_V1}InvitationService/ListInvitations": "admin",
    f"{_V1}InvitationService/DeleteInvitation": "admin",
    f"{_V1}InvitationService/AcceptInvitation": "viewer",
    # API keys act as their user: only owners mint, list, budget and revoke them.
    f"{_V1}ApiKeyService/CreateApiKey": "owner",
    f"{_V1}ApiKeyService/ListApiKeys": "owner",
    f"{_V1}ApiKeyService/UpdateApiKey": "owner",
    f"{_V1}ApiKeyService/DeleteApiKey": "owner",
    # Usage: everyone reads what runs consumed (as GetRun shows each run's); by API key is
    # for owners only, the role that sees keys (usage.py). Budgets are set with
    # UpdateWorkspace, by owners.
    f"{_V1}UsageService/QueryUsage": "viewer",
    # The workers' API.
    "/agentplatform.dispatch.v1.DispatchService/ClaimRun": INTERNAL,
    "/agentplatform.dispatch.v1.DispatchService/AppendRunEvents": INTERNAL,
    "/agentplatform.dispatch.v1.DispatchService/HeartbeatRun": INTERNAL,
    "/agentplatform.dispatch.v1.DispatchService/FinishRun": INTERNAL,
    "/agentplatform.dispatch.v1.DispatchService/ReleaseRun": INTERNAL,
    "/agentplatform.dispatch.v1.DispatchService/SuspendRun": INTERNAL,
}


def at_least(role: str, needed: str) -> bool:
    """Say whether `role` is `needed` or above it; an unknown role is nothing."""
    return role in _RANK and _RANK[role] >= _RANK[needed]


def roles_allowed(method: str) -> list[str]:
    """Return the roles that may call an RPC, lowest first (e.g. who may approve tool calls)."""
    needed = POLICY[method]
    return [role for role in ROLES if at_least(role, needed)]


def required_role(method: str) -> str:
    """Return the role (or INTERNAL) an RPC needs; refuse an RPC the table does not list."""
    needed = POLICY.get(method)
    if needed is None:
        raise ApiError(
            grpc.StatusCode.PERMISSION_DENIED,
            Reason.PERMISSION_DENIED,
            f"{method} is not in the authorization policy, so nobody may call it.",
            metadata={"method": method},
        )
    return needed


def permission_denied(role: str, needed: str, method: str) -> ApiError:
    """Build the refusal of a role too weak for an RPC."""
    return ApiError(
        grpc.StatusCode.PERMISSION_DENIED,
        Reason.PERMISSION_DENIED,
        f"Your role ({role}) cannot call {method.rsplit('/', 1)[-1]}; it takes {needed} or above.",
        metadata={"role": role, "required_role": needed},
    )
