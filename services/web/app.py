"""Assemble the HTTP edge: the Starlette app, its gRPC channel, and uvicorn.

/v1/…            every annotated public RPC (routes.py); streams as SSE (streams.py)
/auth/login      an API key → the session cookie (login.py); /auth/session, /auth/logout
/openapi.json    the committed OpenAPI document (openapi.py generates it)
/healthz         alive; /readyz: ready for traffic (503 while draining)
/                the dashboard (services/web/static/): its files, and index.html for
                 any other GET of a page path (/sessions/…), which the dashboard routes
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import structlog
import uvicorn
from agentplatform.v1 import profile_pb2, profile_service_pb2
from google.protobuf import message
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.rpc.errors import ApiError, Reason, invalid_argument, unauthenticated
from services.web import metrics
from services.web.errors import api_error_response, error_response, status_of_rpc_error
from services.web.login import (
    COOKIE_NAME,
    CSRF_HEADER,
    CookieSealer,
    Credentials,
    check_same_origin,
    credentials,
)
from services.web.routes import Route as RpcRoute
from services.web.routes import Router, public_services, routes_of
from services.web.settings import STATIC_DIR, WebSettings
from services.web.streams import EventStreamResponse, StreamHub
from services.web.transcode import build_request, to_dict, to_json

log = structlog.get_logger(service="web")

OPENAPI_PATH = Path(__file__).parent / "openapi.json"
_JSON_TYPES = ("application/json", "application/merge-patch+json")
# The dashboard is plain ES modules and one stylesheet of its own, so nothing inline, no
# eval, no other origin: a script injected into a page has nowhere to load from or talk to.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; manifest-src 'self'; frame-ancestors 'none'; "
    "base-uri 'none'; form-action 'self'"
)
_SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
]
_GET_PROFILE = "/agentplatform.v1.ProfileService/GetProfile"


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the edge's owner decides when to stop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Edge:
    """The HTTP edge service: start() serves, stop() drains."""

    def __init__(self, settings: WebSettings) -> None:
        self.settings = settings
        self.router = Router(routes_of(public_services()))
        secret = settings.cookie_secret
        if secret is None:
            log.warning(
                "cookie_secret_generated",
                detail="AP_COOKIE_SECRET is unset: this replica's cookies work only here, "
                "until it restarts",
            )
        self.sealer = CookieSealer(
            (secret.get_secret_value() if secret else secrets.token_urlsafe(32)).encode(),
            settings.cookie_max_age_seconds,
        )
        self.ready = False
        self.port = 0
        self._channel: grpc.aio.Channel | None = None
        self._unary: dict[str, grpc.aio.UnaryUnaryMultiCallable] = {}  # type: ignore[type-arg]
        self.hub: StreamHub | None = None
        self._server: _Server | None = None
        self._main_loop: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        """Return the base URL once started."""
        return f"http://{self.settings.grpc_host}:{self.port}"

    async def start(self) -> None:
        """Connect to the control plane and start serving HTTP."""
        settings = self.settings
        self._channel = grpc.aio.insecure_channel(
            settings.control_plane_address,
            options=[
                ("grpc.max_receive_message_length", settings.max_message_bytes),
                ("grpc.max_send_message_length", settings.max_message_bytes),
            ],
        )
        for route in self.router.routes:
            if not route.streaming:
                self._unary[route.grpc_path] = self._channel.unary_unary(
                    route.grpc_path,
                    request_serializer=route.request_class().SerializeToString,
                    response_deserializer=route.response_class().FromString,
                )
        self.hub = StreamHub(
            self._channel,
            self.router.routes,
            buffer_events=settings.sse_buffer_events,
            replay_events=settings.sse_replay_events,
            request_timeout=settings.request_timeout_seconds,
            keepalive_seconds=settings.sse_keepalive_seconds,
            send_timeout_seconds=settings.sse_send_timeout_seconds,
        )
        config = uvicorn.Config(
            build_app(self),
            host=settings.grpc_host,
            port=settings.http_port,
            log_config=None,
            access_log=False,
            lifespan="off",
            ws="none",
            proxy_headers=True,
            forwarded_allow_ips=settings.forwarded_allow_ips,
            server_header=False,
            timeout_graceful_shutdown=max(1, round(settings.shutdown_grace_seconds)),
        )
        config.load()
        self._server = _Server(config)
        self._server.lifespan = config.lifespan_class(config)
        # serve() is startup + main_loop + shutdown; split, so start() returns once bound.
        await self._server.startup()
        if not self._server.started:
            raise OSError(f"cannot listen on {settings.grpc_host}:{settings.http_port}")
        self.port = int(self._server.servers[0].sockets[0].getsockname()[1])
        self._main_loop = asyncio.create_task(self._server.main_loop(), name="uvicorn")
        self.ready = True
        log.info("http_edge_listening", url=self.url, control_plane=settings.control_plane_address)

    async def stop(self) -> None:
        """Stop taking traffic, end every stream (clients resume elsewhere), then close."""
        self.ready = False
        if self.hub is not None:
            self.hub.close_all()
        if self._server is not None and self._main_loop is not None:
            self._server.should_exit = True
            await self._main_loop
            await self._server.shutdown()
        if self._channel is not None:
            await self._channel.close(None)

    async def call(
        self, route: RpcRoute, request: message.Message, creds: Credentials
    ) -> message.Message:
        """Call a unary RPC with the caller's credentials."""
        response: message.Message = await self._unary[route.grpc_path](
            request, metadata=creds.metadata, timeout=self.settings.request_timeout_seconds
        )
        return response


