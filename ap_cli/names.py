"""Parse the resource names the CLI accepts as arguments."""

from __future__ import annotations

import argparse


def session_name(value: str) -> str:
    """Return `sessions/{id}` for a full session name or a bare session id."""
    value = value.strip()
    parts = value.split("/")
    if len(parts) == 1 and parts[0]:
        return f"sessions/{parts[0]}"
    if len(parts) == 2 and parts[0] == "sessions" and parts[1]:
        return value
    raise argparse.ArgumentTypeError(
        f"{value!r} is not a session: give sessions/{{id}} or the bare id"
    )


def run_name(value: str) -> str:
    """Return a full run name, `sessions/{id}/runs/{id}`, or reject the value."""
    value = value.strip()
    parts = value.split("/")
    if len(parts) == 4 and parts[0] == "sessions" and parts[2] == "runs" and parts[1] and parts[3]:
        return value
    # A bare run id cannot be resolved: runs are only addressable under their session.
    raise argparse.ArgumentTypeError(
        f"{value!r} is not a run: give the full name sessions/{{session}}/runs/{{run}}"
    )


def session_of(run: str) -> str:
    """Return the session a run name belongs to."""
    return "/".join(run.split("/")[:2])
