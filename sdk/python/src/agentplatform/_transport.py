"""Carry calls over a gRPC channel: credentials, timeouts, retries and typed errors.

`SyncTransport` drives grpc's blocking channel and `AsyncTransport` grpc.aio's; they share
everything but the waiting. A call is an `Rpc` (which stub method, whether a retry is safe)
and a request built once, so a retried create resends the same request_id.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from importlib import metadata as _metadata
from typing import Any, Generic, Protocol, Self, TypeVar, cast

import grpc

from agentplatform._config import ClientConfig
from agentplatform._errors import error_from_rpc, reason_of

RequestT = TypeVar("RequestT")
ResponseT = TypeVar("ResponseT")
ItemT = TypeVar("ItemT")
StubT = TypeVar("StubT")

try:
    SDK_VERSION = _metadata.version("agentplatform-sdk")
except _metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
    SDK_VERSION = "0+unknown"

# Unary calls are short; a deadline keeps a wedged server from hanging the caller.
DEFAULT_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Retry:
    """How a call that is safe to repeat is retried while the server is UNAVAILABLE.

    Pauses grow from `initial_backoff` (seconds) by doubling up to `max_backoff`, each
    drawn at random from its upper half so that clients cut off together do not come back
    together. `max_retries=0` turns retries off.
    """

    max_retries: int = 4
    initial_backoff: float = 0.25
    max_backoff: float = 4.0

    def delays(self) -> Iterator[float]:
        """Yield the pause before each retry, at most `max_retries` of them."""
        ceiling = self.initial_backoff
        for _ in range(self.max_retries):
            yield ceiling / 2 + random.uniform(0, ceiling / 2)  # noqa: S311 - jitter, not crypto
            ceiling = min(ceiling * 2, self.max_backoff)


def should_retry(err: grpc.RpcError) -> bool:
    """Say whether a call failed only for now: the server was away, or a conflict aborted it."""
    return isinstance(err, grpc.Call | grpc.aio.AioRpcError) and (
        err.code() == grpc.StatusCode.UNAVAILABLE
        or (err.code() == grpc.StatusCode.ABORTED and reason_of(err) == "CONCURRENT_UPDATE")
    )


@dataclass(frozen=True)
class Rpc(Generic[RequestT, ResponseT]):
    """One unary RPC: the stub class, how to pick the method from a stub, and retry safety.

    `retryable` holds for reads, cancels, updates that set fields to given values, and
    creates that carry a request_id (the server answers a repeat with the first result).
    """

    stub: type[Any]
    select: Callable[[Any], grpc.UnaryUnaryMultiCallable[RequestT, ResponseT]]
    retryable: bool


def rpc(
    stub: type[StubT],
    select: Callable[[StubT], grpc.UnaryUnaryMultiCallable[RequestT, ResponseT]],
    *,
    retryable: bool,
) -> Rpc[RequestT, ResponseT]:
    """Describe a unary RPC of `stub`; `select` picks it, e.g. `lambda s: s.GetRun`."""
    return Rpc(stub, cast(Callable[[Any], Any], select), retryable)


class StreamRpc(Protocol[RequestT, ResponseT]):
    """Pick a server-streaming method from a stub."""

    def __call__(self, stub: Any) -> grpc.UnaryStreamMultiCallable[RequestT, ResponseT]:
        """Return the stub's multi-callable."""
        ...


class _Page(Protocol):
    """A List response: some items and the token of the next page."""

    @property
    def next_page_token(self) -> str:
        """Return the token of the next page; empty on the last page."""
        ...


class _PageRequest(Protocol):
    """A List request, whose page token the pager sets."""

    page_token: str


PageT = TypeVar("PageT", bound=_Page)
PageRequestT = TypeVar("PageRequestT", bound=_PageRequest)


class Transport:
    """What both transports share: the configuration, options and the per-stub cache."""

    def __init__(
        self,
        config: ClientConfig,
        *,
        timeout: float | None,
        retry: Retry,
        channel_options: Sequence[tuple[str, Any]],
    ) -> None:
        """Prepare calls to `config.target`; the subclass opens the channel."""
        self.config = config
        self.timeout = timeout
        self.retry = retry
        self.metadata: tuple[tuple[str, str], ...] = (
            ("authorization", f"Bearer {config.api_key}"),
        )
        self._options = [("grpc.primary_user_agent", f"agentplatform-sdk/{SDK_VERSION}")]
        self._options += list(channel_options)
        self._credentials = (
            grpc.ssl_channel_credentials(config.root_certificates()) if config.tls else None
        )
        self._stubs: dict[type[Any], Any] = {}

    def with_options(self, *, timeout: float | None, retry: Retry | None) -> Self:
        """Return a view of this transport, on the same channel, with other call options."""
        view = object.__new__(type(self))
        view.__dict__.update(self.__dict__)
        if timeout is not None:
            view.timeout = timeout
        if retry is not None:
            view.retry = retry
        return view

    def _stub(self, cls: type[StubT], channel: object) -> StubT:
        """Return the stub of `cls` on the channel, made once."""
        stub = self._stubs.get(cls)
        if stub is None:
            stub = self._stubs[cls] = cast(Any, cls)(channel)
        return cast(StubT, stub)

    def _delays(self, call: Rpc[Any, Any]) -> Iterator[float]:
        """Return the pauses before retries of `call` (none for calls unsafe to repeat)."""
        return self.retry.delays() if call.retryable else iter(())


