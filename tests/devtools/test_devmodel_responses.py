"""Prove the dev model's OpenAI Responses API (POST /v1/responses) over real HTTP."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from devtools.devmodel import DevModel

TOOLS = [{"type": "function", "name": "lookup", "parameters": {"type": "object"}}]


@pytest.fixture
async def model() -> AsyncIterator[DevModel]:
    """Run a dev model on a free port for one test."""
    dev = DevModel()
    await dev.start()
    yield dev
    await dev.stop()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    """Provide an HTTP client whose reads give up quickly on a silent server."""
    async with httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=0.5)) as http:
        yield http


def _body(text: str, *, stream: bool = True, **fields: Any) -> dict[str, Any]:
    """Build a Responses request whose one user message is ``text``."""
    return {
        "model": "dev-model",
        "instructions": "You are a test.",
        "input": [{"role": "user", "content": [{"type": "input_text", "text": text}]}],
        "stream": stream,
        **fields,
    }


def _frames(raw: str) -> list[tuple[str, str]]:
    """Split an SSE body into (event, data) pairs, each frame exactly those two lines."""
    frames = []
    for block in raw.split("\n\n"):
        if block:
            event, data = block.split("\n")
            assert event.startswith("event: ") and data.startswith("data: "), block
            frames.append((event.removeprefix("event: "), data.removeprefix("data: ")))
    return frames


def _events(raw: str) -> list[dict[str, Any]]:
    """Parse every frame, checking its event name and its place in the sequence."""
    events = []
    for number, (name, data) in enumerate(_frames(raw)):
        event = json.loads(data)
        assert event["type"] == name
        assert event["sequence_number"] == number
        events.append(event)
    return events


async def _stream(model: DevModel, client: httpx.AsyncClient, body: dict[str, Any]) -> str:
    """Post a streaming request and return the whole event stream."""
    async with client.stream("POST", f"{model.base_url}/responses", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream"
        return (await response.aread()).decode()


def _of(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """Return the events of one type, in order."""
    return [e for e in events if e["type"] == kind]


async def test_streamed_text_and_reasoning_follow_the_event_sequence(
    model: DevModel, client: httpx.AsyncClient
) -> None:
    """A reasoning item (summary deltas), then a message item (text deltas), then completed."""
    events = _events(await _stream(model, client, _body("hello there [[reasoning=2]]")))
    assert [e["type"] for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.reasoning_summary_part.added",
        *["response.reasoning_summary_text.delta"] * 2,
        "response.reasoning_summary_text.done",
        "response.reasoning_summary_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * 4,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    created = events[0]["response"]
    assert created["status"] == "in_progress"
    assert created["output"] == []

    reasoning = _of(events, "response.reasoning_summary_text.delta")
    assert "".join(e["delta"] for e in reasoning) == "Reading the"
    assert {e["output_index"] for e in reasoning} == {0}
    deltas = _of(events, "response.output_text.delta")
    assert [e["delta"] for e in deltas] == ["You ", "said: ", "hello ", "there"]
    assert {e["output_index"] for e in deltas} == {1}
    assert _of(events, "response.output_text.done")[0]["text"] == "You said: hello there"

    done_items = [e["item"] for e in _of(events, "response.output_item.done")]
    assert done_items[0]["summary"] == [{"type": "summary_text", "text": "Reading the"}]
    assert done_items[1]["content"][0]["text"] == "You said: hello there"
    assert done_items[1]["status"] == "completed"
    completed = events[-1]["response"]
    assert completed["id"] == created["id"]
    assert completed["status"] == "completed"
    assert completed["output"] == done_items
    assert completed["instructions"] == "You are a test."


async def test_non_streaming_returns_a_completed_response(
    model: DevModel, client: httpx.AsyncClient
) -> None:
    """stream=false returns one response object with the same output items."""
    response = await client.post(
        f"{model.base_url}/responses", json={"model": "m", "input": "ping [[reasoning=1]]"}
    )
    payload = response.json()
    assert payload["object"] == "response"
    assert payload["status"] == "completed"
    assert payload["model"] == "m"
    reasoning, message = payload["output"]
    assert reasoning["type"] == "reasoning"
    assert reasoning["summary"][0]["text"] == "Reading"
    assert message["role"] == "assistant"
    assert message["content"] == [
        {"type": "output_text", "text": "You said: ping", "annotations": []}
    ]


async def test_tool_call_round_trip(model: DevModel, client: httpx.AsyncClient) -> None:
    """Function call items stream their arguments; function_call_output items get the reply."""
    text = 'look [[tool=lookup args={"item": "a/b"}]] [[tool=other]] [[reasoning=0]]'
    events = _events(await _stream(model, client, _body(text, tools=TOOLS)))
    added = [e["item"] for e in _of(events, "response.output_item.added")]
    assert [(i["type"], i["call_id"], i["name"], i["arguments"]) for i in added] == [
        ("function_call", "call_1_1", "lookup", ""),
        ("function_call", "call_1_2", "other", ""),
    ]
    first = [
        e for e in _of(events, "response.function_call_arguments.delta") if e["output_index"] == 0
    ]
    assert json.loads("".join(e["delta"] for e in first)) == {"item": "a/b"}
    done = _of(events, "response.function_call_arguments.done")
    assert [json.loads(e["arguments"]) for e in done] == [{"item": "a/b"}, {}]
    items = events[-1]["response"]["output"]
    assert [i["status"] for i in items] == ["completed", "completed"]
    assert items[0]["id"] == first[0]["item_id"]

    history = [
        *_body(text)["input"],
        *({k: i[k] for k in ("type", "call_id", "name", "arguments")} for i in items),
        {"type": "function_call_output", "call_id": "call_1_1", "output": "42"},
        {
            "type": "function_call_output",
            "call_id": "call_1_2",
            "output": [{"type": "input_text", "text": "ok"}],
        },
    ]
    events = _events(await _stream(model, client, _body(text, input=history)))
    reply = _of(events, "response.output_text.done")[0]["text"]
    assert reply == "Tool lookup returned: 42 Tool other returned: ok"


async def test_tool_steps_repeat_the_round(model: DevModel, client: httpx.AsyncClient) -> None:
    """[[tool_steps=2]] calls again after the first round's output, with round-2 call ids."""
    text = "[[tool=lookup]] [[tool_steps=2]]"
    history = [
        *_body(text)["input"],
        {"type": "reasoning", "id": "rs_1", "summary": []},
        {"type": "function_call", "call_id": "call_1_1", "name": "lookup", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_1_1", "output": "1"},
    ]
    response = await client.post(
        f"{model.base_url}/responses", json=_body(text, stream=False, input=history)
    )
    calls = [i for i in response.json()["output"] if i["type"] == "function_call"]
    assert [c["call_id"] for c in calls] == ["call_2_1"]


async def test_usage_counts_instructions_input_cached_and_reasoning(
    model: DevModel, client: httpx.AsyncClient
) -> None:
    """response.completed carries usage: input (with cached), output (with reasoning), total."""
    events = _events(await _stream(model, client, _body("one two [[cached=3]] [[tokens=4]]")))
    assert events[-1]["response"]["usage"] == {
        "input_tokens": 8,  # "You are a test." and the four words of the message
        "input_tokens_details": {"cached_tokens": 3},
        "output_tokens": 4 + 3,
        "output_tokens_details": {"reasoning_tokens": 3},
        "total_tokens": 15,
    }
    response = await client.post(f"{model.base_url}/responses", json=_body("hi", stream=False))
    assert response.json()["usage"]["input_tokens_details"] == {"cached_tokens": 0}


async def test_fail_returns_an_openai_error(model: DevModel, client: httpx.AsyncClient) -> None:
    """[[fail=503]] answers HTTP 503 with an OpenAI-style error body, not a stream."""
    response = await client.post(f"{model.base_url}/responses", json=_body("[[fail=503]]"))
    assert response.status_code == 503
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["error"]["type"] == "server_error"


async def test_rate_limit_refuses_then_answers(model: DevModel, client: httpx.AsyncClient) -> None:
    """[[rate_limit=1]] refuses once with Retry-After and retry-after-ms; the retry streams."""
    body = _body("again [[rate_limit=1]] [[retry_after_ms=250]]")
    response = await client.post(f"{model.base_url}/responses", json=body)
    assert response.status_code == 429
    assert response.headers["retry-after"] == "1"
    assert response.headers["retry-after-ms"] == "250"
    assert response.json()["error"]["type"] == "rate_limit_error"
    events = _events(await _stream(model, client, body))
    assert events[-1]["type"] == "response.completed"


async def test_hang_after_streams_n_tokens_then_goes_silent(
    model: DevModel, client: httpx.AsyncClient
) -> None:
    """[[hang_after=1]] streams one text delta and then nothing; [[hang]] sends no headers."""
    url = f"{model.base_url}/responses"
    received: list[str] = []
    with pytest.raises(httpx.ReadTimeout):
        async with client.stream("POST", url, json=_body("[[hang_after=1]] [[tokens=5]]")) as r:
            async for chunk in r.aiter_text():
                received.append(chunk)
    events = _events("".join(received))
    assert [e["delta"] for e in _of(events, "response.output_text.delta")] == ["alpha "]
    assert events[-1]["type"] == "response.output_text.delta"
    with pytest.raises(httpx.ReadTimeout):
        await client.post(url, json=_body("[[hang]]"))


async def test_malformed_sends_a_frame_that_is_not_json(
    model: DevModel, client: httpx.AsyncClient
) -> None:
    """[[malformed]] sends one text delta, a delta frame that is not JSON, then the end."""
    frames = _frames(await _stream(model, client, _body("[[malformed]] [[reasoning=0]]")))
    names = [name for name, _ in frames]
    broken = names.index(
        "response.output_text.delta", names.index("response.output_text.delta") + 1
    )
    with pytest.raises(json.JSONDecodeError):
        json.loads(frames[broken][1])
    assert json.loads(frames[broken - 1][1])["delta"] == "You "
    assert names[broken + 1 :] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]


