"""Prove the dev model's OpenAI-compatible behaviour over real HTTP."""

from __future__ import annotations

import asyncio
import json
import logging
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
