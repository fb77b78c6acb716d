"""Speak the Anthropic Messages API: ``POST /v1/messages``.

A reply's content blocks, in order: a ``thinking`` block (the reasoning tokens, then a
signature), a ``text`` block, and one ``tool_use`` block per tool call. Tool results come
back as ``tool_result`` blocks in a user message; a user message made only of them is not a
new user turn, so the directives are still read from the message that asked for the tools.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from typing import Any

from devtools.devmodel.script import BadRequestError, Plan, ToolCall, Turn, Usage
from devtools.devmodel.wire import (
    Call,
    Reply,
    bearer_token,
    named_event,
    retry_after_seconds,
    split_arguments,
)

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
# Thinking blocks are signed so that a client can send them back; this one is constant.
_SIGNATURE = base64.b64encode(b"dev-model thinking signature").decode()
_CREATED_AT = "2025-01-01T00:00:00Z"


def _blocks(content: Any, where: str) -> list[dict[str, Any]]:
    """Return a message's content as a list of blocks; a string is one text block."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list) or not all(isinstance(b, dict) for b in content):
        raise BadRequestError(f"{where} must be a string or a list of content blocks")
    return content


def _text(blocks: list[dict[str, Any]]) -> str:
    """Join the text of the text blocks."""
    return "".join(str(b.get("text", "")) for b in blocks if b.get("type") == "text")


def _tool_result_text(block: Mapping[str, Any], where: str) -> str:
    """Return the text of a tool result: a string or a list of text blocks."""
    content = block.get("content", "")
    return _text(_blocks(content, f"{where}.content"))


def _message_turns(message: Any, where: str) -> list[Turn]:
    """Read one message as neutral turns: tool results, then the user's or assistant's turn."""
    if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
        raise BadRequestError(f"{where}.role must be 'user' or 'assistant'")
    blocks = _blocks(message.get("content"), f"{where}.content")
    if message["role"] == "assistant":
        calls = []
        for n, block in enumerate(blocks):
            if block.get("type") == "tool_use":
                block_where = f"{where}.content[{n}]"
                calls.append(
                    (_string(block, "id", block_where), _string(block, "name", block_where))
                )
        return [Turn("assistant", _text(blocks), calls=tuple(calls))]
    turns = [
        Turn(
            "tool",
            _tool_result_text(block, f"{where}.content[{n}]"),
            call_id=_string(block, "tool_use_id", f"{where}.content[{n}]"),
        )
        for n, block in enumerate(blocks)
        if block.get("type") == "tool_result"
    ]
    if len(turns) < len(blocks) or not blocks:
        turns.append(Turn("user", _text(blocks)))
    return turns


def _check_thinking(body: Mapping[str, Any], max_tokens: int, messages: list[Any]) -> None:
    """With extended thinking on, refuse what Anthropic refuses.

    The budget must be at least 1024 and below max_tokens; the last assistant message, when
    it called tools, must start with its thinking block as streamed: its signature unchanged.
    """
    thinking = body.get("thinking")
    if not isinstance(thinking, dict) or thinking.get("type") != "enabled":
        return
    budget = thinking.get("budget_tokens")
    if not isinstance(budget, int) or budget < 1024:
        raise BadRequestError("thinking.enabled.budget_tokens: Input should be >= 1024")
    if budget >= max_tokens:
        raise BadRequestError("`max_tokens` must be greater than `thinking.budget_tokens`")
    assistant = [m for m in messages if isinstance(m, dict) and m.get("role") == "assistant"]
    if not assistant or not isinstance(assistant[-1].get("content"), list):
        return
    blocks = assistant[-1]["content"]
    if not any(isinstance(b, dict) and b.get("type") == "tool_use" for b in blocks):
        return
    first = blocks[0] if isinstance(blocks[0], dict) else {}
    if first.get("type") not in ("thinking", "redacted_thinking"):
        raise BadRequestError(
            "messages: Expected `thinking` or `redacted_thinking`, but found "
            f"`{first.get('type')}`. When `thinking` is enabled, a final `assistant` message "
            "must start with a thinking block"
        )
    if first.get("type") == "thinking" and first.get("signature") != _SIGNATURE:
        raise BadRequestError("messages: Invalid `signature` in `thinking` block")