async def test_fail_after_sends_error_then_response_failed(
    model: DevModel, client: httpx.AsyncClient
) -> None:
    """[[fail_after=2]] streams two text deltas, then an error event and response.failed."""
    events = _events(await _stream(model, client, _body("[[fail_after=2]] [[tokens=5]]")))
    assert [e["delta"] for e in _of(events, "response.output_text.delta")] == ["alpha ", "bravo "]
    error, failed = events[-2:]
    assert error["type"] == "error"
    assert error["code"] == "server_error"
    assert failed["type"] == "response.failed"
    assert failed["response"]["status"] == "failed"
    assert failed["response"]["error"]["code"] == "server_error"
    assert not _of(events, "response.completed")


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"model": None}, "model"),
        ({"input": []}, "input"),
        ({"previous_response_id": "resp_1"}, "previous_response_id"),
        ({"tools": [{"type": "function", "function": {"name": "lookup"}}]}, "tools[0].name"),
        ({"input": [{"type": "image_generation_call"}]}, "image_generation_call"),
        ({"input": [{"role": "tool", "content": "x"}]}, "input[0].role"),
        ({"input": [{"type": "function_call_output", "output": "x"}]}, "input[0].call_id"),
    ],
)
async def test_bad_requests_get_400_naming_the_field(
    model: DevModel, client: httpx.AsyncClient, change: dict[str, Any], named: str
) -> None:
    """A request the Responses API would refuse gets 400 invalid_request_error naming why."""
    body = {k: v for k, v in {**_body("hi"), **change}.items() if v is not None}
    response = await client.post(f"{model.base_url}/responses", json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert named in error["message"]


async def test_input_may_be_a_string_and_messages_of_every_role(
    model: DevModel, client: httpx.AsyncClient
) -> None:
    """A string input is one user message; the reply answers the last user message."""
    response = await client.post(
        f"{model.base_url}/responses",
        json={
            "model": "dev-model",
            "input": [
                {"type": "message", "role": "developer", "content": "Be brief."},
                {"role": "user", "content": "first"},
                {"role": "assistant", "content": [{"type": "output_text", "text": "ok"}]},
                {"role": "user", "content": "second [[reasoning=0]]"},
            ],
        },
    )
    payload = response.json()
    assert payload["output"][0]["content"][0]["text"] == "You said: second"
    assert payload["usage"]["input_tokens"] == 6


async def test_key_and_model_checks_answer_in_the_openai_shape(client: httpx.AsyncClient) -> None:
    """A wrong key gets 401 and an unserved model 404, both OpenAI-style errors."""
    dev = DevModel(models=["served"], api_key="sk-dev-right")
    await dev.start()
    try:
        url = f"{dev.base_url}/responses"
        body = {**_body("hi", stream=False), "model": "served"}
        wrong = await client.post(url, json=body, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        assert wrong.json()["error"]["code"] == "invalid_api_key"
        key = {"Authorization": "Bearer sk-dev-right"}
        unknown = await client.post(url, json={**body, "model": "other"}, headers=key)
        assert unknown.status_code == 404
        assert unknown.json()["error"]["code"] == "model_not_found"
        assert (await client.post(url, json=body, headers=key)).status_code == 200
    finally:
        await dev.stop()
