"""Speak OpenAI Chat Completions: ``POST /v1/chat/completions``, the dev model's first format."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from devtools.devmodel.script import BadRequestError, Plan, Role, ToolCall, Turn, Usage
from devtools.devmodel.wire import (
    MODEL_ID,
    Call,
    Reply,
    bearer_token,
    compact_json,
    retry_after_seconds,
    split_arguments,
)

_OPENAI_ERROR_TYPES = {
    400: ("invalid_request_error", None),
    401: ("authentication_error", "invalid_api_key"),
    403: ("permission_error", None),
    404: ("not_found_error", "model_not_found"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
}
_DONE = b"data: [DONE]\n\n"
_ROLES: dict[str, Role] = {"user": "user", "assistant": "assistant", "tool": "tool"}


def message_text(content: Any) -> str:
    """Return the text of a message's content, a string or a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(part.get("text", ""))
            for part in content
            if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""


def openai_error_body(status: int, message: str) -> dict[str, Any]:
    """Build an OpenAI-style error body for an HTTP status (Chat Completions and Responses)."""
    error_type, code = _OPENAI_ERROR_TYPES.get(
        status, ("server_error" if status >= 500 else "invalid_request_error", None)
    )
    return {"error": {"message": message, "type": error_type, "code": code}}


def openai_retry_headers(retry_after_ms: int) -> dict[str, str]:
    """Return OpenAI's retry headers: ``Retry-After`` in seconds and ``retry-after-ms``."""
    return {
        "Retry-After": retry_after_seconds(retry_after_ms),
        "retry-after-ms": str(retry_after_ms),
    }


def openai_model_list(model_ids: Sequence[str]) -> dict[str, Any]:
    """Build OpenAI's model list."""
    return {"object": "list", "data": [openai_model(model_id) for model_id in model_ids]}


def openai_model(model_id: str) -> dict[str, Any]:
    """Describe one model as OpenAI does."""
    return {"id": model_id, "object": "model", "created": 0, "owned_by": "agentplatform"}


def _turn(message: dict[str, Any]) -> Turn:
    """Read one chat message as a neutral turn."""
    role = _ROLES.get(str(message.get("role")), "system")
    calls = message.get("tool_calls") if role == "assistant" else None
    return Turn(
        role=role,
        text=message_text(message.get("content")),
        calls=tuple(
            (str(call.get("id")), str((call.get("function") or {}).get("name")))
            for call in (calls if isinstance(calls, list) else ())
            if isinstance(call, dict)
        ),
        call_id=str(message.get("tool_call_id")) if role == "tool" else "",
    )


def _usage(usage: Usage) -> dict[str, Any]:
    """Name a reply's token counts as Chat Completions does."""
    fields: dict[str, Any] = {
        "prompt_tokens": usage.prompt,
        "completion_tokens": usage.output,
        "total_tokens": usage.total,
    }
    if usage.cached is not None:
        fields["prompt_tokens_details"] = {"cached_tokens": usage.cached}
    fields["completion_tokens_details"] = {"reasoning_tokens": usage.reasoning}
    return fields


def _completion_id(reply: Reply) -> str:
    """Return a completion's id."""
    return f"chatcmpl-dev-{reply.serial:08d}"


class ChatCompletions:
    """Speak OpenAI Chat Completions."""

    name = "chat_completions"
    path = "/v1/chat/completions"

    def api_key(self, headers: Mapping[str, str]) -> str | None:
        """Return the bearer token."""
        return bearer_token(headers)

    def check_headers(self, headers: Mapping[str, str]) -> None:
        """Require no particular header."""

    def decode(self, body: dict[str, Any]) -> Call:
        """Read ``model``, ``messages``, ``stream`` and ``stream_options.include_usage``."""
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequestError("'messages' must be a non-empty list")
        options = body.get("stream_options")
        return Call(
            model=str(body.get("model") or MODEL_ID),
            stream=bool(body.get("stream")),
            conversation=tuple(_turn(m) for m in messages if isinstance(m, dict)),
            stream_usage=isinstance(options, dict) and bool(options.get("include_usage")),
            body=body,
        )

    def error_body(self, status: int, message: str) -> dict[str, Any]:
        """Build OpenAI's error body."""
        return openai_error_body(status, message)

    def retry_headers(self, retry_after_ms: int) -> dict[str, str]:
        """Return OpenAI's retry headers."""
        return openai_retry_headers(retry_after_ms)

    def model_list(self, model_ids: Sequence[str]) -> dict[str, Any]:
        """Build OpenAI's model list."""
        return openai_model_list(model_ids)

    def model_info(self, model_id: str) -> dict[str, Any]:
        """Describe one model as OpenAI does."""
        return openai_model(model_id)

    def reply(self, plan: Plan, call: Call, reply: Reply) -> dict[str, Any]:
        """Build one ``chat.completion`` object."""
        message: dict[str, Any] = {"role": "assistant", "content": "".join(plan.content)}
        if plan.reasoning:
            message["reasoning_content"] = "".join(plan.reasoning)
        if plan.tool_calls:
            message["tool_calls"] = [
                {
                    "id": tool_call.call_id("call"),
                    "type": "function",
                    "function": {"name": tool_call.name, "arguments": tool_call.arguments},
                }
                for tool_call in plan.tool_calls
            ]
        return {
            "id": _completion_id(reply),
            "object": "chat.completion",
            "created": reply.created,
            "model": call.model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": "tool_calls" if plan.tool_calls else "stop",
                }
            ],
            "usage": _usage(plan.usage),
        }

    def encoder(self, plan: Plan, call: Call, reply: Reply) -> _ChatStream:
        """Start a stream of ``chat.completion.chunk`` events."""
        return _ChatStream(plan, call, reply)


