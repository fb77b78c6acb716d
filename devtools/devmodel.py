"""Serve a deterministic, OpenAI-compatible chat model for development and tests.

This is not an LLM. It answers ``POST /v1/chat/completions`` with text derived from the last
user message, so tests and ``make run`` get real HTTP streaming without a model provider.
It also serves ``GET /v1/models`` and ``GET /healthz``.

Directives, written in the last user message and stripped from the text the model reads:

``[[tokens=N]]``
    Reply with exactly N content tokens (``alpha bravo charlie ...``, cycling through the
    NATO alphabet). Without it the reply is ``You said: <user text>``, one token per word.
``[[delay_ms=N]]``
    Wait N ms before each token, reasoning and content alike.
``[[reasoning=N]]``
    Emit N reasoning tokens (``Reading the message.`` cycling) before the content, as
    ``delta.reasoning_content``. Default 3; ``[[reasoning=0]]`` disables them.
``[[fail=CODE]]``
    Answer HTTP CODE (400-599) with an OpenAI-style JSON error body, never a stream.
``[[hang]]``
    Accept the request and never send response headers.
``[[hang_after=N]]``
    Stream N content tokens, then go silent without ending the stream (a non-streaming
    request hangs like ``[[hang]]``).
``[[malformed]]``
    After the first content token send ``data: {not json`` and then ``data: [DONE]``
    (a non-streaming request gets the body ``{not json``).
``[[tool=NAME args={"a": 1}]]``
    Call the tool NAME with these arguments (a JSON object without ``]]``; default ``{}``)
    instead of replying: the stream carries ``delta.tool_calls`` and ends with
    ``finish_reason: "tool_calls"``. Several such directives make parallel calls. Once the
    conversation holds the tool results, the reply is ``Tool NAME returned: RESULT`` for
    each call of the last round.
``[[tool_steps=N]]``
    Repeat the tool round N times before replying (default 1), to exercise step limits.

Tokens keep their trailing whitespace, so joining the content deltas gives the reply exactly.
Usage counts whitespace-separated words of all messages as prompt tokens; completion tokens
are content plus reasoning tokens. Unknown directives and bad values get HTTP 400.

Run it with ``python -m devtools.devmodel --host 127.0.0.1 --port 8089``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import re
import signal
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

logger = logging.getLogger(__name__)

MODEL_ID = "dev-model"

_CONTENT_WORDS = (
    "alpha",
    "bravo",
    "charlie",
    "delta",
    "echo",
    "foxtrot",
    "golf",
    "hotel",
    "india",
    "juliett",
    "kilo",
    "lima",
    "mike",
    "november",
    "oscar",
    "papa",
    "quebec",
    "romeo",
    "sierra",
    "tango",
    "uniform",
    "victor",
    "whiskey",
    "xray",
    "yankee",
    "zulu",
)
_REASONING_WORDS = ("Reading", "the", "message.")
_DEFAULT_REASONING_TOKENS = 3
_TOOL_DIRECTIVE = re.compile(r"\[\[\s*tool\s*=\s*([A-Za-z0-9_-]+)(?:\s+args\s*=\s*(.*?))?\s*\]\]")
_DIRECTIVE = re.compile(r"\[\[\s*([A-Za-z_]+)\s*(?:=\s*([^\]]*?)\s*)?\]\]")
_WORD_TOKEN = re.compile(r"\S+\s*")
_INT_DIRECTIVES = frozenset({"tokens", "delay_ms", "reasoning", "fail", "hang_after", "tool_steps"})
_FLAG_DIRECTIVES = frozenset({"hang", "malformed"})
# Agent conversations resend the whole history; aiohttp's 1 MiB default is too small.
_MAX_BODY_BYTES = 64 * 1024 * 1024
_ERROR_TYPES = {
    400: ("invalid_request_error", None),
    401: ("authentication_error", "invalid_api_key"),
    403: ("permission_error", None),
    404: ("not_found_error", "model_not_found"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
}
_DONE = b"data: [DONE]\n\n"


class BadRequestError(ValueError):
    """Report a request (body or directive) that the dev model answers with HTTP 400."""


@dataclass(frozen=True)
class Plan:
    """Describe the reply a request's directives call for."""

    content: list[str]
    reasoning: list[str]
    delay_s: float = 0.0
    fail: int | None = None
    hang: bool = False
    hang_after: int | None = None
    malformed: bool = False
    # (call id, tool name, arguments JSON) of the tool calls to make instead of replying.
    tool_calls: tuple[tuple[str, str, str], ...] = ()


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


