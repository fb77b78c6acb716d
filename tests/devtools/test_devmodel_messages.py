"""Prove the dev model's Anthropic Messages API (POST /v1/messages) over real HTTP."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from devtools.devmodel import DevModel

HEADERS = {"anthropic-version": "2023-06-01", "x-api-key": "sk-ant-dev"}
TOOLS = [{"name": "lookup", "input_schema": {"type": "object"}}]


@pytest.fixture
async def model() -> AsyncIterator[DevModel]:
    """Run a dev model on a free port for one test."""
    dev = DevModel()
    await dev.start()
    yield dev
    await dev.stop()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    """Provide an HTTP client that sends Anthropic's headers and gives up quickly on silence."""
    async with httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=0.5), headers=HEADERS) as http:
        yield http


def _body(text: str, *, stream: bool = True, **fields: Any) -> dict[str, Any]:
    """Build a Messages request whose one user message is ``text``."""
    return {
        "model": "dev-model",
        "max_tokens": 1024,
        "system": "You are a test.",
        "messages": [{"role": "user", "content": text}],
        "stream": stream,
        **fields,
    }


def _events(raw: str) -> list[dict[str, Any]]:
    """Parse an SSE body whose frames are exactly ``event:`` and ``data:`` lines."""
    events = []
    for block in raw.split("\n\n"):
        if block:
            name, data = block.split("\n")
            assert name.startswith("event: ") and data.startswith("data: "), block
            event = json.loads(data.removeprefix("data: "))
            assert event["type"] == name.removeprefix("event: ")
            events.append(event)
    return events


