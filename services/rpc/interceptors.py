"""The one server interceptor: authentication, per-RPC log context, error mapping.

request ─► authenticate (unless open) ─► servicer ─► ok / ApiError / AbortError / crash
                                                       │        │           │          │
                   canonical log line + RPC metrics ◄──┴────────┴───────────┴──────────┘
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from typing import Any, Protocol, TypeAlias

import grpc
import structlog

from services.rpc.errors import (
    DATABASE_ERRORS,
    TRANSACTION_CONFLICTS,
    ApiError,
    concurrent_update,
    database_unavailable,
    internal_error,
)
from services.rpc.metrics import observe_rpc

log = structlog.get_logger()

# Probes and grpcurl need these without credentials.
OPEN_METHOD_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")

Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"

principal_var: contextvars.ContextVar[Any] = contextvars.ContextVar("principal")
# The running call's context, for authenticators that read its transport (mTLS peers).
call_context_var: contextvars.ContextVar[grpc.aio.ServicerContext[Any, Any]] = (
    contextvars.ContextVar("call_context")
)


class Authenticator(Protocol):
    """Resolve the caller of one RPC, or raise an ApiError to refuse it."""

    async def __call__(self, method: str, metadata: Mapping[str, str]) -> Any: ...


def current_principal() -> Any:
    """Return the principal the interceptor resolved for the running RPC."""
    return principal_var.get()


def current_call_context() -> grpc.aio.ServicerContext[Any, Any]:
    """Return the servicer context of the running RPC."""
    return call_context_var.get()


async def _abort(context: grpc.aio.ServicerContext[Any, Any], err: ApiError) -> None:
    status = err.to_status()
    await context.abort(status.code, status.details, status.trailing_metadata)


class ServiceInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Authenticate, bind log context, write one log line per RPC and map errors to statuses."""

    def __init__(
        self, authenticator: Authenticator | None, *, quiet_methods: Collection[str] = ()
    ) -> None:
        self._authenticator = authenticator
        self._quiet_methods = frozenset(quiet_methods)

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or method.startswith(OPEN_METHOD_PREFIXES):
            return handler
        metadata = {
            k: v for k, v in handler_call_details.invocation_metadata or () if isinstance(v, str)
        }
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(method, metadata, handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(method, metadata, handler.unary_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler  # client- and bidi-streaming RPCs are not part of our APIs

    async def _authenticate(
        self,
        method: str,
        metadata: Mapping[str, str],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> None:
        if self._authenticator is not None:
            call_context_var.set(context)
            principal_var.set(await self._authenticator(method, metadata))

    def _log_outcome(self, method: str, code: grpc.StatusCode, started: float, **kw: Any) -> None:
        seconds = time.perf_counter() - started
        observe_rpc(method, code, seconds)
        duration_ms = round(seconds * 1000, 3)
        level = "debug" if method in self._quiet_methods and code == grpc.StatusCode.OK else "info"
        log.log(
            {"debug": 10, "info": 20}[level],
            "rpc",
            rpc=method,
            code=code.name,
            duration_ms=duration_ms,
            **kw,
        )

    async def _fail(
        self,
        method: str,
        context: grpc.aio.ServicerContext[Any, Any],
        started: float,
        exc: Exception,
    ) -> None:
        """Log the failed call and abort it with the status its exception maps to."""
        if isinstance(exc, ApiError):
            self._log_outcome(method, exc.code, started, reason=exc.reason_name)
            await _abort(context, exc)
        elif isinstance(exc, DATABASE_ERRORS):
            self._log_outcome(method, grpc.StatusCode.UNAVAILABLE, started, error=str(exc))
            await _abort(context, database_unavailable())
        elif isinstance(exc, TRANSACTION_CONFLICTS):
            self._log_outcome(method, grpc.StatusCode.ABORTED, started, error=str(exc))
            await _abort(context, concurrent_update())
        else:
            log.error("rpc_crashed", rpc=method, exc_info=exc)
            self._log_outcome(method, grpc.StatusCode.INTERNAL, started)
            await _abort(context, internal_error())

    def _wrap_unary(
        self, method: str, metadata: Mapping[str, str], behavior: Callable[..., Any]
    ) -> Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]:
        async def wrapper(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            started = time.perf_counter()
            with structlog.contextvars.bound_contextvars(rpc=method):
                try:
                    await self._authenticate(method, metadata, context)
                    response = await behavior(request, context)
                except (grpc.aio.AbortError, asyncio.CancelledError):
                    self._log_outcome(method, grpc.StatusCode.CANCELLED, started)
                    raise
                except Exception as exc:
                    await self._fail(method, context, started, exc)
                self._log_outcome(method, grpc.StatusCode.OK, started)
                return response

        return wrapper

    def _wrap_stream(
        self, method: str, metadata: Mapping[str, str], behavior: Callable[..., Any]
    ) -> Callable[[Any, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[Any]]:
        async def wrapper(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            started = time.perf_counter()
            with structlog.contextvars.bound_contextvars(rpc=method):
                try:
                    await self._authenticate(method, metadata, context)
                    async for response in behavior(request, context):
                        yield response
                except (grpc.aio.AbortError, asyncio.CancelledError, GeneratorExit):
                    self._log_outcome(method, grpc.StatusCode.CANCELLED, started)
                    raise
                except Exception as exc:
                    await self._fail(method, context, started, exc)
                else:
                    self._log_outcome(method, grpc.StatusCode.OK, started)

        return wrapper