def parse_directives(text: str) -> tuple[str, dict[str, int | None]]:
    """Split ``text`` into the text without directives and the directives found in it."""
    directives: dict[str, int | None] = {}
    for match in _DIRECTIVE.finditer(text):
        name, raw = match.group(1).lower(), match.group(2)
        if name in _FLAG_DIRECTIVES:
            if raw is not None:
                raise BadRequestError(f"directive [[{name}]] takes no value")
            directives[name] = None
        elif name in _INT_DIRECTIVES:
            if raw is None or not raw.isdigit():
                raise BadRequestError(f"directive [[{name}=N]] needs a non-negative integer")
            directives[name] = int(raw)
        else:
            raise BadRequestError(f"unknown directive [[{match.group(1)}]]")
    stripped = " ".join(_DIRECTIVE.sub(" ", text).split())
    return stripped, directives


def numbered_tokens(count: int, words: tuple[str, ...] | list[str]) -> list[str]:
    """Return ``count`` tokens cycling through ``words``, each but the last ending in a space."""
    tokens = [f"{word} " for word in itertools.islice(itertools.cycle(words), count)]
    if tokens:
        tokens[-1] = tokens[-1].rstrip()
    return tokens


def tool_directives(text: str) -> tuple[str, list[tuple[str, str]]]:
    """Split ``text`` into the text without tool directives and the (name, arguments) found."""
    calls = []
    for match in _TOOL_DIRECTIVE.finditer(text):
        raw = match.group(2) or "{}"
        try:
            arguments = json.loads(raw)
        except ValueError:
            raise BadRequestError(f"[[tool=...]] has arguments that are not JSON: {raw}") from None
        if not isinstance(arguments, dict):
            raise BadRequestError("[[tool=... args=...]] needs a JSON object")
        calls.append((match.group(1), json.dumps(arguments)))
    return _TOOL_DIRECTIVE.sub(" ", text), calls


def _tool_round(messages: list[Any], after: int) -> tuple[int, list[str]]:
    """Count the tool rounds after the user message, and describe the last round's results."""
    rounds = 0
    names: dict[str, str] = {}
    results: list[str] = []
    for message in messages[after + 1 :]:
        if not isinstance(message, dict):
            continue
        if message.get("role") == "assistant" and message.get("tool_calls"):
            rounds += 1
            results = []
            for call in message["tool_calls"]:
                names[str(call.get("id"))] = str((call.get("function") or {}).get("name"))
        elif message.get("role") == "tool":
            name = names.get(str(message.get("tool_call_id")), "?")
            results.append(f"Tool {name} returned: {message_text(message.get('content'))}")
    return rounds, results


def plan_reply(messages: list[Any]) -> Plan:
    """Work out the reply to a conversation from the directives in its last user message."""
    last_index, last_user = next(
        (
            (i, m)
            for i, m in reversed(list(enumerate(messages)))
            if isinstance(m, dict) and m.get("role") == "user"
        ),
        (len(messages), {}),
    )
    text, calls = tool_directives(message_text(last_user.get("content")))
    text, directives = parse_directives(text)
    rounds, results = _tool_round(messages, last_index)
    steps = directives.get("tool_steps")
    tool_calls: tuple[tuple[str, str, str], ...] = ()
    if calls and rounds < (1 if steps is None else steps):
        tool_calls = tuple(
            (f"call_{rounds + 1}_{i + 1}", name, arguments)
            for i, (name, arguments) in enumerate(calls)
        )
    token_count = directives.get("tokens")
    if tool_calls:
        content: list[str] = []
    elif results:
        content = _WORD_TOKEN.findall(" ".join(results))
    elif token_count is None:
        content = _WORD_TOKEN.findall(f"You said: {text}")
    else:
        content = numbered_tokens(token_count, _CONTENT_WORDS)
    reasoning_count = directives.get("reasoning", _DEFAULT_REASONING_TOKENS)
    fail = directives.get("fail")
    if fail is not None and not 400 <= fail <= 599:
        raise BadRequestError("directive [[fail=CODE]] needs an HTTP error code (400-599)")
    return Plan(
        content=content,
        reasoning=numbered_tokens(reasoning_count or 0, _REASONING_WORDS),
        delay_s=(directives.get("delay_ms") or 0) / 1000,
        fail=fail,
        hang="hang" in directives,
        hang_after=directives.get("hang_after"),
        malformed="malformed" in directives,
        tool_calls=tool_calls,
    )


