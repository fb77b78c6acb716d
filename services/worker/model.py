"""Stream a reply from an OpenAI-compatible Chat Completions endpoint over httpx."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx

from services.rpc.settings import HostedModelSettings


class ModelError(Exception):
    """The model call failed; `reason` is an ErrorReason name."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class TextDelta:
    """A piece of reply text."""

    text: str


@dataclass(frozen=True)
class ReasoningDelta:
    """A piece of the model's reasoning summary."""

    text: str


@dataclass(frozen=True)
class UsageReport:
    """Token counts reported at the end of the stream."""

    input_tokens: int
    output_tokens: int
    reasoning_tokens: int


@dataclass(frozen=True)
class ToolCallRequest:
    """A function call the model asked for, assembled from its streamed fragments."""

    call_id: str
    name: str
    arguments_json: str


ModelEvent = TextDelta | ReasoningDelta | UsageReport | ToolCallRequest


class ChatCompletionsClient:
    """Call one hosted model with streaming, translating failures to ModelError."""

    def __init__(self, settings: HostedModelSettings, http: httpx.AsyncClient) -> None:
        self._settings = settings
        self._http = http

    async def stream(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
    ) -> AsyncIterator[ModelEvent]:
        """Yield reply pieces as the model streams them; the tool calls it asks for come last."""
        settings = self._settings
        headers = {"accept": "text/event-stream"}
        if settings.api_key is not None:
            headers["authorization"] = f"Bearer {settings.api_key.get_secret_value()}"
        body = {
            "model": settings.name,
            "messages": messages,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if tools:
            body["tools"] = tools
        # The read timeout bounds every wait for bytes, so a stream that goes silent fails.
        timeout = httpx.Timeout(
            connect=settings.connect_timeout_seconds,
            read=settings.idle_timeout_seconds,
            write=settings.connect_timeout_seconds,
            pool=settings.connect_timeout_seconds,
        )
        try:
            async with self._http.stream(
                "POST",
                f"{settings.base_url}/chat/completions",
                json=body,
                headers=headers,
                timeout=timeout,
            ) as response:
                if response.status_code != 200:
                    detail = (await response.aread())[:500].decode(errors="replace")
                    raise ModelError(
                        "MODEL_ERROR",
                        f"The model endpoint answered HTTP {response.status_code}: {detail}",
                    )
                async for event in _parse_stream(response.aiter_lines()):
                    yield event
        except httpx.TimeoutException as err:
            raise ModelError(
                "MODEL_TIMEOUT", f"The model endpoint timed out ({type(err).__name__})."
            ) from None
        except httpx.HTTPError as err:
            raise ModelError(
                "MODEL_ERROR", f"The model endpoint failed: {type(err).__name__}: {err}"
            ) from None


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
                "MODEL_ERROR", "The model endpoint sent a malformed stream chunk."
            ) from None
    if not done:
        raise ModelError("MODEL_ERROR", "The model stream ended without [DONE].")
    for index in sorted(calls):
        call = calls[index]
        if not call["name"]:
            raise ModelError("MODEL_ERROR", "The model streamed a tool call without a name.")
        yield ToolCallRequest(
            call["id"] or f"call_{index}", call["name"], call["arguments"] or "{}"
        )


def _chunk_events(chunk: dict[str, Any], calls: dict[int, dict[str, str]]) -> list[ModelEvent]:
    if "error" in chunk:
        message = str(chunk["error"].get("message", chunk["error"]))[:500]
        raise ModelError("MODEL_ERROR", f"The model endpoint reported an error: {message}")
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
