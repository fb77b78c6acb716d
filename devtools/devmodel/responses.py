"""Speak the OpenAI Responses API: ``POST /v1/responses``.

A reply's output items, in order: a ``reasoning`` item (its summary carries the reasoning
tokens), a ``message`` item with one ``output_text`` part, and one ``function_call`` item per
tool call. The dev model stores nothing, so a conversation is always sent whole in ``input``.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

from devtools.devmodel.chat_completions import (
    openai_error_body,
    openai_model,
    openai_model_list,
    openai_retry_headers,
)
from devtools.devmodel.script import BadRequestError, Plan, Role, ToolCall, Turn, Usage
from devtools.devmodel.wire import Call, Reply, bearer_token, named_event, split_arguments

_MESSAGE_ROLES: dict[str, Role] = {
    "user": "user",
    "assistant": "assistant",
    "system": "system",
    "developer": "system",
}
_TEXT_PARTS = frozenset({"input_text", "output_text"})


def _text(content: Any, where: str) -> str:
    """Return the text of a message's content: a string or a list of text parts."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise BadRequestError(f"{where} must be a string or a list of content parts")
    return "".join(
        str(part.get("text", ""))
        for part in content
        if isinstance(part, dict) and part.get("type") in _TEXT_PARTS
    )


def _required_string(item: Mapping[str, Any], key: str, where: str) -> str:
    """Return ``item[key]``, which must be a non-empty string."""
    value = item.get(key)
    if not isinstance(value, str) or not value:
        raise BadRequestError(f"{where}.{key} must be a non-empty string")
    return value


def _turns(items: list[Any]) -> list[Turn]:
    """Read input items as neutral turns; consecutive function calls are one tool round."""
    turns: list[Turn] = []
    round_calls: list[tuple[str, str]] = []
    for n, item in enumerate(items):
        where = f"input[{n}]"
        if not isinstance(item, dict):
            raise BadRequestError(f"{where} must be an object")
        kind = item.get("type", "message")
        if kind == "function_call":
            if not isinstance(item.get("arguments"), str):
                raise BadRequestError(f"{where}.arguments must be a string of JSON")
            call_id = _required_string(item, "call_id", where)
            round_calls.append((call_id, _required_string(item, "name", where)))
            continue
        if kind == "reasoning":
            # A reasoning item sits between the calls of one round; it carries nothing to count.
            continue
        if round_calls:
            turns.append(Turn("assistant", calls=tuple(round_calls)))
            round_calls = []
        if kind == "message":
            role = _MESSAGE_ROLES.get(str(item.get("role")))
            if role is None:
                raise BadRequestError(f"{where}.role must be user, assistant, system or developer")
            turns.append(Turn(role, _text(item.get("content"), f"{where}.content")))
        elif kind == "function_call_output":
            call_id = _required_string(item, "call_id", where)
            turns.append(
                Turn("tool", _text(item.get("output"), f"{where}.output"), call_id=call_id)
            )
        else:
            raise BadRequestError(f"{where} has type {kind!r}, which the dev model does not serve")
    if round_calls:
        turns.append(Turn("assistant", calls=tuple(round_calls)))
    return turns


def _check_tools(tools: Any) -> None:
    """Require tools in the Responses shape: ``{"type": "function", "name", "parameters"}``."""
    if tools is None:
        return
    if not isinstance(tools, list):
        raise BadRequestError("'tools' must be a list")
    for n, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type") != "function":
            raise BadRequestError(f"tools[{n}] must be an object of type 'function'")
        _required_string(tool, "name", f"tools[{n}]")


def _usage(usage: Usage) -> dict[str, Any]:
    """Name a reply's token counts as the Responses API does."""
    return {
        "input_tokens": usage.prompt,
        "input_tokens_details": {"cached_tokens": usage.cached or 0},
        "output_tokens": usage.output,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning},
        "total_tokens": usage.total,
    }


class _Ids:
    """Name a response and its output items."""

    def __init__(self, reply: Reply) -> None:
        """Derive every id from the reply's serial number."""
        serial = f"{reply.serial:08d}"
        self.response = f"resp_dev_{serial}"
        self.reasoning = f"rs_dev_{serial}"
        self.message = f"msg_dev_{serial}"
        self._function_call = f"fc_dev_{serial}"

    def function_call(self, call: ToolCall) -> str:
        """Return a function call item's id (not its ``call_id``)."""
        return f"{self._function_call}_{call.index}"


