"""Format and parse resource names ("sessions/{session}/runs/{run}") in one place."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass

from services.rpc.errors import invalid_argument


def _parse_id(value: str, field: str, what: str) -> uuid.UUID:
    try:
        parsed = uuid.UUID(value)
    except ValueError:
        raise invalid_argument(field, f"{field} has a malformed {what} id {value!r}.") from None
    if str(parsed) != value:  # one spelling per resource: canonical lowercase
        raise invalid_argument(field, f"{field} has a malformed {what} id {value!r}.")
    return parsed


def _segments(name: str, field: str, pattern: tuple[str, ...]) -> list[str]:
    if not name:
        raise invalid_argument(field, f"{field} is required.")
    if len(name) > 256:
        raise invalid_argument(field, f"{field} is too long to be a resource name.")
    parts = name.split("/")
    expected = "/".join(f"{c}/{{{c[:-1]}}}" for c in pattern)
    if len(parts) != 2 * len(pattern) or any(parts[2 * i] != c for i, c in enumerate(pattern)):
        raise invalid_argument(field, f"{field} must look like {expected!r}, got {name!r}.")
    return parts[1::2]


def session_name(session_id: uuid.UUID) -> str:
    """Format a session's resource name."""
    return f"sessions/{session_id}"


def parse_session_name(name: str, field: str = "name") -> uuid.UUID:
    """Parse "sessions/{session}"."""
    (session_id,) = _segments(name, field, ("sessions",))
    return _parse_id(session_id, field, "session")


@dataclass(frozen=True)
class RunName:
    """A parsed run name."""

    session_id: uuid.UUID
    run_id: uuid.UUID

    def __str__(self) -> str:
        return run_name(self.session_id, self.run_id)


def run_name(session_id: uuid.UUID, run_id: uuid.UUID) -> str:
    """Format a run's resource name."""
    return f"sessions/{session_id}/runs/{run_id}"


def parse_run_name(name: str, field: str = "name") -> RunName:
    """Parse "sessions/{session}/runs/{run}"."""
    session_id, run_id = _segments(name, field, ("sessions", "runs"))
    return RunName(_parse_id(session_id, field, "session"), _parse_id(run_id, field, "run"))


def message_name(session_id: uuid.UUID, message_id: uuid.UUID) -> str:
    """Format a message's resource name."""
    return f"sessions/{session_id}/messages/{message_id}"


def run_event_name(session_id: uuid.UUID, run_id: uuid.UUID, sequence: int) -> str:
    """Format a run event's resource name."""
    return f"sessions/{session_id}/runs/{run_id}/events/{sequence}"


def workspace_name(workspace_id: uuid.UUID) -> str:
    """Format a workspace's resource name."""
    return f"workspaces/{workspace_id}"


def user_name(user_id: uuid.UUID) -> str:
    """Format a user's resource name."""
    return f"users/{user_id}"


def parse_profile_name(name: str, field: str = "name") -> uuid.UUID | None:
    """Parse "users/{user}/profile"; return None for "users/me/profile"."""
    parts = name.split("/") if name else []
    if len(parts) != 3 or parts[0] != "users" or parts[2] != "profile":
        raise invalid_argument(field, f"{field} must look like 'users/me/profile', got {name!r}.")
    if parts[1] == "me":
        return None
    return _parse_id(parts[1], field, "user")


# A secret's id: what a person types (`ap secrets put GITHUB_TOKEN`), case-sensitive.
_SECRET_ID = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,62}")


@dataclass(frozen=True)
class SecretRef:
    """A secret named by its id ("GITHUB_TOKEN") or, as an alias, by its uid."""

    secret_id: str | None = None
    uid: uuid.UUID | None = None

    def __str__(self) -> str:
        return self.secret_id if self.secret_id is not None else str(self.uid)


def _looks_like_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def _secret_ref(segment: str, field: str) -> SecretRef:
    # A canonical UUID is the uid alias; ids never look like UUIDs (check_secret_id).
    if _looks_like_uuid(segment) and str(uuid.UUID(segment)) == segment:
        return SecretRef(uid=uuid.UUID(segment))
    if not _SECRET_ID.fullmatch(segment):
        raise invalid_argument(
            field,
            f"{field} has a malformed secret id {segment!r}: a letter, then up to 62 letters, "
            "digits, '_' or '-'.",
        )
    return SecretRef(secret_id=segment)


def check_secret_id(ref: SecretRef, field: str = "name") -> str:
    """Return the id of a secret being created; a uid or a UUID-like id is refused."""
    if ref.secret_id is None or _looks_like_uuid(ref.secret_id):
        raise invalid_argument(
            field, f"{field} must name a new secret by an id, not by a uid or a UUID-like id."
        )
    return ref.secret_id


