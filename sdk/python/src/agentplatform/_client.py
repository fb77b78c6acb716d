"""`Client` (blocking) and `AsyncClient`: the same methods, over one channel each."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Generic, Self, TypeVar

import grpc

from agentplatform._config import ClientConfig
from agentplatform._methods import AsyncBase, ConcurrencyPolicy, Methods, SyncBase
from agentplatform._streams import ReconnectHook, Reply
from agentplatform._transport import (
    DEFAULT_TIMEOUT_S,
    AsyncTransport,
    Retry,
    SyncTransport,
    Transport,
)

TransportT = TypeVar("TransportT", bound=Transport)


class _ClientBase(Generic[TransportT]):
    """Configuration, options and the raw channel, the same for both clients."""

    _transport: TransportT
    _transport_class: type[TransportT]

    def __init__(
        self,
        endpoint: str | None = None,
        api_key: str | None = None,
        *,
        tls: bool | None = None,
        ca_file: str | os.PathLike[str] | None = None,
        timeout: float | None = DEFAULT_TIMEOUT_S,
        max_retries: int = Retry.max_retries,
        channel_options: Sequence[tuple[str, Any]] = (),
        config: ClientConfig | None = None,
    ) -> None:
        """Configure the client from the arguments, else AP_ENDPOINT/AP_API_KEY, else client.json.

        `endpoint` is HOST:PORT (plaintext) or https:// / grpcs:// (TLS; `ca_file` verifies
        the server instead of the system's roots; `tls=True` forces TLS on a bare HOST:PORT).
        `timeout` bounds each unary call in seconds (None: no deadline); idempotent calls are
        retried up to `max_retries` times while the server is UNAVAILABLE. `config` is an
        already resolved `ClientConfig`, instead of the other settings.
        Raises `ConfigError` when no endpoint or key can be found.
        """
        if config is None:
            config = ClientConfig.resolve(endpoint, api_key, tls=tls, ca_file=ca_file)
        elif endpoint or api_key or tls is not None or ca_file:
            raise ValueError("give either config= or the settings it holds, not both")
        self.config = config
        self._transport = self._transport_class(
            config,
            timeout=timeout,
            retry=Retry(max_retries=max_retries),
            channel_options=channel_options,
        )

    def __repr__(self) -> str:
        """Show the endpoint (never the key)."""
        return f"{type(self).__name__}({self.config.endpoint!r})"

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """Return the call metadata carrying the API key, for calls on the raw stubs."""
        return self._transport.metadata

    def with_options(self, *, timeout: float | None = None, max_retries: int | None = None) -> Self:
        """Return a client on the same channel whose calls use other options.

        `client.with_options(timeout=5).get_run(name)`; closing either closes the channel.
        """
        view = object.__new__(type(self))
        view.config = self.config
        retry = Retry(max_retries=max_retries) if max_retries is not None else None
        view._transport = self._transport.with_options(timeout=timeout, retry=retry)
        return view


class Client(_ClientBase[SyncTransport], Methods, SyncBase):
    """A blocking client of the platform's public API.

        with Client() as client:               # AP_ENDPOINT/AP_API_KEY or client.json
            session = client.create_session(title="Hello")
            print(client.send_message(session.name, "Hi!"))

    Methods return protobuf messages (`agentplatform.v1`); `list_*` return iterators over
    every page; `stream_*` return a `RunEventStream` to iterate. Failures raise `APError`
    subclasses. A client may be used from several threads.
    """

    _transport_class = SyncTransport

    @property
    def channel(self) -> grpc.Channel:
        """Return the `grpc.Channel`, for the generated stubs of calls not wrapped here."""
        return self._transport.channel

    def close(self) -> None:
        """Close the channel, cancelling calls still in flight."""
        self._transport.close()

    def __enter__(self) -> Self:
        """Return the client itself."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Close the channel."""
        self.close()

    def send_message(
        self,
        session: str,
        text: str,
        *,
        concurrency_policy: ConcurrencyPolicy = "enqueue",
        request_id: str | None = None,
        on_reconnect: ReconnectHook | None = None,
    ) -> str:
        """Run `text` in `session`, wait for the run to end, and return the reply text.

        By default the run waits its turn behind an active one ("enqueue"). Raises
        `RunFailed` or `RunCancelled` (with `.reason` and `.run`) if it does not complete.
        """
        run = self.create_run(
            session, text, concurrency_policy=concurrency_policy, request_id=request_id
        )
        reply = Reply(run.name)
        for event in self.stream_run_events(run.name, on_reconnect=on_reconnect):
            reply.add(event)
        return reply.text()


class AsyncClient(_ClientBase[AsyncTransport], Methods, AsyncBase):
    """An asyncio client of the platform's public API, with the methods of `Client`.

        async with AsyncClient() as client:    # AP_ENDPOINT/AP_API_KEY or client.json
            session = await client.create_session(title="Hello")
            print(await client.send_message(session.name, "Hi!"))

    Unary methods are awaited; `list_*` and `stream_*` return async iterators used with
    `async for` (not awaited). The channel opens in the event loop of the first call.
    """

    _transport_class = AsyncTransport

    @property
    def channel(self) -> grpc.aio.Channel:
        """Return the `grpc.aio.Channel`, for the generated stubs of calls not wrapped here."""
        return self._transport.channel

    async def close(self) -> None:
        """Close the channel, cancelling calls still in flight."""
        await self._transport.close()

    async def __aenter__(self) -> Self:
        """Return the client itself."""
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Close the channel."""
        await self.close()

    async def send_message(
        self,
        session: str,
        text: str,
        *,
        concurrency_policy: ConcurrencyPolicy = "enqueue",
        request_id: str | None = None,
        on_reconnect: ReconnectHook | None = None,
    ) -> str:
        """Run `text` in `session`, wait for the run to end, and return the reply text.

        By default the run waits its turn behind an active one ("enqueue"). Raises
        `RunFailed` or `RunCancelled` (with `.reason` and `.run`) if it does not complete.
        """
        run = await self.create_run(
            session, text, concurrency_policy=concurrency_policy, request_id=request_id
        )
        reply = Reply(run.name)
        async for event in self.stream_run_events(run.name, on_reconnect=on_reconnect):
            reply.add(event)
        return reply.text()
