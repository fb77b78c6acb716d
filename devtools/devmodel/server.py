"""Serve the dev model's three wire formats over HTTP, with what they share done once.

A request goes: API key (401) → required headers and body (400) → model name (404) →
directives (400) → ``[[rate_limit]]`` (429) → ``[[fail]]`` → ``[[hang]]`` → the reply,
streamed or whole, written by the request's wire format.
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiohttp import web

from devtools.devmodel.chat_completions import ChatCompletions
from devtools.devmodel.messages import Messages
from devtools.devmodel.responses import Responses
from devtools.devmodel.script import BadRequestError, Plan, plan_reply
from devtools.devmodel.wire import MODEL_ID, Call, Reply, StreamEncoder, WireFormat

# Agent conversations resend the whole history; aiohttp's 1 MiB default is too small.
_MAX_BODY_BYTES = 64 * 1024 * 1024
_CHAT_COMPLETIONS = ChatCompletions()
_MESSAGES = Messages()
_WIRE_FORMATS: tuple[WireFormat, ...] = (_CHAT_COMPLETIONS, Responses(), _MESSAGES)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _load_body(raw: bytes) -> dict[str, Any]:
    """Decode a request body, which must be a JSON object."""
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise BadRequestError(f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequestError("request body must be a JSON object")
    return body


def _error(
    wire: WireFormat, status: int, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    """Build a JSON error response in ``wire``'s shape."""
    return web.json_response(wire.error_body(status, message), status=status, headers=headers)


async def _forever() -> None:
    """Wait until cancelled by a client disconnect or ``DevModel.stop``."""
    await asyncio.get_running_loop().create_future()