def _string(item: Mapping[str, Any], key: str, where: str) -> str:
    """Return ``item[key]``, which must be a non-empty string."""
    value = item.get(key)
    if not isinstance(value, str) or not value:
        raise BadRequestError(f"{where}.{key}: Field required (a non-empty string)")
    return value


def _check_tools(tools: Any) -> None:
    """Require tools in the Anthropic shape: ``{"name", "input_schema", ...}``."""
    if tools is None:
        return
    if not isinstance(tools, list):
        raise BadRequestError("tools: Input should be a valid list")
    for n, tool in enumerate(tools):
        if not isinstance(tool, dict) or not isinstance(tool.get("input_schema"), dict):
            raise BadRequestError(f"tools.{n}.input_schema: Field required (an object)")
        _string(tool, "name", f"tools.{n}")


def _usage(usage: Usage) -> dict[str, Any]:
    """Name a reply's token counts as Anthropic does: input excludes what the cache served."""
    cached = usage.cached or 0
    return {
        "input_tokens": usage.prompt - cached,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
        "output_tokens": usage.output,
        "output_tokens_details": {"thinking_tokens": usage.reasoning},
    }


def _error_body(status: int, message: str) -> dict[str, Any]:
    """Build Anthropic's error body for an HTTP status."""
    error_type = _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": error_type, "message": message}}


def _message_id(reply: Reply) -> str:
    """Return a message's id."""
    return f"msg_dev_{reply.serial:08d}"


def _tool_use(call: ToolCall, tool_input: Any) -> dict[str, Any]:
    """Build a tool_use block."""
    return {"type": "tool_use", "id": call.call_id("toolu"), "name": call.name, "input": tool_input}


def _stop_reason(plan: Plan) -> str:
    """Return why the reply stopped."""
    return "tool_use" if plan.tool_calls else "end_turn"


class Messages:
    """Speak the Anthropic Messages API."""

    name = "messages"
    path = "/v1/messages"

    def api_key(self, headers: Mapping[str, str]) -> str | None:
        """Return the ``x-api-key`` header, or a bearer token as the SDK's ``auth_token`` sends."""
        return headers.get("x-api-key") or bearer_token(headers)

    def check_headers(self, headers: Mapping[str, str]) -> None:
        """Require ``anthropic-version``, as the API does."""
        if not headers.get("anthropic-version"):
            raise BadRequestError("anthropic-version: header is required")

    def decode(self, body: dict[str, Any]) -> Call:
        """Read ``model``, ``max_tokens``, ``system``, ``messages``, ``tools`` and ``stream``."""
        model = _string(body, "model", "model")
        max_tokens = body.get("max_tokens")
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise BadRequestError("max_tokens: Field required (a positive integer)")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequestError("messages: Field required (a non-empty list)")
        turns: list[Turn] = []
        system = body.get("system")
        if system is not None:
            turns.append(Turn("system", _text(_blocks(system, "system"))))
        for n, message in enumerate(messages):
            turns.extend(_message_turns(message, f"messages.{n}"))
        _check_tools(body.get("tools"))
        _check_thinking(body, max_tokens, messages)
        return Call(
            model=model, stream=bool(body.get("stream")), conversation=tuple(turns), body=body
        )

    def error_body(self, status: int, message: str) -> dict[str, Any]:
        """Build Anthropic's error body."""
        return _error_body(status, message)

    def retry_headers(self, retry_after_ms: int) -> dict[str, str]:
        """Return Anthropic's retry header, ``Retry-After`` in seconds."""
        return {"Retry-After": retry_after_seconds(retry_after_ms)}

    def model_list(self, model_ids: Sequence[str]) -> dict[str, Any]:
        """Build Anthropic's model list, one page."""
        return {
            "data": [self.model_info(model_id) for model_id in model_ids],
            "has_more": False,
            "first_id": model_ids[0] if model_ids else None,
            "last_id": model_ids[-1] if model_ids else None,
        }

    def model_info(self, model_id: str) -> dict[str, Any]:
        """Describe one model as Anthropic does."""
        return {
            "type": "model",
            "id": model_id,
            "display_name": model_id,
            "created_at": _CREATED_AT,
        }

    def reply(self, plan: Plan, call: Call, reply: Reply) -> dict[str, Any]:
        """Build one ``message`` object."""
        content: list[dict[str, Any]] = []
        if plan.reasoning:
            thinking = "".join(plan.reasoning)
            content.append({"type": "thinking", "thinking": thinking, "signature": _SIGNATURE})
        if plan.content:
            content.append({"type": "text", "text": "".join(plan.content)})
        content.extend(_tool_use(c, json.loads(c.arguments)) for c in plan.tool_calls)
        return {
            "id": _message_id(reply),
            "type": "message",
            "role": "assistant",
            "model": call.model,
            "content": content,
            "stop_reason": _stop_reason(plan),
            "stop_sequence": None,
            "usage": _usage(plan.usage),
        }

    def encoder(self, plan: Plan, call: Call, reply: Reply) -> _MessagesStream:
        """Start a stream of Messages events."""
        return _MessagesStream(plan, call, reply)


