"""Start HTTP edges in-process on loopback and read their event streams."""

from __future__ import annotations

import contextlib
import json
import secrets
from collections.abc import AsyncIterator, Set
from dataclasses import dataclass
from typing import Any

import httpx
from pydantic import SecretStr

from services.web.app import Edge
from services.web.settings import WebSettings

# Every edge of a test shares it, as replicas of one deployment do.
COOKIE_SECRET = secrets.token_urlsafe(32)


async def start_edge(control_plane: str, **overrides: Any) -> Edge:
    """Start an edge for a control plane on a free loopback port; `overrides` are settings."""
    settings: dict[str, Any] = {
        "http_port": 0,
        "metrics_port": 0,
        "control_plane_address": control_plane,
        "cookie_secret": SecretStr(COOKIE_SECRET),
        "shutdown_grace_seconds": 1.0,
        "log_level": "warning",
    }
    edge = Edge(WebSettings(**(settings | overrides)))
    await edge.start()
    return edge


@contextlib.asynccontextmanager
async def running_edge(control_plane: str, **overrides: Any) -> AsyncIterator[Edge]:
    """Run an edge for the block."""
    edge = await start_edge(control_plane, **overrides)
    try:
        yield edge
    finally:
        await edge.stop()


def bearer(api_key: str) -> dict[str, str]:
    """Return the Authorization header of a key."""
    return {"authorization": f"Bearer {api_key}"}


@dataclass
class SseEvent:
    """One server-sent event as a client parses it."""

    id: str
    event: str
    data: dict[str, Any]


class EventReader:
    """Parse the events of one open text/event-stream, in as many reads as needed."""

    def __init__(self, response: httpx.Response) -> None:
        self._lines = response.aiter_lines()

    async def read(self, until: Set[str] | None = None) -> list[SseEvent]:
        """Return the events up to the end of the stream, or up to one of type `until`."""
        events: list[SseEvent] = []
        fields: dict[str, str] = {}
        async for line in self._lines:
            if line == "":
                if "data" in fields:
                    event = SseEvent(
                        fields.get("id", ""),
                        fields.get("event", "message"),
                        json.loads(fields["data"]),
                    )
                    events.append(event)
                    if until is not None and event.event in until:
                        return events
                fields = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")
        return events


async def read_events(response: httpx.Response, until: Set[str] | None = None) -> list[SseEvent]:
    """Parse events from an open text/event-stream until it ends (or an `until` type)."""
    return await EventReader(response).read(until)
