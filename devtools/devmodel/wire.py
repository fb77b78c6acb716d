"""Define what a wire format supplies: a request decoder, a reply writer, a stream encoder.

The server does everything that is the same in every format (authentication, the model
check, rate limits, failures, hangs, delays, the order of a stream); a format only says how
its requests read and how its replies, streams and errors look.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from devtools.devmodel.script import Plan, ToolCall, Turn

MODEL_ID = "dev-model"


@dataclass(frozen=True)
class Call:
    """Hold a decoded request: the model asked for, the conversation and how to answer."""

    model: str
    stream: bool
    conversation: tuple[Turn, ...]
    # Chat Completions streams report usage only when the request asks for it.
    stream_usage: bool = True
    # The request body, for the fields a reply echoes (``tools``, ``instructions``).
    body: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Reply:
    """Name one reply: its serial number (unique per server) and creation time."""

    serial: int
    created: int


class StreamEncoder(Protocol):
    """Encode one streamed reply; the server calls these in the order the stream needs."""

    def start(self) -> bytes:
        """Encode what precedes the first token."""

    def reasoning(self, token: str) -> bytes:
        """Encode one reasoning token."""

    def reasoning_end(self) -> bytes:
        """Encode the end of the reasoning (nothing when there was none)."""

    def text(self, token: str) -> bytes:
        """Encode one content token."""

    def text_end(self) -> bytes:
        """Encode the end of the content (nothing when there was none)."""

    def tool_call(self, call: ToolCall) -> bytes:
        """Encode one whole tool call, its arguments split in fragments."""

    def end(self) -> bytes:
        """Encode the end of a successful reply: finish reason, usage, terminator."""

    def malformed(self) -> bytes:
        """Encode a frame that is not JSON, then the rest of a normal ending."""

    def failure(self, message: str) -> bytes:
        """Encode the format's in-stream error event, the last thing the stream carries."""


class WireFormat(Protocol):
    """Speak one provider API: decode its requests, write its replies and errors."""

    name: str
    path: str

    def api_key(self, headers: Mapping[str, str]) -> str | None:
        """Return the API key a request presents, None when it presents none."""

    def check_headers(self, headers: Mapping[str, str]) -> None:
        """Raise ``BadRequestError`` when a header the API requires is missing."""

    def decode(self, body: dict[str, Any]) -> Call:
        """Read a request body, raising ``BadRequestError`` when it is not valid."""

    def error_body(self, status: int, message: str) -> dict[str, Any]:
        """Build the format's error body for an HTTP status."""

    def retry_headers(self, retry_after_ms: int) -> dict[str, str]:
        """Return the headers a 429 carries to say when to retry."""

    def reply(self, plan: Plan, call: Call, reply: Reply) -> dict[str, Any]:
        """Build a non-streaming reply."""

    def encoder(self, plan: Plan, call: Call, reply: Reply) -> StreamEncoder:
        """Start encoding a streamed reply."""

    def model_list(self, model_ids: Sequence[str]) -> dict[str, Any]:
        """Build the body of ``GET /v1/models``."""

    def model_info(self, model_id: str) -> dict[str, Any]:
        """Build the body of ``GET /v1/models/{model_id}``."""


def compact_json(payload: Any) -> bytes:
    """Encode ``payload`` as JSON without spaces, as providers put it on the wire."""
    return json.dumps(payload, separators=(",", ":")).encode()


def named_event(event: str, payload: Mapping[str, Any]) -> bytes:
    """Encode one server-sent event with an ``event:`` line, as Responses and Messages do."""
    return b"event: %s\ndata: %s\n\n" % (event.encode(), compact_json(payload))


def bearer_token(headers: Mapping[str, str]) -> str | None:
    """Return the token of an ``Authorization: Bearer`` header, None without one."""
    scheme, _, token = headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def retry_after_seconds(retry_after_ms: int) -> str:
    """Return a ``Retry-After`` value: whole seconds, rounded up so a client never comes early."""
    return str(-(-retry_after_ms // 1000))


def split_arguments(arguments: str) -> tuple[str, str]:
    """Split a tool call's arguments in two, as providers stream them in pieces."""
    half = len(arguments) // 2
    return arguments[:half], arguments[half:]