class _MessagesStream:
    """Encode a reply as Messages events: one content block at a time, by index."""

    def __init__(self, plan: Plan, call: Call, reply: Reply) -> None:
        """Start before the first content block."""
        self._plan = plan
        self._call = call
        self._reply = reply
        self._next_index = 0
        # The type of the content block being streamed, if one is open.
        self._open: str | None = None

    def _block_start(self, block: dict[str, Any]) -> bytes:
        """Encode the start of the next content block."""
        self._open = block["type"]
        return named_event(
            "content_block_start",
            {"type": "content_block_start", "index": self._next_index, "content_block": block},
        )

    def _delta(self, delta: dict[str, Any]) -> bytes:
        """Encode a delta of the open content block."""
        return named_event(
            "content_block_delta",
            {"type": "content_block_delta", "index": self._next_index, "delta": delta},
        )

    def _block_stop(self) -> bytes:
        """Encode the end of the open content block."""
        self._open = None
        self._next_index += 1
        return named_event(
            "content_block_stop", {"type": "content_block_stop", "index": self._next_index - 1}
        )

    def start(self) -> bytes:
        """Encode ``message_start`` (input usage, no output yet) and a ``ping``."""
        usage = {**_usage(self._plan.usage), "output_tokens": 0}
        del usage["output_tokens_details"]
        message: dict[str, Any] = {
            "id": _message_id(self._reply),
            "type": "message",
            "role": "assistant",
            "model": self._call.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": usage,
        }
        return named_event("message_start", {"type": "message_start", "message": message}) + (
            named_event("ping", {"type": "ping"})
        )

    def reasoning(self, token: str) -> bytes:
        """Encode a thinking delta, opening the thinking block on the first."""
        opening = b""
        if self._open != "thinking":
            opening = self._block_start({"type": "thinking", "thinking": "", "signature": ""})
        return opening + self._delta({"type": "thinking_delta", "thinking": token})

    def reasoning_end(self) -> bytes:
        """Encode the thinking block's signature and its end."""
        if self._open != "thinking":
            return b""
        return self._delta({"type": "signature_delta", "signature": _SIGNATURE}) + (
            self._block_stop()
        )

    def text(self, token: str) -> bytes:
        """Encode a text delta, opening the text block on the first."""
        opening = b""
        if self._open != "text":
            opening = self._block_start({"type": "text", "text": ""})
        return opening + self._delta({"type": "text_delta", "text": token})

    def text_end(self) -> bytes:
        """Encode the end of the text block."""
        return self._block_stop() if self._open == "text" else b""

    def tool_call(self, call: ToolCall) -> bytes:
        """Encode a tool_use block: empty input, then its JSON in two pieces."""
        events = self._block_start(_tool_use(call, {}))
        for piece in split_arguments(call.arguments):
            events += self._delta({"type": "input_json_delta", "partial_json": piece})
        return events + self._block_stop()

    def end(self) -> bytes:
        """Encode ``message_delta`` (stop reason, cumulative usage) and ``message_stop``."""
        delta = {"stop_reason": _stop_reason(self._plan), "stop_sequence": None}
        return named_event(
            "message_delta",
            {"type": "message_delta", "delta": delta, "usage": _usage(self._plan.usage)},
        ) + named_event("message_stop", {"type": "message_stop"})

    def malformed(self) -> bytes:
        """Encode a delta frame that is not JSON, then end the message as if it were."""
        broken = b"event: content_block_delta\ndata: {not json\n\n"
        return broken + self.text_end() + self.end()

    def failure(self, message: str) -> bytes:
        """Encode an ``error`` event, as the API does when it fails mid-stream."""
        return named_event("error", _error_body(500, message))