async def _stream(model: DevModel, client: httpx.AsyncClient, body: dict[str, Any]) -> str:
    """Post a streaming request and return the whole event stream."""
    async with client.stream("POST", f"{model.base_url}/messages", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream"
        return (await response.aread()).decode()


def _deltas(events: list[dict[str, Any]], kind: str, key: str) -> list[Any]:
    """Return the ``key`` of each content_block_delta of one delta type, in order."""
    return [
        e["delta"][key]
        for e in events
        if e["type"] == "content_block_delta" and e["delta"]["type"] == kind
    ]


async def test_streamed_text_and_thinking_follow_the_event_sequence(
    model: DevModel, client: httpx.AsyncClient
) -> None:
    """A thinking block (deltas, signature), a text block, message_delta and message_stop."""
    events = _events(await _stream(model, client, _body("hello there [[reasoning=2]]")))
    assert [(e["type"], e.get("index")) for e in events] == [
        ("message_start", None),
        ("ping", None),
        ("content_block_start", 0),
        *[("content_block_delta", 0)] * 3,
        ("content_block_stop", 0),
        ("content_block_start", 1),
        *[("content_block_delta", 1)] * 4,
        ("content_block_stop", 1),
        ("message_delta", None),
        ("message_stop", None),
    ]
    start = events[0]["message"]
    assert (start["role"], start["content"], start["stop_reason"]) == ("assistant", [], None)
    assert events[2]["content_block"] == {"type": "thinking", "thinking": "", "signature": ""}
    assert "".join(_deltas(events, "thinking_delta", "thinking")) == "Reading the"
    assert _deltas(events, "signature_delta", "signature") != [""]
    assert events[7]["content_block"] == {"type": "text", "text": ""}
    assert _deltas(events, "text_delta", "text") == ["You ", "said: ", "hello ", "there"]
    assert events[-2]["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}


async def test_non_streaming_returns_one_message(
    model: DevModel, client: httpx.AsyncClient
) -> None:
    """stream=false returns a message with a signed thinking block and a text block."""
    response = await client.post(f"{model.base_url}/messages", json=_body("ping", stream=False))
    payload = response.json()
    assert (payload["type"], payload["role"], payload["model"]) == (
        "message",
        "assistant",
        "dev-model",
    )
    thinking, text = payload["content"]
    assert thinking["type"] == "thinking"
    assert thinking["thinking"] == "Reading the message."
    assert thinking["signature"]
    assert text == {"type": "text", "text": "You said: ping"}
    assert payload["stop_reason"] == "end_turn"


async def test_tool_use_round_trip(model: DevModel, client: httpx.AsyncClient) -> None:
    """tool_use blocks stream their input as input_json_delta; tool_result blocks get the reply."""
    text = 'look [[tool=lookup args={"item": "a/b"}]] [[tool=other]] [[reasoning=0]]'
    events = _events(await _stream(model, client, _body(text, tools=TOOLS)))
    starts = [e for e in events if e["type"] == "content_block_start"]
    assert [s["content_block"] for s in starts] == [
        {"type": "tool_use", "id": "toolu_1_1", "name": "lookup", "input": {}},
        {"type": "tool_use", "id": "toolu_1_2", "name": "other", "input": {}},
    ]
    first = [
        e["delta"]["partial_json"]
        for e in events
        if e["type"] == "content_block_delta" and e["index"] == 0
    ]
    assert len(first) == 2
    assert json.loads("".join(first)) == {"item": "a/b"}
    assert events[-2]["delta"]["stop_reason"] == "tool_use"

    messages = [
        *_body(text)["messages"],
        {
            "role": "assistant",
            "content": [
                {"type": "tool_use", "id": "toolu_1_1", "name": "lookup", "input": {"item": "a/b"}},
                {"type": "tool_use", "id": "toolu_1_2", "name": "other", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1_1", "content": "42"},
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_1_2",
                    "content": [{"type": "text", "text": "ok"}],
                },
            ],
        },
    ]
    response = await client.post(
        f"{model.base_url}/messages", json=_body(text, stream=False, messages=messages)
    )
    payload = response.json()
    assert payload["content"] == [
        {"type": "text", "text": "Tool lookup returned: 42 Tool other returned: ok"}
    ]
    assert payload["stop_reason"] == "end_turn"


async def test_usage_splits_cached_input_and_counts_thinking(
    model: DevModel, client: httpx.AsyncClient
) -> None:
    """message_start carries input usage; message_delta the totals, cache reads apart."""
    events = _events(await _stream(model, client, _body("one two [[cached=3]] [[tokens=4]]")))
    # "You are a test." and the four words of the message: 8 prompt tokens, 3 of them cached.
    assert events[0]["message"]["usage"] == {
        "input_tokens": 5,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 3,
        "output_tokens": 0,
    }
    assert events[-2]["usage"] == {
        "input_tokens": 5,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 3,
        "output_tokens": 4 + 3,
        "output_tokens_details": {"thinking_tokens": 3},
    }
    response = await client.post(f"{model.base_url}/messages", json=_body("hi", stream=False))
    assert response.json()["usage"]["cache_read_input_tokens"] == 0


async def test_fail_returns_an_anthropic_error(model: DevModel, client: httpx.AsyncClient) -> None:
    """[[fail=CODE]] answers that status with Anthropic's error body, not a stream."""
    for status, error_type in (
        (500, "api_error"),
        (529, "overloaded_error"),
        (403, "permission_error"),
    ):
        response = await client.post(f"{model.base_url}/messages", json=_body(f"[[fail={status}]]"))
        assert response.status_code == status
        payload = response.json()
        assert payload["type"] == "error"
        assert payload["error"]["type"] == error_type
        assert f"fail={status}" in payload["error"]["message"]


async def test_rate_limit_refuses_then_answers(model: DevModel, client: httpx.AsyncClient) -> None:
    """[[rate_limit=2]] refuses twice with Retry-After in seconds, then streams."""
    body = _body("again [[rate_limit=2]] [[retry_after_ms=2500]]")
    for _ in range(2):
        response = await client.post(f"{model.base_url}/messages", json=body)
        assert response.status_code == 429
        assert response.headers["retry-after"] == "3"
        assert "retry-after-ms" not in response.headers
        assert response.json()["error"]["type"] == "rate_limit_error"
    events = _events(await _stream(model, client, body))
    assert events[-1]["type"] == "message_stop"


async def test_hang_after_streams_n_tokens_then_goes_silent(
    model: DevModel, client: httpx.AsyncClient
) -> None:
    """[[hang_after=1]] streams one text delta and then nothing; [[hang]] sends no headers."""
    url = f"{model.base_url}/messages"
    received: list[str] = []
    with pytest.raises(httpx.ReadTimeout):
        async with client.stream("POST", url, json=_body("[[hang_after=1]] [[tokens=5]]")) as r:
            async for chunk in r.aiter_text():
                received.append(chunk)
    events = _events("".join(received))
    assert _deltas(events, "text_delta", "text") == ["alpha "]
    assert events[-1]["type"] == "content_block_delta"
    with pytest.raises(httpx.ReadTimeout):
        await client.post(url, json=_body("[[hang]]"))


async def test_malformed_sends_a_frame_that_is_not_json(
    model: DevModel, client: httpx.AsyncClient
) -> None:
    """[[malformed]] sends one text delta, a delta frame that is not JSON, then the end."""
    raw = await _stream(model, client, _body("[[malformed]] [[reasoning=0]]"))
    blocks = [b for b in raw.split("\n\n") if b]
    broken = blocks.index("event: content_block_delta\ndata: {not json")
    assert _events("\n\n".join(blocks[:broken]))[-1]["delta"] == {
        "type": "text_delta",
        "text": "You ",
    }
    after = _events("\n\n".join(blocks[broken + 1 :]))
    assert [e["type"] for e in after] == ["content_block_stop", "message_delta", "message_stop"]


async def test_fail_after_sends_an_error_event(model: DevModel, client: httpx.AsyncClient) -> None:
    """[[fail_after=2]] streams two text deltas, then an error event, and stops there."""
    events = _events(await _stream(model, client, _body("[[fail_after=2]] [[tokens=5]]")))
    assert _deltas(events, "text_delta", "text") == ["alpha ", "bravo "]
    assert events[-1]["type"] == "error"
    assert events[-1]["error"]["type"] == "api_error"
    assert not [e for e in events if e["type"] == "message_stop"]


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"max_tokens": None}, "max_tokens"),
        ({"model": None}, "model"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "system", "content": "x"}]}, "messages.0.role"),
        ({"tools": [{"type": "function", "function": {"name": "lookup"}}]}, "tools.0.input_schema"),
        (
            {"messages": [{"role": "user", "content": [{"type": "tool_result", "content": "x"}]}]},
            "tool_use_id",
        ),
    ],
)
async def test_bad_requests_get_400_naming_the_field(
    model: DevModel, client: httpx.AsyncClient, change: dict[str, Any], named: str
) -> None:
    """A request the Messages API would refuse gets 400 invalid_request_error naming why."""
    body = {k: v for k, v in {**_body("hi"), **change}.items() if v is not None}
    response = await client.post(f"{model.base_url}/messages", json=body)
    assert response.status_code == 400
    payload = response.json()
    assert payload["type"] == "error"
    assert payload["error"]["type"] == "invalid_request_error"
    assert named in payload["error"]["message"]


