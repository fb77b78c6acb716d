"""OpenAI-compatible Chat Completions (`POST {base_url}/chat/completions`, streamed) over httpx.

OpenAI, vLLM, Ollama, llama.cpp and LiteLLM all speak it. The system prompt is the first
message; a tool call the model made is an assistant message's `tool_calls`, its result a
`tool` message; the stream is server-sent events ending in `data: [DONE]`.
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
    ReasoningDelta,
    TextDelta,
    ToolCallRequest,
    ToolResult,
    ToolSpec,
    UsageReport,
    UserMessage,
)
from services.worker.providers.sse import Frame, malformed, post_stream, timeout_of


class ChatCompletionsClient:
    """Call one Chat Completions endpoint with streaming, translating failures to ModelError."""

    def __init__(self, config: HostedModelConfig, http: httpx.AsyncClient) -> None:
        self._url = f"{config.base_url}/chat/completions"
        self._http = http
        self._headers = {"accept": "text/event-stream"}
        if config.api_key is not None:
            self._headers["authorization"] = f"Bearer {config.api_key.get_secret_value()}"
        self._timeout = timeout_of(config)

    async def stream(self, request: ModelRequest) -> AsyncIterator[ModelEvent]:
        """Yield reply pieces as the model streams them; the tool calls it asks for come last."""
        async with post_stream(
            self._http, self._url, request_body(request), self._headers, self._timeout
        ) as stream:
            async for event in _parse_stream(stream):
                yield event


def request_body(request: ModelRequest) -> dict[str, Any]:
    """Shape a model request as a streamed Chat Completions request body."""
    body: dict[str, Any] = {
        "model": request.settings.model,
        "messages": [
            {"role": "system", "content": request.system},
            *(_message(m) for m in request.messages),
        ],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if request.settings.reasoning_effort is not None:
        # OpenAI's reasoning models and vLLM take it; the reasoning comes back as
        # reasoning_content (or reasoning) where the server exposes it.
        body["reasoning_effort"] = request.settings.reasoning_effort
    if request.tools:
        body["tools"] = [_tool(t) for t in request.tools]
    return body


def _message(message: Message) -> dict[str, Any]:
    match message:
        case UserMessage(text=text):
            return {"role": "user", "content": text}
        case AssistantMessage(text=text, tool_calls=()):
            return {"role": "assistant", "content": text}
        case AssistantMessage(text=text, tool_calls=calls):
            return {
                "role": "assistant",
                "content": text or None,
                "tool_calls": [
                    {
                        "id": call.call_id,
                        "type": "function",
                        "function": {"name": call.name, "arguments": call.arguments_json},
                    }
                    for call in calls
                ],
            }
        case ToolResult(call_id=call_id, text=text):
            return {"role": "tool", "tool_call_id": call_id, "content": text}


def _tool(tool: ToolSpec) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": tool.name,
            "description": tool.description,
            "parameters": dict(tool.parameters),
        },
    }


async def _parse_stream(frames: AsyncIterator[Frame]) -> AsyncIterator[ModelEvent]:
    done = False
    # Tool calls stream as fragments keyed by index: the id and name first, then pieces of
    # the arguments' JSON; they are complete only at the end of the stream.
    calls: dict[int, dict[str, str]] = {}
    usage: UsageReport | None = None
    async for frame in frames:
        if frame.data == "[DONE]":
            # Keep reading to the end of the body so the connection goes back to the pool.
            done = True
            continue
        if done:
            continue
        try:
            chunk = json.loads(frame.data)
            for event in _chunk_events(chunk, calls):
                if isinstance(event, UsageReport):
                    usage = event
                else:
                    yield event
        except (ValueError, TypeError, KeyError, AttributeError):
            raise malformed("a malformed stream chunk") from None
    if not done:
        raise ModelError(Reason.MODEL_ERROR, "The model stream ended without [DONE].")
    for index in sorted(calls):
        call = calls[index]
        if not call["name"]:
            raise ModelError(Reason.MODEL_ERROR, "The model streamed a tool call without a name.")
        yield ToolCallRequest(
            call["id"] or f"call_{index}", call["name"], call["arguments"] or "{}"
        )
    if usage is not None:
        yield usage


def _chunk_events(chunk: dict[str, Any], calls: dict[int, dict[str, str]]) -> list[ModelEvent]:
    if "error" in chunk:
        message = str(chunk["error"].get("message", chunk["error"]))[:500]
        raise ModelError(Reason.MODEL_ERROR, f"The model endpoint reported an error: {message}")
    events: list[ModelEvent] = []
    for choice in chunk.get("choices") or []:
        delta = choice.get("delta") or {}
        reasoning = delta.get("reasoning_content") or delta.get("reasoning")
        if reasoning:
            events.append(ReasoningDelta(str(reasoning)))
        content = delta.get("content")
        if content:
            events.append(TextDelta(str(content)))
        for fragment in delta.get("tool_calls") or []:
            call = calls.setdefault(int(fragment["index"]), {"id": "", "name": "", "arguments": ""})
            call["id"] = call["id"] or str(fragment.get("id") or "")
            function = fragment.get("function") or {}
            call["name"] += str(function.get("name") or "")
            call["arguments"] += str(function.get("arguments") or "")
    usage = chunk.get("usage")
    if usage:
        details = usage.get("completion_tokens_details") or {}
        prompt_details = usage.get("prompt_tokens_details") or {}
        events.append(
            UsageReport(
                input_tokens=int(usage.get("prompt_tokens") or 0),
                output_tokens=int(usage.get("completion_tokens") or 0),
                reasoning_tokens=int(details.get("reasoning_tokens") or 0),
                cached_input_tokens=int(prompt_details.get("cached_tokens") or 0),
            )
        )
    return events