class SyncTransport(Transport):
    """Make blocking calls on a `grpc.Channel`."""

    def __init__(
        self,
        config: ClientConfig,
        *,
        timeout: float | None,
        retry: Retry,
        channel_options: Sequence[tuple[str, Any]],
    ) -> None:
        """Open the channel (gRPC connects lazily, on the first call)."""
        super().__init__(config, timeout=timeout, retry=retry, channel_options=channel_options)
        self.channel: grpc.Channel = (
            grpc.secure_channel(config.target, self._credentials, options=self._options)
            if self._credentials is not None
            else grpc.insecure_channel(config.target, options=self._options)
        )

    def close(self) -> None:
        """Close the channel, cancelling calls still in flight."""
        self.channel.close()

    def call(self, call: Rpc[RequestT, ResponseT], request: RequestT) -> ResponseT:
        """Make a unary call, retrying it while UNAVAILABLE if it is safe to repeat."""
        method = call.select(self._stub(call.stub, self.channel))
        delays = self._delays(call)
        while True:
            try:
                return method(request, metadata=self.metadata, timeout=self.timeout)
            except grpc.RpcError as err:
                delay = next(delays, None) if should_retry(err) else None
                if delay is None:
                    raise error_from_rpc(err) from err
            time.sleep(delay)

    def pages(
        self,
        call: Rpc[PageRequestT, PageT],
        request: PageRequestT,
        items: Callable[[PageT], Iterable[ItemT]],
    ) -> Iterator[ItemT]:
        """Yield the items of every page, fetching each page when the previous one is used up."""
        while True:
            page = self.call(call, request)
            yield from items(page)
            if not page.next_page_token:
                return
            request.page_token = page.next_page_token

    def open_stream(
        self, select: StreamRpc[RequestT, ResponseT], stub: type[Any], request: RequestT
    ) -> grpc.CallIterator[ResponseT]:
        """Start a server-streaming call (no deadline: streams follow live events)."""
        return select(self._stub(stub, self.channel))(request, metadata=self.metadata)


class AsyncTransport(Transport):
    """Make calls on a `grpc.aio.Channel`, opened in the event loop of the first call."""

    def __init__(
        self,
        config: ClientConfig,
        *,
        timeout: float | None,
        retry: Retry,
        channel_options: Sequence[tuple[str, Any]],
    ) -> None:
        """Prepare the channel; grpc.aio binds it to a loop, so it opens on first use."""
        super().__init__(config, timeout=timeout, retry=retry, channel_options=channel_options)
        # Views made by with_options share the channel through this one-slot holder.
        self._holder: list[grpc.aio.Channel] = []

    @property
    def channel(self) -> grpc.aio.Channel:
        """Return the channel, opening it in the running event loop the first time."""
        if not self._holder:
            self._holder.append(
                grpc.aio.secure_channel(
                    self.config.target, self._credentials, options=self._options
                )
                if self._credentials is not None
                else grpc.aio.insecure_channel(self.config.target, options=self._options)
            )
        return self._holder[0]

    async def close(self) -> None:
        """Close the channel, cancelling calls still in flight."""
        if self._holder:
            await self._holder.pop().close(None)
            self._stubs.clear()

    async def call(self, call: Rpc[RequestT, ResponseT], request: RequestT) -> ResponseT:
        """Make a unary call, retrying it while UNAVAILABLE if it is safe to repeat."""
        # The stub built on an aio channel holds aio multi-callables: same names, awaitable.
        method = cast(
            grpc.aio.UnaryUnaryMultiCallable[RequestT, ResponseT],
            call.select(self._stub(call.stub, self.channel)),
        )
        delays = self._delays(call)
        while True:
            try:
                return await method(request, metadata=self.metadata, timeout=self.timeout)
            except grpc.RpcError as err:
                delay = next(delays, None) if should_retry(err) else None
                if delay is None:
                    raise error_from_rpc(err) from err
            await asyncio.sleep(delay)

    async def pages(
        self,
        call: Rpc[PageRequestT, PageT],
        request: PageRequestT,
        items: Callable[[PageT], Iterable[ItemT]],
    ) -> AsyncIterator[ItemT]:
        """Yield the items of every page, fetching each page when the previous one is used up."""
        while True:
            page = await self.call(call, request)
            for item in items(page):
                yield item
            if not page.next_page_token:
                return
            request.page_token = page.next_page_token

    def open_stream(
        self, select: StreamRpc[RequestT, ResponseT], stub: type[Any], request: RequestT
    ) -> grpc.aio.UnaryStreamCall[RequestT, ResponseT]:
        """Start a server-streaming call (no deadline: streams follow live events)."""
        method = cast(
            grpc.aio.UnaryStreamMultiCallable[RequestT, ResponseT],
            select(self._stub(stub, self.channel)),
        )
        return method(request, metadata=self.metadata)