class DevModel:
    """Run the dev model's HTTP server inside the current event loop."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        models: Iterable[str] | None = None,
        api_key: str | None = None,
    ) -> None:
        """Configure the address (port 0 picks a free port at ``start``) and what to refuse.

        ``models`` lists the model ids served; any other name gets 404 (default: any name is
        served). With ``api_key`` set, a request without that key gets 401.
        """
        self.host = host
        self.port = port
        self.models = None if models is None else tuple(models)
        self.api_key = api_key
        self.requests: list[dict[str, Any]] = []
        self._runner: web.AppRunner | None = None
        self._base_url: str | None = None
        self._inflight: set[asyncio.Task[Any]] = set()
        self._ids = itertools.count(1)
        # Refusals sent per (wire format, conversation) that asked for [[rate_limit=N]].
        self._refusals: Counter[tuple[str, Any]] = Counter()

    @property
    def base_url(self) -> str:
        """Return the base URL of every format, e.g. ``http://127.0.0.1:43123/v1``."""
        if self._base_url is None:
            raise RuntimeError("the dev model is not running")
        return self._base_url

    @property
    def open_requests(self) -> int:
        """Return how many model requests are being answered right now."""
        return len(self._inflight)

    async def start(self) -> str:
        """Start listening and return the base URL."""
        if self._runner is not None:
            raise RuntimeError("the dev model is already running")
        app = web.Application(client_max_size=_MAX_BODY_BYTES)
        for wire in _WIRE_FORMATS:
            app.router.add_post(wire.path, self._tracked(self._answerer(wire)))
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/v1/models/{model_id:.+}", self._model)
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

    def _tracked(self, handler: Handler) -> Handler:
        """Wrap a handler so that ``stop`` can cut it off."""

        async def tracked(request: web.Request) -> web.StreamResponse:
            task = asyncio.current_task()
            assert task is not None, "aiohttp runs every handler in a task"
            self._inflight.add(task)
            try:
                return await handler(request)
            finally:
                self._inflight.discard(task)

        return tracked

    def _refuse_key(self, wire: WireFormat, request: web.Request) -> web.Response | None:
        """Return a 401 when an API key is required and the request lacks it."""
        if self.api_key is None:
            return None
        presented = wire.api_key(request.headers)
        if presented is not None and hmac.compare_digest(presented.encode(), self.api_key.encode()):
            return None
        return _error(wire, 401, "invalid or missing API key")

    def _serves(self, model: str) -> bool:
        """Say whether ``model`` names a model this server offers."""
        return self.models is None or model in self.models

    def _answerer(self, wire: WireFormat) -> Handler:
        """Return the handler of ``wire``'s endpoint."""

        async def answer(request: web.Request) -> web.StreamResponse:
            refusal = self._refuse_key(wire, request)
            if refusal is not None:
                return refusal
            try:
                wire.check_headers(request.headers)
                body = _load_body(await request.read())
                self.requests.append(body)
                call = wire.decode(body)
                if not self._serves(call.model):
                    return _error(wire, 404, f"The model '{call.model}' does not exist.")
                plan = plan_reply(call.conversation)
            except BadRequestError as exc:
                return _error(wire, 400, str(exc))
            return await self._answer(wire, request, call, plan)

        return answer

    async def _answer(
        self, wire: WireFormat, request: web.Request, call: Call, plan: Plan
    ) -> web.StreamResponse:
        """Answer a valid request as its directives say."""
        if plan.rate_limit:
            # A retried request is the same conversation, so it is let through after N refusals.
            key = (wire.name, call.conversation)
            if self._refusals[key] < plan.rate_limit:
                self._refusals[key] += 1
                message = (
                    f"dev model rate limit requested ([[rate_limit={plan.rate_limit}]]):"
                    f" refusal {self._refusals[key]} of {plan.rate_limit}"
                )
                return _error(wire, 429, message, wire.retry_headers(plan.retry_after_ms))
        if plan.fail is not None:
            headers = wire.retry_headers(plan.retry_after_ms) if plan.fail == 429 else None
            message = f"dev model failure requested ([[fail={plan.fail}]])"
            return _error(wire, plan.fail, message, headers)
        if plan.hang or (plan.hang_after is not None and not call.stream):
            await _forever()
        reply = Reply(serial=next(self._ids), created=int(time.time()))
        if call.stream:
            return await _stream(request, plan, wire.encoder(plan, call, reply))
        if plan.delay_s:
            await asyncio.sleep(plan.delay_s * (len(plan.reasoning) + len(plan.content)))
        if plan.malformed:
            return web.Response(text="{not json", content_type="application/json")
        if plan.fail_after is not None:
            return _error(
                wire, 500, f"dev model failure requested ([[fail_after={plan.fail_after}]])"
            )
        return web.json_response(wire.reply(plan, call, reply))

    async def _healthz(self, request: web.Request) -> web.Response:
        """Report that the server is up."""
        return web.json_response({"status": "ok"})

    def _catalogue_format(self, request: web.Request) -> WireFormat:
        """Pick the shape of a model list: Anthropic's for Anthropic clients, else OpenAI's."""
        return _MESSAGES if "anthropic-version" in request.headers else _CHAT_COMPLETIONS

    async def _models(self, request: web.Request) -> web.Response:
        """List the models this server offers."""
        wire = self._catalogue_format(request)
        refusal = self._refuse_key(wire, request)
        if refusal is not None:
            return refusal
        return web.json_response(wire.model_list(self.models or (MODEL_ID,)))

    async def _model(self, request: web.Request) -> web.Response:
        """Describe one model, or answer 404 for a model this server does not offer."""
        wire = self._catalogue_format(request)
        refusal = self._refuse_key(wire, request)
        if refusal is not None:
            return refusal
        model_id = request.match_info["model_id"]
        if not self._serves(model_id):
            return _error(wire, 404, f"The model '{model_id}' does not exist.")
        return web.json_response(wire.model_info(model_id))


async def _stream(request: web.Request, plan: Plan, encoder: StreamEncoder) -> web.StreamResponse:
    """Stream a reply: reasoning, content, tool calls, the end; or a hang, failure or bad frame."""
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)

    async def write(data: bytes) -> None:
        if data:
            await response.write(data)

    try:
        await write(encoder.start())
        for token in plan.reasoning:
            if plan.delay_s:
                await asyncio.sleep(plan.delay_s)
            await write(encoder.reasoning(token))
        await write(encoder.reasoning_end())
        if plan.malformed and not plan.content:
            await write(encoder.malformed())
            return response
        for sent, token in enumerate(plan.content):
            if sent == plan.hang_after:
                await _forever()
            if sent == plan.fail_after:
                break
            if plan.delay_s:
                await asyncio.sleep(plan.delay_s)
            await write(encoder.text(token))
            if plan.malformed:
                await write(encoder.malformed())
                return response
        if plan.hang_after is not None:
            await _forever()
        if plan.fail_after is not None:
            message = f"dev model failure requested ([[fail_after={plan.fail_after}]])"
            await write(encoder.failure(message))
            return response
        await write(encoder.text_end())
        for call in plan.tool_calls:
            await write(encoder.tool_call(call))
        await write(encoder.end())
    except ConnectionError:
        # The client went away mid-stream; that is its choice, not a server error.
        pass
    return response