def secret_name(secret_id: str) -> str:
    """Format a secret's public resource name (the workspace is the caller's)."""
    return f"secrets/{secret_id}"


def parse_secret_name(name: str, field: str = "name") -> SecretRef:
    """Parse "secrets/{secret}", where {secret} is the id or the uid."""
    (segment,) = _segments(name, field, ("secrets",))
    return _secret_ref(segment, field)


def workspace_secret_name(workspace_id: uuid.UUID, secret_id: str) -> str:
    """Format a secret's name on the vault's internal API."""
    return f"workspaces/{workspace_id}/secrets/{secret_id}"


def parse_workspace_secret_name(name: str, field: str = "name") -> tuple[uuid.UUID, SecretRef]:
    """Parse "workspaces/{workspace}/secrets/{secret}", where {secret} is the id or the uid."""
    workspace, segment = _segments(name, field, ("workspaces", "secrets"))
    return _parse_id(workspace, field, "workspace"), _secret_ref(segment, field)


def parse_workspace_name(name: str, field: str = "name") -> uuid.UUID:
    """Parse "workspaces/{workspace}"."""
    (workspace,) = _segments(name, field, ("workspaces",))
    return _parse_id(workspace, field, "workspace")


def parse_user_name(name: str, field: str = "name") -> uuid.UUID:
    """Parse "users/{user}"."""
    (user,) = _segments(name, field, ("users",))
    return _parse_id(user, field, "user")


def member_name(user_id: uuid.UUID) -> str:
    """Format a member's public resource name (the workspace is the caller's)."""
    return f"members/{user_id}"


def parse_member_name(name: str, field: str = "name") -> uuid.UUID:
    """Parse "members/{user}"."""
    (user,) = _segments(name, field, ("members",))
    return _parse_id(user, field, "user")


def api_key_name(key_id: uuid.UUID) -> str:
    """Format an API key's public resource name (the workspace is the caller's)."""
    return f"apiKeys/{key_id}"


def parse_api_key_name(name: str, field: str = "name") -> uuid.UUID:
    """Parse "apiKeys/{api_key}"."""
    (key,) = _segments(name, field, ("apiKeys",))
    return _parse_id(key, field, "API key")


def invitation_name(invitation_id: uuid.UUID) -> str:
    """Format an invitation's public resource name (the workspace is the caller's)."""
    return f"invitations/{invitation_id}"


def parse_invitation_name(name: str, field: str = "name") -> uuid.UUID:
    """Parse "invitations/{invitation}"."""
    (invitation,) = _segments(name, field, ("invitations",))
    return _parse_id(invitation, field, "invitation")


def _plain_id(segment: str, field: str, what: str) -> str:
    # The owning service checks an id's grammar when it is created; here one segment suffices.
    if not segment:
        raise invalid_argument(field, f"{field} has an empty {what} id.")
    return segment


def tool_name(tool_id: str) -> str:
    """Format a tool's public resource name (the workspace is the caller's)."""
    return f"tools/{tool_id}"


def parse_tool_name(name: str, field: str = "name") -> str:
    """Parse "tools/{tool}"; return the tool's id."""
    (tool,) = _segments(name, field, ("tools",))
    return _plain_id(tool, field, "tool")


def workspace_tool_name(workspace_id: uuid.UUID, tool_id: str) -> str:
    """Format a tool's name on the gateway's internal API."""
    return f"workspaces/{workspace_id}/tools/{tool_id}"


def parse_workspace_tool_name(name: str, field: str = "name") -> tuple[uuid.UUID, str]:
    """Parse "workspaces/{workspace}/tools/{tool}"."""
    workspace, tool = _segments(name, field, ("workspaces", "tools"))
    return _parse_id(workspace, field, "workspace"), _plain_id(tool, field, "tool")


def mcp_server_name(server_id: str) -> str:
    """Format an MCP server's public resource name (the workspace is the caller's)."""
    return f"mcpServers/{server_id}"


def parse_mcp_server_name(name: str, field: str = "name") -> str:
    """Parse "mcpServers/{server}"; return the server's id."""
    (server,) = _segments(name, field, ("mcpServers",))
    return _plain_id(server, field, "MCP server")


def workspace_mcp_server_name(workspace_id: uuid.UUID, server_id: str) -> str:
    """Format an MCP server's name on the gateway's internal API."""
    return f"workspaces/{workspace_id}/mcpServers/{server_id}"


def parse_workspace_mcp_server_name(name: str, field: str = "name") -> tuple[uuid.UUID, str]:
    """Parse "workspaces/{workspace}/mcpServers/{server}"."""
    workspace, server = _segments(name, field, ("workspaces", "mcpServers"))
    return _parse_id(workspace, field, "workspace"), _plain_id(server, field, "MCP server")