async def read_body(request: Request, limit: int) -> bytes:
    """Read the body, refusing one over `limit` bytes or one that is not JSON."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise _too_large(limit)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise _too_large(limit)
    if body.strip():
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type not in _JSON_TYPES:
            raise ApiError(
                grpc.StatusCode.INVALID_ARGUMENT,
                Reason.INVALID_ARGUMENT,
                "Send the request body as application/json.",
                field="body",
            )
    return bytes(body)


def _too_large(limit: int) -> ApiError:
    return ApiError(
        grpc.StatusCode.INVALID_ARGUMENT,
        Reason.LIMIT_EXCEEDED,
        f"The request body exceeds its limit of {limit} bytes.",
        field="body",
        metadata={"limit": str(limit)},
    )


def _cursor(value: str, field: str) -> int:
    if not value.isdigit():
        raise invalid_argument(field, f"{field} must be a non-negative event sequence.")
    return int(value)


class DashboardFiles(StaticFiles):
    """The dashboard's files; a page path that is no file (/sessions/…) gets index.html.

    The dashboard routes in the browser, so a deep link or a reload of any page works. A
    missing file with an extension (/app.js, /x.png) stays 404; so does anything under the
    API's prefixes, which never reaches here.
    """

    async def get_response(self, path: str, scope: Scope) -> Response:
        """Serve the file at `path`, or index.html for a page path."""
        try:
            return await super().get_response(path, scope)
        except HTTPException as err:
            if err.status_code != 404 or "." in path.rsplit("/", 1)[-1]:
                raise
            return await super().get_response("index.html", scope)


def build_app(edge: Edge) -> ASGIApp:
    """Return the edge's ASGI application."""
    settings = edge.settings
    middleware = [Middleware(_Observe)]
    if settings.cors_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=settings.cors_origins,
                allow_methods=["GET", "POST", "PATCH", "PUT", "DELETE"],
                allow_headers=["authorization", "content-type", "last-event-id", CSRF_HEADER],
                max_age=600,
            )
        )
    app = Starlette(
        exception_handlers={Exception: _unexpected},
        routes=[
            Route("/v1/{path:path}", api, methods=["GET", "POST", "PATCH", "PUT", "DELETE"]),
            Route("/auth/login", login, methods=["POST"]),
            Route("/auth/session", session, methods=["GET"]),
            Route("/auth/logout", logout, methods=["POST"]),
            Route("/openapi.json", openapi, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Mount("/", DashboardFiles(directory=settings.static_dir or STATIC_DIR, html=True)),
        ],
        middleware=middleware,
    )
    app.state.edge = edge
    return app


async def api(request: Request) -> Response:
    """Serve one annotated RPC: route, credentials, transcode, call, render."""
    edge: Edge = request.app.state.edge
    settings = edge.settings
    request.state.route = "unmatched"
    raw_path = request.scope.get("raw_path", request.url.path.encode()).decode("latin-1")
    raw_path = raw_path.split("?", 1)[0]
    found = edge.router.match(request.method, raw_path)
    if found is None:
        allowed = edge.router.allowed_methods(raw_path)
        if allowed:
            response = api_error_response(
                ApiError(
                    grpc.StatusCode.UNIMPLEMENTED,
                    Reason.NOT_IMPLEMENTED,
                    f"{request.method} is not served here; use {', '.join(allowed)}.",
                ),
                405,
            )
            response.headers["allow"] = ", ".join(allowed)
            return response
        return api_error_response(
            ApiError(
                grpc.StatusCode.NOT_FOUND,
                Reason.NOT_FOUND,
                f"No API method at {request.url.path}.",
            )
        )
    route, values = found
    request.state.route = route.method.name
    try:
        creds = credentials(request, edge.sealer)
        body = await read_body(request, settings.max_body_bytes)
        query = list(request.query_params.multi_items())
        if route.streaming:
            return await _stream(edge, request, found, query, creds)
        rpc_request = build_request(route, values, query, body)
        return Response(
            to_json(await edge.call(route, rpc_request, creds)), media_type="application/json"
        )
    except ApiError as err:
        return api_error_response(err, 413 if err.reason == Reason.LIMIT_EXCEEDED else None)
    except grpc.aio.AioRpcError as err:
        return error_response(status_of_rpc_error(err))


async def login(request: Request) -> Response:
    """Exchange an API key (in the body) for the sealed session cookie."""
    edge: Edge = request.app.state.edge
    settings = edge.settings
    request.state.route = "login"
    try:
        check_same_origin(request)
        if request.url.query:
            raise invalid_argument("query", "Send the API key in the body, never in a URL.")
        body = await read_body(request, 16 * 1024)
        try:
            parsed: Any = json.loads(body or b"{}")
        except ValueError:
            raise invalid_argument("body", "The request body is not valid JSON.") from None
        if not isinstance(parsed, dict) or set(parsed) - {"apiKey"}:
            extra = sorted(set(parsed) - {"apiKey"}) if isinstance(parsed, dict) else []
            raise invalid_argument(extra[0] if extra else "body", 'Send {"apiKey": …}.')
        api_key = parsed.get("apiKey")
        if not isinstance(api_key, str) or not api_key:
            raise invalid_argument("apiKey", "apiKey is required.")
        creds = Credentials(f"Bearer {api_key}")
        route = next(r for r in edge.router.routes if r.grpc_path == _GET_PROFILE)
        profile = await edge.call(
            route, profile_service_pb2.GetProfileRequest(name="users/me/profile"), creds
        )
    except ApiError as err:
        metrics.LOGINS.labels("refused").inc()
        return api_error_response(err)
    except grpc.aio.AioRpcError as err:
        metrics.LOGINS.labels("refused").inc()
        return error_response(status_of_rpc_error(err))
    assert isinstance(profile, profile_pb2.Profile)
    cookie, session = edge.sealer.seal(api_key)
    metrics.LOGINS.labels("ok").inc()
    response = JSONResponse(
        {
            "profile": to_dict(profile),
            "csrfToken": edge.sealer.csrf_token(session),
            "expireTime": _iso(session.expires_at),
        }
    )
    response.set_cookie(
        COOKIE_NAME,
        cookie,
        max_age=settings.cookie_max_age_seconds,
        path="/",
        secure=_secure(request, settings),
        httponly=True,
        samesite="strict",
    )
    return response


async def session(request: Request) -> Response:
    """Return the signed-in cookie's CSRF token and expiry."""
    edge: Edge = request.app.state.edge
    request.state.route = "session"
    cookie = request.cookies.get(COOKIE_NAME)
    opened = edge.sealer.open(cookie) if cookie else None
    if opened is None:
        return api_error_response(unauthenticated("Not signed in."))
    return JSONResponse(
        {"csrfToken": edge.sealer.csrf_token(opened), "expireTime": _iso(opened.expires_at)}
    )


async def logout(request: Request) -> Response:
    """Clear the cookie and end its login's streams on this replica."""
    edge: Edge = request.app.state.edge
    settings = edge.settings
    request.state.route = "logout"
    cookie = request.cookies.get(COOKIE_NAME)
    if cookie is not None and (opened := edge.sealer.open(cookie)) is not None:
        try:
            credentials(request, edge.sealer)  # the CSRF checks of a state change
        except ApiError as err:
            return api_error_response(err)
        if edge.hub is not None:
            ended = edge.hub.end_login(opened.login_id)
            log.info("logout", streams_ended=ended)
    response = Response(status_code=204)
    response.delete_cookie(
        COOKIE_NAME,
        path="/",
        secure=_secure(request, settings),
        httponly=True,
        samesite="strict",
    )
    return response


async def openapi(request: Request) -> Response:
    """Serve the committed OpenAPI document."""
    request.state.route = "openapi"
    return FileResponse(OPENAPI_PATH, media_type="application/json")


async def healthz(request: Request) -> Response:
    """Answer that the process is alive."""
    request.state.route = "healthz"
    return PlainTextResponse("ok")


async def readyz(request: Request) -> Response:
    """Answer 200 while the edge takes traffic, 503 once it drains."""
    edge: Edge = request.app.state.edge
    request.state.route = "readyz"
    if edge.ready:
        return PlainTextResponse("ready")
    return PlainTextResponse("draining", status_code=503)


async def _stream(
    edge: Edge,
    request: Request,
    found: tuple[RpcRoute, dict[str, str]],
    query: list[tuple[str, str]],
    creds: Credentials,
) -> Response:
    route, values = found
    assert edge.hub is not None
    settings = edge.settings
    after = [value for key, value in query if key == "after"]
    rpc_request = build_request(route, values, [(k, v) for k, v in query if k != "after"], b"")
    cursor_field = edge.hub.shapes[route.grpc_path].cursor_field
    # An EventSource reconnects to the same URL (?after= included) with a newer Last-Event-ID.
    if last_event_id := request.headers.get("last-event-id", "").strip():
        setattr(rpc_request, cursor_field, _cursor(last_event_id, "Last-Event-ID"))
    elif after:
        setattr(rpc_request, cursor_field, _cursor(after[-1], "after"))
    subscriber = await edge.hub.subscribe(route, rpc_request, creds)
    outcome = await subscriber.first_outcome(settings.sse_open_wait_seconds)
    if outcome == "failed" and subscriber.failure is not None:
        subscriber.leave()
        return error_response(subscriber.failure)
    if outcome == "ended":
        # Nothing after the cursor and nothing to come: 204 tells EventSource to stop.
        subscriber.leave()
        return Response(status_code=204)
    return EventStreamResponse(subscriber, settings.sse_retry_ms)  # type: ignore[return-value]


async def _unexpected(request: Request, exc: Exception) -> Response:
    """Answer a bug as AIP-193 INTERNAL, logged with its traceback, never its details."""
    log.error("http_unexpected_error", path=request.url.path, exc_info=exc)
    return api_error_response(
        ApiError(grpc.StatusCode.INTERNAL, Reason.INTERNAL_ERROR, "Internal error.")
    )


def _secure(request: Request, settings: WebSettings) -> bool:
    if settings.cookie_secure == "auto":
        return request.url.scheme == "https"
    return settings.cookie_secure == "always"


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")


class _Observe:
    """Security headers, one log line and metrics per request (never headers or query)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        state = scope.setdefault("state", {})
        path = scope["path"]

        async def observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = list(message.get("headers", []))
                headers += _SECURITY_HEADERS
                if path.startswith(("/v1/", "/auth/")) and all(
                    name != b"cache-control" for name, _ in headers
                ):
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
                route = state.get("route", "static")
                metrics.HTTP_REQUESTS.labels(route, str(status)).inc()
                metrics.HTTP_REQUEST_DURATION.labels(route).observe(time.perf_counter() - started)
            await send(message)

        try:
            await self.app(scope, receive, observed)
        finally:
            log.info(
                "http_request",
                method=scope["method"],
                path=path,
                route=state.get("route", "static"),
                status=status,
                duration_ms=round((time.perf_counter() - started) * 1000, 2),
            )
