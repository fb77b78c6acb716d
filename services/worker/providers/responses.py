"""OpenAI Responses (`POST {base_url}/responses`, streamed) over httpx.

The system prompt is `instructions`; the conversation goes whole in `input` as items (the
platform keeps the transcript, so nothing is stored at the provider: `store: false`): user and
assistant messages, a tool call as a `function_call` item, its result a `function_call_output`.
The stream is named server-sent events: `response.output_text.delta`,
`response.reasoning_summary_text.delta`, `response.output_item.done` carrying each finished
`function_call`, and `response.completed` carrying the usage; `error` or `response.failed`
end a stream that failed.
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


class ResponsesClient:
    """Call one Responses endpoint with streaming, translating failures to ModelError."""

    def __init__(self, config: HostedModelConfig, http: httpx.AsyncClient) -> None:
        self._url = f"{config.base_url}/responses"
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
    """Shape a model request as a streamed Responses request body."""
    items: list[dict[str, Any]] = []
    for message in request.messages:
        items += _items(message)
    body: dict[str, Any] = {
        "model": request.settings.model,
        "instructions": request.system,
        "input": items,
        "max_output_tokens": request.settings.max_output_tokens,
        "store": False,
        "stream": True,
    }
    if request.settings.reasoning_effort is not None:
        # A summary is what the API streams of the reasoning (its full text stays hidden).
        body["reasoning"] = {"effort": request.settings.reasoning_effort, "summary": "auto"}
    if request.tools:
        body["tools"] = [_tool(t) for t in request.tools]
    return body


def _items(message: Message) -> list[dict[str, Any]]:
    match message:
        case UserMessage(text=text):
            return [{"type": "message", "role": "user", "content": text}]
        case AssistantMessage(text=text, tool_calls=calls):
            # Reasoning items are not given back: with store false the API would need their
            # encrypted content, and it reasons anew without them.
            items: list[dict[str, Any]] = []
            if text or not calls:
                items.append({"type": "message", "role": "assistant", "content": text})
            items += [
                {
                    "type": "function_call",
                    "call_id": call.call_id,
                    "name": call.name,
                    "arguments": call.arguments_json,
                }
                for call in calls
            ]
            return items
        case ToolResult(call_id=call_id, text=text):
            return [{"type": "function_call_output", "call_id": call_id, "output": text}]


def _tool(tool: ToolSpec) -> dict[str, Any]:
    return {
        "type": "function",
        "name": tool.name,
        "description": tool.description,
        "parameters": dict(tool.parameters),
    }


async def _parse_stream(frames: AsyncIterator[Frame]) -> AsyncIterator[ModelEvent]:
    calls: list[ToolCallRequest] = []
    completed: dict[str, Any] | None = None
    async for frame in frames:
        if completed is not None:
            continue  # read to the end so the connection goes back to the pool
        try:
            event = json.loads(frame.data)
            kind = str(event.get("type") or frame.event)
            if kind in ("response.completed", "response.incomplete"):
                completed = event.get("response") or {}
                continue
            item = _event(kind, event)
        except (ValueError, TypeError, AttributeError):
            raise malformed() from None
        if isinstance(item, ToolCallRequest):
            calls.append(item)
        elif item is not None:
            yield item
    if completed is None:
        raise ModelError(Reason.MODEL_ERROR, "The model stream ended without response.completed.")
    for call in calls:
        yield call
    if usage := completed.get("usage"):
        try:
            yield _usage(usage)
        except (ValueError, TypeError, AttributeError):
            raise malformed("malformed usage") from None


def _event(kind: str, event: dict[str, Any]) -> ModelEvent | None:
    """Map one stream event onto the seam; None for those that carry nothing it needs."""
    match kind:
        case "response.output_text.delta" if event.get("delta"):
            return TextDelta(str(event["delta"]))
        case "response.reasoning_summary_text.delta" | "response.reasoning_text.delta" if event.get(
            "delta"
        ):
            return ReasoningDelta(str(event["delta"]))
        case "response.output_item.done" if (event.get("item") or {}).get(
            "type"
        ) == "function_call":
            item = event["item"]
            if not item.get("name"):
                raise ModelError(
                    Reason.MODEL_ERROR, "The model streamed a tool call without a name."
                )
            return ToolCallRequest(
                str(item.get("call_id") or item.get("id") or "call_0"),
                str(item["name"]),
                str(item.get("arguments") or "{}"),
            )
        case "error":
            raise ModelError(
                Reason.MODEL_ERROR, f"The model endpoint reported an error: {_message(event)}"
            )
        case "response.failed":
            error = (event.get("response") or {}).get("error") or {}
            raise ModelError(
                Reason.MODEL_ERROR,
                f"The model endpoint reported an error: {_message({'error': error})}",
            )
    # created, in_progress, part and item boundaries, argument deltas (the done item has them)
    return None


def _usage(usage: dict[str, Any]) -> UsageReport:
    output_details = usage.get("output_tokens_details") or {}
    input_details = usage.get("input_tokens_details") or {}
    return UsageReport(
        input_tokens=int(usage.get("input_tokens") or 0),
        output_tokens=int(usage.get("output_tokens") or 0),
        reasoning_tokens=int(output_details.get("reasoning_tokens") or 0),
        cached_input_tokens=int(input_details.get("cached_tokens") or 0),
    )


def _message(event: dict[str, Any]) -> str:
    error = event.get("error")
    if isinstance(error, dict):
        return str(error.get("message") or error)[:500]
    return str(event.get("message") or event)[:500]