class _ChatStream:
    """Encode a reply as ``chat.completion.chunk`` server-sent events, then ``[DONE]``."""

    def __init__(self, plan: Plan, call: Call, reply: Reply) -> None:
        """Serialise the chunk envelope once, to splice each token into."""
        self._plan = plan
        self._usage = _usage(plan.usage) if call.stream_usage else None
        self._envelope = {
            "id": _completion_id(reply),
            "object": "chat.completion.chunk",
            "created": reply.created,
            "model": call.model,
        }
        # The benchmark pushes hundreds of requests a second through here, and a full
        # json.dumps per token is the main cost.
        template = json.dumps(
            {**self._envelope, "choices": [{"index": 0, "delta": 0, "finish_reason": None}]},
            separators=(",", ":"),
        )
        head, tail = template.split('"delta":0', 1)
        self._prefix = f'data: {head}"delta":'.encode()
        self._suffix = f"{tail}\n\n".encode()

    def _delta(self, key: str, token: str) -> bytes:
        """Encode a chunk whose delta is ``{key: token}``."""
        return b'%s{"%s":%s}%s' % (
            self._prefix,
            key.encode(),
            json.dumps(token).encode(),
            self._suffix,
        )

    def _chunk(self, **fields: Any) -> bytes:
        """Encode one chunk with the envelope and ``fields``."""
        return b"data: " + compact_json({**self._envelope, **fields}) + b"\n\n"

    def start(self) -> bytes:
        """Encode the role delta."""
        return self._delta("role", "assistant")

    def reasoning(self, token: str) -> bytes:
        """Encode a ``reasoning_content`` delta."""
        return self._delta("reasoning_content", token)

    def reasoning_end(self) -> bytes:
        """Encode nothing: reasoning deltas need no closing."""
        return b""

    def text(self, token: str) -> bytes:
        """Encode a ``content`` delta."""
        return self._delta("content", token)

    def text_end(self) -> bytes:
        """Encode nothing: content deltas need no closing."""
        return b""

    def tool_call(self, call: ToolCall) -> bytes:
        """Encode a tool call as providers stream it: id and name first, then two pieces."""
        index = call.index - 1
        first, second = split_arguments(call.arguments)
        fragments = [
            {
                "index": index,
                "id": call.call_id("call"),
                "type": "function",
                "function": {"name": call.name},
            },
            {"index": index, "function": {"arguments": first}},
            {"index": index, "function": {"arguments": second}},
        ]
        return b"".join(
            self._chunk(
                choices=[{"index": 0, "delta": {"tool_calls": [fragment]}, "finish_reason": None}]
            )
            for fragment in fragments
        )

    def end(self) -> bytes:
        """Encode the finish reason, the usage chunk when asked for, and ``[DONE]``."""
        reason = "tool_calls" if self._plan.tool_calls else "stop"
        finish = self._chunk(choices=[{"index": 0, "delta": {}, "finish_reason": reason}])
        usage = b"" if self._usage is None else self._chunk(choices=[], usage=self._usage)
        return finish + usage + _DONE

    def malformed(self) -> bytes:
        """Encode a data line that is not JSON, then ``[DONE]``."""
        return b"data: {not json\n\n" + _DONE

    def failure(self, message: str) -> bytes:
        """Encode an error object in place of a chunk, as OpenAI and vLLM do mid-stream."""
        return b"data: " + compact_json(openai_error_body(500, message)) + b"\n\n"
