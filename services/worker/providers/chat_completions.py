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
from services.rpc.settings import HostedModelSettings
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


class ChatCompletionsClient:
    """Call one Chat Completions endpoint with streaming, translating failures to ModelError."""

    def __init__(self, settings: HostedModelSettings, http: httpx.AsyncClient) -> None:
        self._settings = settings
        self._http = http
        self._headers = {"accept": "text/event-stream"}
        if settings.api_key is not None:
            self._headers["authorization"] = f"Bearer {settings.api_key.get_secret_value()}"
        # The read timeout bounds every wait for bytes, so a stream that goes silent fails.
        self._timeout = httpx.Timeout(
            connect=settings.connect_timeout_seconds,
            read=settings.idle_timeout_seconds,
            write=settings.connect_timeout_seconds,
            pool=settings.connect_timeout_seconds,
        )

    async def stream(self, request: ModelRequest) -> AsyncIterator[ModelEvent]:
        """Yield reply pieces as the model streams them; the tool calls it asks for come last."""
        try:
            async with self._http.stream(
                "POST",
                f"{self._settings.base_url}/chat/completions",
                json=request_body(request),
                headers=self._headers,
                timeout=self._timeout,
            ) as response:
                if response.status_code != 200:
                    detail = (await response.aread())[:500].decode(errors="replace")
                    raise ModelError(
                        Reason.MODEL_ERROR,
                        f"The model endpoint answered HTTP {response.status_code}: {detail}",
                    )
                async for event in _parse_stream(response.aiter_lines()):
                    yield event
        except httpx.TimeoutException as err:
            raise ModelError(
                Reason.MODEL_TIMEOUT, f"The model endpoint timed out ({type(err).__name__})."
            ) from None
        except httpx.HTTPError as err:
            raise ModelError(
                Reason.MODEL_ERROR, f"The model endpoint failed: {type(err).__name__}: {err}"
            ) from None


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


async def _parse_stream(lines: AsyncIterator[str]) -> AsyncIterator[ModelEvent]:
    done = False
    # Tool calls stream as fragments keyed by index: the id and name first, then pieces of
    # the arguments' JSON; they are complete only at the end of the stream.
    calls: dict[int, dict[str, str]] = {}
    async for line in lines:
        if not line.startswith("data:"):
            continue  # blank separators, comments and other SSE fields
        data = line[5:].strip()
        if data == "[DONE]":
            # Keep reading to the end of the body so the connection goes back to the pool.
            done = True
            continue
        if done:
            continue
        try:
            chunk = json.loads(data)
            for event in _chunk_events(chunk, calls):
                yield event
        except (ValueError, TypeError, KeyError, AttributeError):
            raise ModelError(
                Reason.MODEL_ERROR, "The model endpoint sent a malformed stream chunk."
            ) from None
    if not done:
        raise ModelError(Reason.MODEL_ERROR, "The model stream ended without [DONE].")
    for index in sorted(calls):
        call = calls[index]
        if not call["name"]:
            raise ModelError(Reason.MODEL_ERROR, "The model streamed a tool call without a name.")
        yield ToolCallRequest(
            call["id"] or f"call_{index}", call["name"], call["arguments"] or "{}"
        )


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
        events.append(
            UsageReport(
                input_tokens=int(usage.get("prompt_tokens") or 0),
                output_tokens=int(usage.get("completion_tokens") or 0),
                reasoning_tokens=int(details.get("reasoning_tokens") or 0),
            )
        )
    return events
