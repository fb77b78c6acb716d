"""Format and parse resource names ("sessions/{session}/runs/{run}") in one place."""

from __future__ import annotations

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