def _reasoning_item(ids: _Ids, text: str) -> dict[str, Any]:
    """Build a finished reasoning item whose summary is ``text``."""
    return {
        "id": ids.reasoning,
        "type": "reasoning",
        "summary": [{"type": "summary_text", "text": text}],
    }


def _output_text(text: str) -> dict[str, Any]:
    """Build an ``output_text`` content part."""
    return {"type": "output_text", "text": text, "annotations": []}


def _message_item(ids: _Ids, status: str, content: list[dict[str, Any]]) -> dict[str, Any]:
    """Build an assistant message item."""
    return {
        "id": ids.message,
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": content,
    }


def _function_call_item(ids: _Ids, call: ToolCall, status: str, arguments: str) -> dict[str, Any]:
    """Build a function call item."""
    return {
        "id": ids.function_call(call),
        "type": "function_call",
        "status": status,
        "call_id": call.call_id("call"),
        "name": call.name,
        "arguments": arguments,
    }


def _response(
    call: Call,
    reply: Reply,
    status: str,
    output: list[dict[str, Any]],
    *,
    usage: dict[str, Any] | None = None,
    error: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Build a ``response`` object."""
    return {
        "id": _Ids(reply).response,
        "object": "response",
        "created_at": reply.created,
        "status": status,
        "error": error,
        "incomplete_details": None,
        "instructions": call.body.get("instructions"),
        "model": call.model,
        "output": output,
        "parallel_tool_calls": True,
        "tool_choice": call.body.get("tool_choice", "auto"),
        "tools": call.body.get("tools") or [],
        "usage": usage,
    }


class Responses:
    """Speak the OpenAI Responses API."""

    name = "responses"
    path = "/v1/responses"

    def api_key(self, headers: Mapping[str, str]) -> str | None:
        """Return the bearer token."""
        return bearer_token(headers)

    def check_headers(self, headers: Mapping[str, str]) -> None:
        """Require no particular header."""

    def decode(self, body: dict[str, Any]) -> Call:
        """Read ``model``, ``instructions``, ``input``, ``tools`` and ``stream``."""
        model = _required_string(body, "model", "body")
        if body.get("previous_response_id") is not None:
            raise BadRequestError(
                "'previous_response_id' is not supported: the dev model stores no responses,"
                " so send the whole conversation in 'input'"
            )
        turns: list[Turn] = []
        instructions = body.get("instructions")
        if instructions is not None:
            if not isinstance(instructions, str):
                raise BadRequestError("'instructions' must be a string")
            turns.append(Turn("system", instructions))
        raw = body.get("input")
        if isinstance(raw, str):
            turns.append(Turn("user", raw))
        elif isinstance(raw, list) and raw:
            turns.extend(_turns(raw))
        else:
            raise BadRequestError("'input' must be a string or a non-empty list of items")
        _check_tools(body.get("tools"))
        return Call(
            model=model, stream=bool(body.get("stream")), conversation=tuple(turns), body=body
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
        """Build one completed ``response`` object."""
        ids = _Ids(reply)
        output: list[dict[str, Any]] = []
        if plan.reasoning:
            output.append(_reasoning_item(ids, "".join(plan.reasoning)))
        if plan.content:
            output.append(_message_item(ids, "completed", [_output_text("".join(plan.content))]))
        output.extend(
            _function_call_item(ids, tool_call, "completed", tool_call.arguments)
            for tool_call in plan.tool_calls
        )
        return _response(call, reply, "completed", output, usage=_usage(plan.usage))

    def encoder(self, plan: Plan, call: Call, reply: Reply) -> _ResponsesStream:
        """Start a stream of Responses events."""
        return _ResponsesStream(plan, call, reply)


class _ResponsesStream:
    """Encode a reply as Responses events, each numbered by ``sequence_number``."""

    def __init__(self, plan: Plan, call: Call, reply: Reply) -> None:
        """Start with no output items."""
        self._plan = plan
        self._call = call
        self._reply = reply
        self._ids = _Ids(reply)
        self._sequence = itertools.count()
        # Finished output items, for response.completed.
        self._output: list[dict[str, Any]] = []
        # The text streamed so far into the open reasoning or message item, if any.
        self._reasoning: list[str] | None = None
        self._content: list[str] | None = None

    def _event(self, event: str, **fields: Any) -> bytes:
        """Encode one event, numbering it."""
        return named_event(
            event, {"type": event, "sequence_number": next(self._sequence), **fields}
        )

    def _response(self, status: str, **fields: Any) -> dict[str, Any]:
        """Build the response object as it stands."""
        return _response(self._call, self._reply, status, list(self._output), **fields)

    def start(self) -> bytes:
        """Encode ``response.created`` and ``response.in_progress``."""
        return self._event(
            "response.created", response=self._response("in_progress")
        ) + self._event("response.in_progress", response=self._response("in_progress"))

    def reasoning(self, token: str) -> bytes:
        """Encode a reasoning summary delta, opening the reasoning item on the first."""
        opening = b""
        if self._reasoning is None:
            self._reasoning = []
            opening = self._event(
                "response.output_item.added",
                output_index=len(self._output),
                item={"id": self._ids.reasoning, "type": "reasoning", "summary": []},
            ) + self._event(
                "response.reasoning_summary_part.added",
                item_id=self._ids.reasoning,
                output_index=len(self._output),
                summary_index=0,
                part={"type": "summary_text", "text": ""},
            )
        self._reasoning.append(token)
        return opening + self._event(
            "response.reasoning_summary_text.delta",
            item_id=self._ids.reasoning,
            output_index=len(self._output),
            summary_index=0,
            delta=token,
        )

    def reasoning_end(self) -> bytes:
        """Encode the end of the reasoning summary and its item."""
        if self._reasoning is None:
            return b""
        text = "".join(self._reasoning)
        self._reasoning = None
        where = {"item_id": self._ids.reasoning, "output_index": len(self._output)}
        events = (
            self._event("response.reasoning_summary_text.done", **where, summary_index=0, text=text)
            + self._event(
                "response.reasoning_summary_part.done",
                **where,
                summary_index=0,
                part={"type": "summary_text", "text": text},
            )
            + self._event(
                "response.output_item.done",
                output_index=len(self._output),
                item=_reasoning_item(self._ids, text),
            )
        )
        self._output.append(_reasoning_item(self._ids, text))
        return events

    def text(self, token: str) -> bytes:
        """Encode an output text delta, opening the message item on the first."""
        opening = b""
        where = {"item_id": self._ids.message, "output_index": len(self._output)}
        if self._content is None:
            self._content = []
            opening = self._event(
                "response.output_item.added",
                output_index=len(self._output),
                item=_message_item(self._ids, "in_progress", []),
            ) + self._event(
                "response.content_part.added", **where, content_index=0, part=_output_text("")
            )
        self._content.append(token)
        return opening + self._event(
            "response.output_text.delta", **where, content_index=0, delta=token, logprobs=[]
        )

    def text_end(self) -> bytes:
        """Encode the end of the output text, its part and its message item."""
        if self._content is None:
            return b""
        text = "".join(self._content)
        self._content = None
        where = {"item_id": self._ids.message, "output_index": len(self._output)}
        item = _message_item(self._ids, "completed", [_output_text(text)])
        events = (
            self._event(
                "response.output_text.done", **where, content_index=0, text=text, logprobs=[]
            )
            + self._event(
                "response.content_part.done", **where, content_index=0, part=_output_text(text)
            )
            + self._event("response.output_item.done", output_index=len(self._output), item=item)
        )
        self._output.append(item)
        return events

    def tool_call(self, call: ToolCall) -> bytes:
        """Encode a function call item: added, two argument deltas, done."""
        index = len(self._output)
        where = {"item_id": self._ids.function_call(call), "output_index": index}
        item = _function_call_item(self._ids, call, "completed", call.arguments)
        events = self._event(
            "response.output_item.added",
            output_index=index,
            item=_function_call_item(self._ids, call, "in_progress", ""),
        )
        for piece in split_arguments(call.arguments):
            events += self._event("response.function_call_arguments.delta", **where, delta=piece)
        events += self._event(
            "response.function_call_arguments.done",
            **where,
            name=call.name,
            arguments=call.arguments,
        ) + self._event("response.output_item.done", output_index=index, item=item)
        self._output.append(item)
        return events

    def end(self) -> bytes:
        """Encode ``response.completed`` with the whole output and the usage."""
        return self._event(
            "response.completed",
            response=self._response("completed", usage=_usage(self._plan.usage)),
        )

    def malformed(self) -> bytes:
        """Encode a text delta frame that is not JSON, then end the reply as if it were."""
        next(self._sequence)
        broken = b"event: response.output_text.delta\ndata: {not json\n\n"
        return broken + self.text_end() + self.end()

    def failure(self, message: str) -> bytes:
        """Encode an ``error`` event, then ``response.failed`` naming the same error."""
        error = {"code": "server_error", "message": message}
        return self._event("error", **error, param=None) + self._event(
            "response.failed", response=self._response("failed", error=error)
        )
