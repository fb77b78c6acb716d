"""Prove the dev model's OpenAI-compatible behaviour over real HTTP."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from devtools.devmodel import DevModel


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


def _body(text: str, *, stream: bool = True, usage: bool = False) -> dict[str, Any]:
    """Build a chat request whose last user message is ``text``."""
    body: dict[str, Any] = {
        "model": "dev-model",
        "messages": [
            {"role": "system", "content": "You are a test."},
            {"role": "user", "content": text},
        ],
        "stream": stream,
    }
    if usage:
        body["stream_options"] = {"include_usage": True}
    return body


async def _stream_lines(
    client: httpx.AsyncClient, model: DevModel, body: dict[str, Any], out: list[str]
) -> None:
    """Append each SSE ``data:`` payload to ``out`` as it arrives."""
    url = f"{model.base_url}/chat/completions"
    async with client.stream("POST", url, json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream"
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                out.append(line.removeprefix("data: "))


async def _chunks(
    client: httpx.AsyncClient, model: DevModel, body: dict[str, Any]
) -> list[dict[str, Any]]:
    """Stream a completion and return its parsed chunks, checking it ends with [DONE]."""
    lines: list[str] = []
    await _stream_lines(client, model, body, lines)
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


def _deltas(chunks: list[dict[str, Any]], key: str) -> list[str]:
    """Return the ``key`` values of the chunks whose delta has one, in order."""
    return [c["choices"][0]["delta"][key] for c in chunks if key in _delta(c)]


def _delta(chunk: dict[str, Any]) -> dict[str, Any]:
    """Return a chunk's delta, empty for the usage chunk."""
    choices = chunk["choices"]
    return dict(choices[0]["delta"]) if choices else {}


async def test_default_reply_echoes_the_user_text(
    model: DevModel, client: httpx.AsyncClient
) -> None:
    """Joining the content deltas gives exactly "You said: <user text>"."""
    chunks = await _chunks(client, model, _body("hello dev   model"))
    assert "".join(_deltas(chunks, "content")) == "You said: hello dev model"
    assert _delta(chunks[0]) == {"role": "assistant"}
    assert chunks[0]["object"] == "chat.completion.chunk"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


async def test_tokens_directive_sets_the_number_of_content_deltas(
    model: DevModel, client: httpx.AsyncClient
) -> None:
    """[[tokens=N]] yields exactly N content deltas."""
    chunks = await _chunks(client, model, _body("count [[tokens=7]]"))
    content = _deltas(chunks, "content")
    assert len(content) == 7
    assert "".join(content) == "alpha bravo charlie delta echo foxtrot golf"


async def test_reasoning_deltas_come_before_content(
    model: DevModel, client: httpx.AsyncClient
) -> None:
    """Reasoning deltas (3 by default, N with [[reasoning=N]]) all precede the content."""
    kinds = [next(iter(_delta(c)), "") for c in await _chunks(client, model, _body("hi"))]
    assert kinds[:6] == ["role", *["reasoning_content"] * 3, "content", "content"]
    assert "reasoning_content" not in kinds[kinds.index("content") :]

    chunks = await _chunks(client, model, _body("hi [[reasoning=5]]"))
    assert len(_deltas(chunks, "reasoning_content")) == 5
    chunks = await _chunks(client, model, _body("hi [[reasoning=0]]"))
    assert _deltas(chunks, "reasoning_content") == []


async def test_usage_chunk_is_sent_only_when_requested(
    model: DevModel, client: httpx.AsyncClient
) -> None:
    """include_usage adds a final chunk with empty choices and token counts."""
    chunks = await _chunks(client, model, _body("one two [[tokens=4]]", usage=True))
    assert chunks[-1]["choices"] == []
    usage = chunks[-1]["usage"]
    assert usage["completion_tokens"] == 4 + 3
    assert usage["completion_tokens_details"] == {"reasoning_tokens": 3}
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["prompt_tokens"] > 0

    chunks = await _chunks(client, model, _body("one two [[tokens=4]]"))
    assert all("usage" not in c for c in chunks)


async def test_fail_directive_returns_an_openai_error(
    model: DevModel, client: httpx.AsyncClient
) -> None:
    """[[fail=CODE]] answers that HTTP status with an OpenAI-style error body, not a stream."""
    response = await client.post(f"{model.base_url}/chat/completions", json=_body("[[fail=500]]"))
    assert response.status_code == 500
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["type"] == "server_error"
    assert "message" in error
    assert "code" in error

    response = await client.post(f"{model.base_url}/chat/completions", json=_body("[[fail=429]]"))
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "rate_limit_exceeded"