THINKING = {"type": "enabled", "budget_tokens": 1024}


def _after_tool_use(first_block: dict[str, Any] | None) -> list[dict[str, Any]]:
    """A conversation whose last assistant turn called a tool, led by ``first_block``."""
    blocks = [{"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {}}]
    return [
        {"role": "user", "content": "look"},
        {"role": "assistant", "content": ([first_block] if first_block else []) + blocks},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "x"}],
        },
    ]


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"thinking": {"type": "enabled", "budget_tokens": 512}}, "budget_tokens"),
        (
            {"max_tokens": 1024, "thinking": THINKING},
            "`max_tokens` must be greater than `thinking.budget_tokens`",
        ),
        (
            {"max_tokens": 2048, "thinking": THINKING, "messages": _after_tool_use(None)},
            "Expected `thinking` or `redacted_thinking`, but found `tool_use`",
        ),
        (
            {
                "max_tokens": 2048,
                "thinking": THINKING,
                "messages": _after_tool_use(
                    {"type": "thinking", "thinking": "hm", "signature": "forged"}
                ),
            },
            "Invalid `signature` in `thinking` block",
        ),
    ],
)
async def test_extended_thinking_is_refused_as_anthropic_refuses_it(
    model: DevModel, client: httpx.AsyncClient, change: dict[str, Any], named: str
) -> None:
    """A bad budget, or a tool-use turn without its signed thinking block, gets 400."""
    response = await client.post(f"{model.base_url}/messages", json={**_body("hi"), **change})
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert named in response.json()["error"]["message"]


async def test_anthropic_version_header_is_required(model: DevModel) -> None:
    """A request without anthropic-version gets 400, as the API answers it."""
    async with httpx.AsyncClient() as http:
        response = await http.post(f"{model.base_url}/messages", json=_body("hi"))
    assert response.status_code == 400
    assert "anthropic-version" in response.json()["error"]["message"]


async def test_system_blocks_and_block_content_are_read(
    model: DevModel, client: httpx.AsyncClient
) -> None:
    """System blocks count as prompt; the reply answers the last user message's text."""
    body = _body(
        "",
        stream=False,
        system=[{"type": "text", "text": "Be brief."}],
        messages=[
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": [{"type": "text", "text": "ok"}]},
            {"role": "user", "content": [{"type": "text", "text": "second [[reasoning=0]]"}]},
        ],
    )
    payload = (await client.post(f"{model.base_url}/messages", json=body)).json()
    assert payload["content"] == [{"type": "text", "text": "You said: second"}]
    assert payload["usage"]["input_tokens"] == 6


async def test_key_and_models_answer_in_the_anthropic_shape() -> None:
    """x-api-key is checked (401), unserved models get 404, and the model list is Anthropic's."""
    dev = DevModel(models=["claude-dev"], api_key="sk-ant-right")
    await dev.start()
    try:
        async with httpx.AsyncClient(headers={"anthropic-version": "2023-06-01"}) as http:
            url = f"{dev.base_url}/messages"
            body = {**_body("hi", stream=False), "model": "claude-dev"}
            wrong = await http.post(url, json=body, headers={"x-api-key": "sk-ant-wrong"})
            assert wrong.status_code == 401
            assert wrong.json()["error"]["type"] == "authentication_error"
            assert "sk-ant" not in wrong.text
            key = {"x-api-key": "sk-ant-right"}
            unknown = await http.post(url, json={**body, "model": "claude-huge"}, headers=key)
            assert unknown.status_code == 404
            assert unknown.json()["error"]["type"] == "not_found_error"
            assert (await http.post(url, json=body, headers=key)).status_code == 200

            listed = (await http.get(f"{dev.base_url}/models", headers=key)).json()
            assert listed == {
                "data": [
                    {
                        "type": "model",
                        "id": "claude-dev",
                        "display_name": "claude-dev",
                        "created_at": "2025-01-01T00:00:00Z",
                    }
                ],
                "has_more": False,
                "first_id": "claude-dev",
                "last_id": "claude-dev",
            }
            one = await http.get(f"{dev.base_url}/models/claude-huge", headers=key)
            assert one.status_code == 404
            assert one.json()["error"]["type"] == "not_found_error"
            no_key = await http.get(f"{dev.base_url}/models")
            assert no_key.status_code == 401
            assert no_key.json()["type"] == "error"
    finally:
        await dev.stop()
