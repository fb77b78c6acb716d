"""Anthropic Messages (`POST {base_url}/messages`, streamed) over httpx.

The system prompt is `system`; messages alternate user and assistant, so consecutive ones of
a role are merged into one message of several blocks: a tool call is an assistant `tool_use`
block, its result a user `tool_result` block. The stream is named server-sent events: content
blocks (`text`, `thinking`, `redacted_thinking`, `tool_use`) opened by `content_block_start`,
grown by `content_block_delta` (`text_delta`, `thinking_delta` and its `signature_delta`, a
tool's input as `input_json_delta` pieces) and closed by `content_block_stop`; usage comes in
`message_start` (input) and `message_delta` (cumulative output); `message_stop` ends it,
`error` ends a failed one.

Extended thinking (`thinking_budget_tokens`) asks for `thinking` blocks; each closed one is a
ReasoningBlock the run keeps, and a turn that called tools sends its blocks back unchanged
before its `tool_use` blocks, as the API requires.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx

from services.rpc.errors import Reason
from services.rpc.hosted_models import HostedModelConfig
from services.worker.model import (
    AssistantMessage,
    Message,
    ModelError,
    ModelEvent,
    ModelRequest,
    ReasoningBlock,
    ReasoningDelta,
    TextDelta,
    ToolCallRequest,
    ToolResult,
    ToolSpec,
    UsageReport,
    UserMessage,
)
from services.worker.providers.sse import Frame, malformed, post_stream, timeout_of

ANTHROPIC_VERSION = "2023-06-01"
# In-stream errors that asking again may cure (before the first token only).
_RETRYABLE_ERRORS = frozenset({"overloaded_error", "api_error", "rate_limit_error"})


class MessagesClient:
    """Call one Messages endpoint with streaming, translating failures to ModelError."""

    def __init__(self, config: HostedModelConfig, http: httpx.AsyncClient) -> None:
        self._url = f"{config.base_url}/messages"
        self._http = http
        self._headers = {"accept": "text/event-stream", "anthropic-version": ANTHROPIC_VERSION}
        if config.api_key is not None:
            self._headers["x-api-key"] = config.api_key.get_secret_value()
        self._timeout = timeout_of(config)

    async def stream(self, request: ModelRequest) -> AsyncIterator[ModelEvent]:
        """Yield reply pieces as the model streams them; each tool call when its block closes."""
        async with post_stream(
            self._http, self._url, request_body(request), self._headers, self._timeout
        ) as stream:
            async for event in _parse_stream(stream):
                yield event


def request_body(request: ModelRequest) -> dict[str, Any]:
    """Shape a model request as a streamed Messages request body."""
    messages: list[dict[str, Any]] = []
    for message in request.messages:
        role, blocks = _blocks(message)
        if not blocks:
            continue
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"] += blocks
        else:
            messages.append({"role": role, "content": blocks})
    body: dict[str, Any] = {
        "model": request.settings.model,
        "max_tokens": request.settings.max_output_tokens,
        "system": request.system,
        "messages": messages,
        "stream": True,
    }
    if request.settings.thinking_budget_tokens is not None:
        body["thinking"] = {
            "type": "enabled",
            "budget_tokens": request.settings.thinking_budget_tokens,
        }
    if request.tools:
        body["tools"] = [_tool(t) for t in request.tools]
    return body


def _blocks(message: Message) -> tuple[str, list[dict[str, Any]]]:
    match message:
        case UserMessage(text=text):
            return "user", [{"type": "text", "text": text}] if text else []
        case AssistantMessage(text=text, tool_calls=calls, reasoning=reasoning):
            # Thinking comes first and goes back as it came: with extended thinking, the
            # turn that called tools must carry its signed (and redacted) thinking blocks.
            blocks: list[dict[str, Any]] = [_reasoning_block(r) for r in reasoning]
            blocks += [{"type": "text", "text": text}] if text else []
            blocks += [
                {
                    "type": "tool_use",
                    "id": call.call_id,
                    "name": call.name,
                    "input": _arguments(call.arguments_json),
                }
                for call in calls
            ]
            return "assistant", blocks
        case ToolResult(call_id=call_id, text=text, is_error=is_error):
            block: dict[str, Any] = {"type": "tool_result", "tool_use_id": call_id, "content": text}
            if is_error:
                block["is_error"] = True
            return "user", [block]


def _reasoning_block(block: ReasoningBlock) -> dict[str, Any]:
    if block.redacted_data:
        return {"type": "redacted_thinking", "data": block.redacted_data}
    return {"type": "thinking", "thinking": block.thinking, "signature": block.signature}


def _arguments(arguments_json: str) -> Any:
    """Return a tool call's arguments as the object Messages wants (an empty one if unreadable)."""
    try:
        value = json.loads(arguments_json or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _tool(tool: ToolSpec) -> dict[str, Any]:
    return {
        "name": tool.name,
        "description": tool.description,
        "input_schema": dict(tool.parameters) or {"type": "object"},
    }


async def _parse_stream(frames: AsyncIterator[Frame]) -> AsyncIterator[ModelEvent]:
    # Open blocks by index: a tool_use's id, name and the pieces of its input's JSON; a
    # thinking block's text and signature; a redacted_thinking block's data.
    blocks: dict[int, dict[str, str]] = {}
    usage: dict[str, Any] = {}
    stopped = False
    async for frame in frames:
        if stopped:
            continue  # read to the end so the connection goes back to the pool
        try:
            event = json.loads(frame.data)
            kind = str(event.get("type") or frame.event)
            events = _events(kind, event, blocks, usage)
        except (ValueError, TypeError, KeyError, AttributeError):
            raise malformed() from None
        for item in events:
            yield item
        stopped = kind == "message_stop"
    if not stopped:
        raise ModelError(Reason.MODEL_ERROR, "The model stream ended without message_stop.")
    if usage:
        cache_read = int(usage.get("cache_read_input_tokens") or 0)
        details = usage.get("output_tokens_details") or {}
        yield UsageReport(
            # Anthropic's input_tokens leaves out what the cache read or wrote.
            input_tokens=int(usage.get("input_tokens") or 0)
            + cache_read
            + int(usage.get("cache_creation_input_tokens") or 0),
            output_tokens=int(usage.get("output_tokens") or 0),
            reasoning_tokens=int(details.get("thinking_tokens") or 0),
            cached_input_tokens=cache_read,
        )


def _events(
    kind: str, event: dict[str, Any], blocks: dict[int, dict[str, str]], usage: dict[str, Any]
) -> list[ModelEvent]:
    match kind:
        case "content_block_delta":
            return _delta(event, blocks)
        case "content_block_start":
            block = event["content_block"]
            index = int(event["index"])
            match block.get("type"):
                case "tool_use":
                    if not block.get("name"):
                        raise ModelError(
                            Reason.MODEL_ERROR, "The model streamed a tool call without a name."
                        )
                    blocks[index] = {
                        "type": "tool_use",
                        "id": str(block.get("id") or ""),
                        "name": str(block["name"]),
                        "input": "",
                    }
                case "thinking":
                    # The text streams as thinking_delta, the signature as signature_delta.
                    blocks[index] = {
                        "type": "thinking",
                        "thinking": str(block.get("thinking") or ""),
                        "signature": str(block.get("signature") or ""),
                    }
                case "redacted_thinking":
                    blocks[index] = {"type": "redacted_thinking", "data": str(block["data"])}
        case "content_block_stop":
            return _closed(event, blocks.pop(int(event["index"]), None))
        case "message_start":
            usage.update(event["message"].get("usage") or {})
        case "message_delta":
            # Cumulative counts: later values replace earlier ones.
            usage.update({k: v for k, v in (event.get("usage") or {}).items() if v is not None})
        case "error":
            error = event.get("error") or {}
            raise ModelError(
                Reason.MODEL_ERROR,
                f"The model endpoint reported an error: {str(error.get('message') or error)[:500]}",
                retryable=error.get("type") in _RETRYABLE_ERRORS,
            )
        case _:
            pass  # ping, message_stop and block kinds the platform does not use
    return []


def _closed(event: dict[str, Any], block: dict[str, str] | None) -> list[ModelEvent]:
    """Return what a finished content block gives the run: a tool call or signed reasoning."""
    if block is None:
        return []  # a text block
    match block["type"]:
        case "tool_use":
            call_id = block["id"] or f"toolu_{event['index']}"
            return [ToolCallRequest(call_id, block["name"], block["input"] or "{}")]
        case "thinking":
            return [ReasoningBlock(thinking=block["thinking"], signature=block["signature"])]
        case "redacted_thinking":
            return [ReasoningBlock(redacted_data=block["data"])]
    return []


def _delta(event: dict[str, Any], blocks: dict[int, dict[str, str]]) -> list[ModelEvent]:
    delta = event["delta"]
    block = blocks.get(int(event["index"]))
    match delta.get("type"):
        case "text_delta" if delta.get("text"):
            return [TextDelta(str(delta["text"]))]
        case "thinking_delta" if delta.get("thinking"):
            if block is not None and block["type"] == "thinking":
                block["thinking"] += str(delta["thinking"])
            return [ReasoningDelta(str(delta["thinking"]))]
        case "signature_delta" if block is not None and block["type"] == "thinking":
            block["signature"] += str(delta.get("signature") or "")
        case "input_json_delta" if block is not None and block["type"] == "tool_use":
            block["input"] += str(delta.get("partial_json") or "")
    return []