async def test_malformed_directive_sends_an_unparsable_data_line(
    model: DevModel, client: httpx.AsyncClient
) -> None:
    """[[malformed]] sends one token, then a data line that is not JSON, then [DONE]."""
    lines: list[str] = []
    await _stream_lines(client, model, _body("[[malformed]] [[reasoning=0]]"), lines)
    assert lines[-1] == "[DONE]"
    assert _delta(json.loads(lines[0])) == {"role": "assistant"}
    assert _delta(json.loads(lines[1])) == {"content": "You "}
    with pytest.raises(json.JSONDecodeError):
        json.loads(lines[2])
    assert len(lines) == 4


async def test_hang_directive_never_sends_headers(
    model: DevModel, client: httpx.AsyncClient
) -> None:
    """[[hang]] leaves the request without a response until the client times out."""
    with pytest.raises(httpx.ReadTimeout):
        await client.post(f"{model.base_url}/chat/completions", json=_body("[[hang]]"))


async def test_hang_after_streams_n_tokens_then_goes_silent(
    model: DevModel, client: httpx.AsyncClient
) -> None:
    """[[hang_after=2]] streams two content tokens and then nothing, not even the end."""
    lines: list[str] = []
    with pytest.raises(httpx.ReadTimeout):
        await _stream_lines(client, model, _body("[[hang_after=2]] [[tokens=9]]"), lines)
    content = [d["content"] for d in map(_delta, map(json.loads, lines)) if "content" in d]
    assert content == ["alpha ", "bravo "]
    assert "[DONE]" not in lines


async def test_directives_are_stripped_from_the_text(
    model: DevModel, client: httpx.AsyncClient
) -> None:
    """Directives do not appear in the text the model echoes back."""
    body = _body("hello [[reasoning=1]] there [[delay_ms=1]]")
    chunks = await _chunks(client, model, body)
    assert "".join(_deltas(chunks, "content")) == "You said: hello there"


async def test_requests_records_the_bodies_in_order(
    model: DevModel, client: httpx.AsyncClient
) -> None:
    """DevModel.requests holds each JSON body received, in order."""
    first, second = _body("first", usage=True), _body("second [[tokens=1]]", stream=False)
    await _chunks(client, model, first)
    response = await client.post(f"{model.base_url}/chat/completions", json=second)
    assert response.status_code == 200
    assert model.requests == [first, second]


async def test_non_streaming_returns_one_completion(
    model: DevModel, client: httpx.AsyncClient
) -> None:
    """stream=false returns a chat.completion with content, reasoning and usage."""
    response = await client.post(
        f"{model.base_url}/chat/completions", json=_body("ping", stream=False)
    )
    payload = response.json()
    assert payload["object"] == "chat.completion"
    message = payload["choices"][0]["message"]
    assert message["content"] == "You said: ping"
    assert message["reasoning_content"] == "Reading the message."
    assert payload["usage"]["completion_tokens"] == 3 + 3


async def test_bad_json_body_is_rejected(model: DevModel, client: httpx.AsyncClient) -> None:
    """A body that is not JSON gets HTTP 400 with an OpenAI-style error."""
    response = await client.post(f"{model.base_url}/chat/completions", content=b"{nope")
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


async def test_unknown_directive_is_rejected(model: DevModel, client: httpx.AsyncClient) -> None:
    """A misspelt directive gets HTTP 400 naming it instead of being silently ignored."""
    response = await client.post(f"{model.base_url}/chat/completions", json=_body("[[tokenz=3]]"))
    assert response.status_code == 400
    assert "tokenz" in response.json()["error"]["message"]


async def test_hang_after_and_fail_after_exclude_each_other(
    model: DevModel, client: httpx.AsyncClient
) -> None:
    """Asking to hang and to fail after N tokens at once is a 400, not a guess at the order."""
    body = _body("[[hang_after=1]] [[fail_after=2]]")
    response = await client.post(f"{model.base_url}/chat/completions", json=body)
    assert response.status_code == 400
    assert "exclude each other" in response.json()["error"]["message"]