def _load_body(raw: bytes) -> dict[str, Any]:
    """Decode a request body, which must be a JSON object."""
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise BadRequestError(f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequestError("request body must be a JSON object")
    return body


def _plan_request(body: dict[str, Any]) -> tuple[list[Any], Plan]:
    """Return a request's messages and the reply they call for."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequestError("'messages' must be a non-empty list")
    return messages, plan_reply(messages)


def error_body(status: int, message: str) -> dict[str, Any]:
    """Build an OpenAI-style error body for an HTTP status."""
    error_type, code = _ERROR_TYPES.get(
        status, ("server_error" if status >= 500 else "invalid_request_error", None)
    )
    return {"error": {"message": message, "type": error_type, "code": code}}


def _error_response(status: int, message: str) -> web.Response:
    """Build a JSON error response for an HTTP status."""
    return web.json_response(error_body(status, message), status=status)


def _usage(messages: list[Any], plan: Plan) -> dict[str, Any]:
    """Count tokens deterministically: words of all messages, tokens of the reply."""
    prompt = sum(
        len(message_text(m.get("content")).split()) for m in messages if isinstance(m, dict)
    )
    completion = len(plan.content) + len(plan.reasoning)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "completion_tokens_details": {"reasoning_tokens": len(plan.reasoning)},
    }


def _sse(payload: dict[str, Any]) -> bytes:
    """Encode one server-sent event carrying ``payload`` as JSON."""
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


class DevModel:
    """Run the dev model's HTTP server inside the current event loop."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Configure the address; port 0 picks a free port at ``start``."""
        self.host = host
        self.port = port
        self.requests: list[dict[str, Any]] = []
        self._runner: web.AppRunner | None = None
        self._base_url: str | None = None
        self._inflight: set[asyncio.Task[Any]] = set()
        self._ids = itertools.count(1)

    @property
    def base_url(self) -> str:
        """Return the OpenAI base URL, e.g. ``http://127.0.0.1:43123/v1``."""
        if self._base_url is None:
            raise RuntimeError("the dev model is not running")
        return self._base_url

    async def start(self) -> str:
        """Start listening and return the base URL."""
        if self._runner is not None:
            raise RuntimeError("the dev model is already running")
        app = web.Application(client_max_size=_MAX_BODY_BYTES)
        app.router.add_post("/v1/chat/completions", self._chat_completions)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/healthz", self._healthz)
        # handler_cancellation ends a handler when its client disconnects, so hanging and
        # streaming requests do not outlive their callers.
        runner = web.AppRunner(
            app, handler_cancellation=True, access_log=None, shutdown_timeout=1.0
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self.port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        host, port = runner.addresses[0][:2]
        self.port = port
        host_part = f"[{host}]" if ":" in host else host
        self._base_url = f"http://{host_part}:{port}/v1"
        return self._base_url

    async def stop(self) -> None:
        """Stop the server, cutting off hanging and streaming requests; idempotent."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        # aiohttp's graceful shutdown would wait for [[hang]] requests until its timeout.
        for task in list(self._inflight):
            task.cancel()
        await runner.cleanup()
        self._base_url = None

    async def _healthz(self, request: web.Request) -> web.Response:
        """Report that the server is up."""
        return web.json_response({"status": "ok"})

    async def _models(self, request: web.Request) -> web.Response:
        """List the one model this server offers."""
        model = {"id": MODEL_ID, "object": "model", "created": 0, "owned_by": "agentplatform"}
        return web.json_response({"object": "list", "data": [model]})

    async def _chat_completions(self, request: web.Request) -> web.StreamResponse:
        """Answer a chat completion, tracked so that ``stop`` can cut it off."""
        task = asyncio.current_task()
        assert task is not None, "aiohttp runs every handler in a task"
        self._inflight.add(task)
        try:
            return await self._complete(request)
        finally:
            self._inflight.discard(task)

    async def _complete(self, request: web.Request) -> web.StreamResponse:
        """Validate the request, record it and answer as its directives say."""
        try:
            body = _load_body(await request.read())
            self.requests.append(body)
            messages, plan = _plan_request(body)
        except BadRequestError as exc:
            return _error_response(400, str(exc))

        if plan.fail is not None:
            return _error_response(plan.fail, f"dev model failure requested ([[fail={plan.fail}]])")
        if plan.hang or (plan.hang_after is not None and not body.get("stream")):
            await _forever()
        model = str(body.get("model") or MODEL_ID)
        completion_id = f"chatcmpl-dev-{next(self._ids):08d}"
        if body.get("stream"):
            options = body.get("stream_options")
            include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
            usage = _usage(messages, plan) if include_usage else None
            return await _stream(request, plan, model, completion_id, usage)
        return await _respond(plan, model, completion_id, _usage(messages, plan))


async def _forever() -> None:
    """Wait until cancelled by a client disconnect or ``DevModel.stop``."""
    await asyncio.get_running_loop().create_future()


async def _respond(
    plan: Plan, model: str, completion_id: str, usage: dict[str, Any]
) -> web.Response:
    """Answer a non-streaming request with one ``chat.completion`` object."""
    if plan.delay_s:
        await asyncio.sleep(plan.delay_s * (len(plan.reasoning) + len(plan.content)))
    if plan.malformed:
        return web.Response(text="{not json", content_type="application/json")
    message: dict[str, Any] = {"role": "assistant", "content": "".join(plan.content)}
    if plan.reasoning:
        message["reasoning_content"] = "".join(plan.reasoning)
    if plan.tool_calls:
        message["tool_calls"] = [
            {"id": i, "type": "function", "function": {"name": n, "arguments": a}}
            for i, n, a in plan.tool_calls
        ]
    return web.json_response(
        {
            "id": completion_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": "tool_calls" if plan.tool_calls else "stop",
                }
            ],
            "usage": usage,
        }
    )


async def _stream(
    request: web.Request,
    plan: Plan,
    model: str,
    completion_id: str,
    usage: dict[str, Any] | None,
) -> web.StreamResponse:
    """Answer a streaming request with ``chat.completion.chunk`` server-sent events."""
    envelope = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
    }
    # Serialise the envelope once and splice each token in: the benchmark pushes hundreds of
    # requests a second through here, and a full json.dumps per token is the main cost.
    template = json.dumps(
        {**envelope, "choices": [{"index": 0, "delta": 0, "finish_reason": None}]},
        separators=(",", ":"),
    )
    head, tail = template.split('"delta":0', 1)
    prefix = f'data: {head}"delta":'.encode()
    suffix = f"{tail}\n\n".encode()

    def delta(key: str, token: str) -> bytes:
        """Encode a chunk whose delta is ``{key: token}``."""
        return b'%s{"%s":%s}%s' % (prefix, key.encode(), json.dumps(token).encode(), suffix)

    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    try:
        await response.write(delta("role", "assistant"))
        for token in plan.reasoning:
            if plan.delay_s:
                await asyncio.sleep(plan.delay_s)
            await response.write(delta("reasoning_content", token))
        if plan.malformed and not plan.content:
            await response.write(b"data: {not json\n\n" + _DONE)
            return response
        for sent, token in enumerate(plan.content):
            if sent == plan.hang_after:
                await _forever()
            if plan.delay_s:
                await asyncio.sleep(plan.delay_s)
            await response.write(delta("content", token))
            if plan.malformed:
                await response.write(b"data: {not json\n\n" + _DONE)
                return response
        if plan.hang_after is not None:
            await _forever()
        for index, (call_id, name, arguments) in enumerate(plan.tool_calls):
            await response.write(_tool_call_chunks(envelope, index, call_id, name, arguments))
        reason = "tool_calls" if plan.tool_calls else "stop"
        finish = {**envelope, "choices": [{"index": 0, "delta": {}, "finish_reason": reason}]}
        await response.write(_sse(finish))
        if usage is not None:
            await response.write(_sse({**envelope, "choices": [], "usage": usage}))
        await response.write(_DONE)
    except ConnectionError:
        # The client went away mid-stream; that is its choice, not a server error.
        pass
    return response


def _tool_call_chunks(
    envelope: dict[str, Any], index: int, call_id: str, name: str, arguments: str
) -> bytes:
    """Encode a tool call as providers stream it: id and name first, then argument pieces."""
    half = len(arguments) // 2
    fragments = [
        {"index": index, "id": call_id, "type": "function", "function": {"name": name}},
        {"index": index, "function": {"arguments": arguments[:half]}},
        {"index": index, "function": {"arguments": arguments[half:]}},
    ]
    return b"".join(
        _sse(
            {
                **envelope,
                "choices": [
                    {"index": 0, "delta": {"tool_calls": [fragment]}, "finish_reason": None}
                ],
            }
        )
        for fragment in fragments
    )


async def _serve(host: str, port: int) -> None:
    """Run the dev model until SIGINT or SIGTERM."""
    model = DevModel(host, port)
    base_url = await model.start()
    logger.info("deterministic dev model (not a real LLM) serving %s", base_url)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await model.stop()


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and serve the dev model."""
    parser = argparse.ArgumentParser(
        prog="python -m devtools.devmodel",
        description="Serve the deterministic OpenAI-compatible dev model (not a real LLM).",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8089)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    asyncio.run(_serve(args.host, args.port))


if __name__ == "__main__":
    main()