async def test_models_and_healthz_answer(model: DevModel, client: httpx.AsyncClient) -> None:
    """GET /v1/models lists the dev model and GET /healthz reports ok."""
    models = (await client.get(f"{model.base_url}/models")).json()
    assert [m["id"] for m in models["data"]] == ["dev-model"]
    health = await client.get(model.base_url.removesuffix("/v1") + "/healthz")
    assert health.status_code == 200


async def test_client_disconnect_mid_stream_logs_no_error(
    model: DevModel, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    """Closing a stream early leaves no error or traceback in the server's logs."""
    url = f"{model.base_url}/chat/completions"
    with caplog.at_level(logging.WARNING):
        async with client.stream("POST", url, json=_body("[[tokens=500]]")) as response:
            async for _ in response.aiter_lines():
                break
        # stop() waits for every connection handler, so the server side is finished here.
        await model.stop()
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


async def test_stop_ends_a_hanging_stream_promptly(
    model: DevModel, client: httpx.AsyncClient
) -> None:
    """stop() cuts off a stream that hangs instead of waiting for it."""
    url = f"{model.base_url}/chat/completions"
    request = client.build_request("POST", url, json=_body("[[hang_after=0]]"))
    response = await client.send(request, stream=True)
    try:
        async with asyncio.timeout(2):
            await model.stop()
        with pytest.raises(httpx.RemoteProtocolError):
            await response.aread()
    finally:
        await response.aclose()


def _tool_round_trip(body: dict[str, Any], result: str) -> dict[str, Any]:
    """Extend a chat request with a call of the tool ``lookup`` (id call_1_1) and its result."""
    call = {"id": "call_1_1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}
    messages = [
        *body["messages"],
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1_1", "content": result},
    ]
    return {**body, "messages": messages}


async def test_tool_call_round_trip(model: DevModel, client: httpx.AsyncClient) -> None:
    """[[tool=...]] streams a tool call; the conversation with its result gets the reply."""
    body = _body('find it [[tool=lookup args={"item": "a/b"}]] [[reasoning=0]]')
    chunks = await _chunks(client, model, body)
    fragments = [f for c in chunks for f in _delta(c).get("tool_calls", [])]
    assert fragments[0] == {
        "index": 0,
        "id": "call_1_1",
        "type": "function",
        "function": {"name": "lookup"},
    }
    arguments = "".join(f["function"].get("arguments", "") for f in fragments)
    assert json.loads(arguments) == {"item": "a/b"}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"

    chunks = await _chunks(client, model, _tool_round_trip(body, "42"))
    assert "".join(_deltas(chunks, "content")) == "Tool lookup returned: 42"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


async def test_cached_directive_reports_cached_prompt_tokens(
    model: DevModel, client: httpx.AsyncClient
) -> None:
    """[[cached=N]] adds prompt_tokens_details.cached_tokens; N beyond the prompt is a 400."""
    chunks = await _chunks(client, model, _body("one two [[cached=3]]", usage=True))
    usage = chunks[-1]["usage"]
    assert usage["prompt_tokens_details"] == {"cached_tokens": 3}
    assert usage["prompt_tokens"] == 7  # "You are a test." and "one two [[cached=3]]"

    response = await client.post(
        f"{model.base_url}/chat/completions", json=_body("[[cached=9]]", stream=False)
    )
    assert response.status_code == 400
    assert "cached=9" in response.json()["error"]["message"]


async def test_rate_limit_refuses_n_times_then_answers(
    model: DevModel, client: httpx.AsyncClient
) -> None:
    """[[rate_limit=2]] answers the same conversation 429 twice, with Retry-After, then 200."""
    url = f"{model.base_url}/chat/completions"
    body = _body("slow down [[rate_limit=2]] [[retry_after_ms=1500]]", stream=False)
    for _ in range(2):
        response = await client.post(url, json=body)
        assert response.status_code == 429
        assert response.headers["retry-after"] == "2"
        assert response.headers["retry-after-ms"] == "1500"
        assert response.json()["error"]["code"] == "rate_limit_exceeded"
    response = await client.post(url, json=body)
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "You said: slow down"

    # Another conversation has a count of its own.
    response = await client.post(url, json=_body("other [[rate_limit=1]]", stream=False))
    assert response.status_code == 429
    assert response.headers["retry-after"] == "1"


async def test_fail_429_carries_retry_after(model: DevModel, client: httpx.AsyncClient) -> None:
    """[[fail=429]] refuses every time, each refusal saying when to retry."""
    body = _body("[[fail=429]] [[retry_after_ms=0]]")
    for _ in range(2):
        response = await client.post(f"{model.base_url}/chat/completions", json=body)
        assert response.status_code == 429
        assert response.headers["retry-after"] == "0"


async def test_fail_after_sends_an_error_in_the_stream(
    model: DevModel, client: httpx.AsyncClient
) -> None:
    """[[fail_after=2]] streams two tokens, then an error object, and never [DONE]."""
    lines: list[str] = []
    await _stream_lines(client, model, _body("[[fail_after=2]] [[tokens=5]]"), lines)
    payloads = [json.loads(line) for line in lines]
    content = [d["content"] for d in map(_delta, payloads[:-1]) if "content" in d]
    assert content == ["alpha ", "bravo "]
    assert payloads[-1]["error"]["type"] == "server_error"
    assert "fail_after=2" in payloads[-1]["error"]["message"]

    response = await client.post(
        f"{model.base_url}/chat/completions", json=_body("[[fail_after=2]]", stream=False)
    )
    assert response.status_code == 500
    assert response.json()["error"]["type"] == "server_error"


async def test_api_key_is_required_when_configured(client: httpx.AsyncClient) -> None:
    """With api_key set, a missing or wrong bearer token gets 401 invalid_api_key."""
    dev = DevModel(api_key="sk-dev-right")
    await dev.start()
    try:
        url = f"{dev.base_url}/chat/completions"
        wrong_keys: list[dict[str, Any]] = [
            {},
            {"Authorization": "Bearer sk-dev-wrong"},
            {"Authorization": "Bearer clé".encode()},
        ]
        for headers in wrong_keys:
            response = await client.post(url, json=_body("hi", stream=False), headers=headers)
            assert response.status_code == 401
            assert response.json()["error"]["code"] == "invalid_api_key"
            assert "sk-dev" not in response.text
            models = await client.get(f"{dev.base_url}/models", headers=headers)
            assert models.status_code == 401
        good = {"Authorization": "Bearer sk-dev-right"}
        response = await client.post(url, json=_body("hi", stream=False), headers=good)
        assert response.status_code == 200
        assert (await client.get(f"{dev.base_url}/models", headers=good)).status_code == 200
        assert dev.requests == [_body("hi", stream=False)]
    finally:
        await dev.stop()


async def test_only_listed_models_are_served(client: httpx.AsyncClient) -> None:
    """With models set, another model name gets 404 model_not_found, and the list shows them."""
    dev = DevModel(models=["small", "org/large"])
    await dev.start()
    try:
        url = f"{dev.base_url}/chat/completions"
        response = await client.post(url, json={**_body("hi", stream=False), "model": "huge"})
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "model_not_found"
        assert "huge" in response.json()["error"]["message"]
        response = await client.post(url, json={**_body("hi", stream=False), "model": "org/large"})
        assert response.status_code == 200
        assert response.json()["model"] == "org/large"

        listed = (await client.get(f"{dev.base_url}/models")).json()
        assert [m["id"] for m in listed["data"]] == ["small", "org/large"]
        one = await client.get(f"{dev.base_url}/models/org/large")
        assert one.json() == {
            "id": "org/large",
            "object": "model",
            "created": 0,
            "owned_by": "agentplatform",
        }
        missing = await client.get(f"{dev.base_url}/models/huge")
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "model_not_found"
    finally:
        await dev.stop()


async def test_command_line_serves_the_listed_models_with_the_key(
    client: httpx.AsyncClient,
) -> None:
    """The command line serves only its --model names, to holders of AP_DEVMODEL_API_KEY."""
    env = {**os.environ, "AP_DEVMODEL_API_KEY": "sk-dev-cli"}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "devtools.devmodel", "--port", "0", "--model", "served"),
        env=env,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stderr is not None
        async with asyncio.timeout(20):
            line = (await process.stderr.readline()).decode()
        base_url = line.rsplit(" ", 1)[-1].strip()
        assert base_url.startswith("http://127.0.0.1:")
        url = f"{base_url}/chat/completions"
        key = {"Authorization": "Bearer sk-dev-cli"}
        wrong_key = await client.post(url, json=_body("hi", stream=False))
        assert wrong_key.status_code == 401
        other = await client.post(url, json=_body("hi", stream=False), headers=key)
        assert other.status_code == 404
        served = {**_body("hi", stream=False), "model": "served"}
        assert (await client.post(url, json=served, headers=key)).status_code == 200
    finally:
        process.terminate()
        assert await process.wait() == 0
