"""Call the public API over grpc.aio with auth, retries and resumable event streams."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Sequence,
)
from functools import partial
from typing import Any, Protocol, TypeVar

import grpc

from agentplatform._errors import ClientError, RpcFailure, describe_rpc_error, is_reconnectable
from agentplatform.events import is_terminal
from agentplatform.v1 import (
    run_pb2,
    run_service_pb2,
    run_service_pb2_grpc,
    session_pb2,
    session_service_pb2,
    session_service_pb2_grpc,
)

T = TypeVar("T")

# Unary calls are short; a deadline keeps a wedged server from hanging the caller.
UNARY_TIMEOUT_S = 30.0
# A create retried with the same request_id is idempotent, so a few quick tries ride out a
# restarting server without surprising the caller with a long wait.
UNARY_ATTEMPTS = 5
RETRY_INITIAL_S = 0.2
RETRY_MAX_S = 3.0
# A restart of the control plane takes seconds; past this the server is really gone.
STREAM_RECONNECT_WINDOW_S = 120.0

TERMINAL_STATES = frozenset(
    {run_pb2.Run.State.COMPLETED, run_pb2.Run.State.FAILED, run_pb2.Run.State.CANCELLED}
)

# Called before a broken event stream resumes, with the failure (None when the stream only
# ended early) and the last sequence received, which the stream resumes after.
ReconnectHook = Callable[[RpcFailure | None, int], None]


class Page(Protocol):
    """A List response: some items and the token of the next page."""

    @property
    def next_page_token(self) -> str: ...


PageT = TypeVar("PageT", bound=Page)
ItemT = TypeVar("ItemT")


async def follow_pages(
    fetch: Callable[[str], Awaitable[PageT]], items: Callable[[PageT], Iterable[ItemT]]
) -> AsyncIterator[ItemT]:
    """Yield every item of a List RPC, fetching the page of each token until none is left."""
    token = ""
    while True:
        page = await fetch(token)
        for item in items(page):
            yield item
        token = page.next_page_token
        if not token:
            return


async def retry_unavailable(
    call: Callable[[], Awaitable[T]], *, attempts: int = UNARY_ATTEMPTS
) -> T:
    """Await `call()`, calling it again with backoff while the server is unreachable."""
    delay = RETRY_INITIAL_S
    for attempt in range(1, attempts + 1):
        try:
            return await call()
        except grpc.aio.AioRpcError as err:
            if attempt == attempts or not is_reconnectable(describe_rpc_error(err)):
                raise
        await asyncio.sleep(delay)
        delay = min(delay * 2, RETRY_MAX_S)
    raise AssertionError("unreachable")  # pragma: no cover


class Client:
    """Hold one channel to the control plane and the caller's API key.

    Failed calls raise `grpc.aio.AioRpcError`; `describe_rpc_error` decodes its reason.
    Reads and creates are retried while the server is unreachable (creates carry a
    request_id, so a retry cannot create twice).
    """

    def __init__(
        self,
        endpoint: str,
        api_key: str,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        channel_options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        """Open a channel to `endpoint` (TLS with `credentials`, else plaintext).

        grpc.aio binds the channel to the running event loop, so create the client in it.
        """
        self.endpoint = endpoint
        options = list(channel_options)
        self.channel: grpc.aio.Channel = (
            grpc.aio.secure_channel(endpoint, credentials, options=options)
            if credentials is not None
            else grpc.aio.insecure_channel(endpoint, options=options)
        )
        self.metadata: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {api_key}"),)
        self.sessions: session_service_pb2_grpc.SessionServiceAsyncStub = (
            session_service_pb2_grpc.SessionServiceStub(self.channel)
        )
        self.runs: run_service_pb2_grpc.RunServiceAsyncStub = run_service_pb2_grpc.RunServiceStub(
            self.channel
        )

    async def close(self) -> None:
        """Close the channel, cancelling calls still in flight."""
        await self.channel.close(None)

    async def __aenter__(self) -> Client:
        """Return the client itself."""
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Close the channel."""
        await self.close()

    async def create_session(
        self, *, title: str = "", instructions: str = "", request_id: str | None = None
    ) -> session_pb2.Session:
        """Create a session; retries reuse one request_id so they cannot create two."""
        request = session_service_pb2.CreateSessionRequest(
            session=session_pb2.Session(title=title, instructions=instructions),
            request_id=request_id or str(uuid.uuid4()),
        )
        return await retry_unavailable(
            lambda: self.sessions.CreateSession(
                request, metadata=self.metadata, timeout=UNARY_TIMEOUT_S
            )
        )

    async def get_session(self, name: str) -> session_pb2.Session:
        """Get a session by name."""
        request = session_service_pb2.GetSessionRequest(name=name)
        return await retry_unavailable(
            lambda: self.sessions.GetSession(
                request, metadata=self.metadata, timeout=UNARY_TIMEOUT_S
            )
        )

    async def list_sessions(self, *, page_size: int = 0) -> AsyncIterator[session_pb2.Session]:
        """Yield the workspace's sessions, newest first, across every page."""

        def fetch(token: str) -> Awaitable[session_service_pb2.ListSessionsResponse]:
            request = session_service_pb2.ListSessionsRequest(page_size=page_size, page_token=token)
            return self._unary(self.sessions.ListSessions, request)

        async for session in follow_pages(fetch, lambda page: page.sessions):
            yield session

    async def list_messages(
        self, parent: str, *, page_size: int = 0
    ) -> AsyncIterator[session_pb2.Message]:
        """Yield a session's transcript, oldest first, across every page."""

        def fetch(token: str) -> Awaitable[session_service_pb2.ListMessagesResponse]:
            request = session_service_pb2.ListMessagesRequest(
                parent=parent, page_size=page_size, page_token=token
            )
            return self._unary(self.sessions.ListMessages, request)

        async for message in follow_pages(fetch, lambda page: page.messages):
            yield message

    async def create_run(
        self, parent: str, input_text: str, *, request_id: str | None = None
    ) -> run_pb2.Run:
        """Create a run; retries reuse one request_id so they cannot queue the input twice."""
        request = run_service_pb2.CreateRunRequest(
            parent=parent, input_text=input_text, request_id=request_id or str(uuid.uuid4())
        )
        return await retry_unavailable(
            lambda: self.runs.CreateRun(request, metadata=self.metadata, timeout=UNARY_TIMEOUT_S)
        )

    async def send_message(
        self,
        session: str,
        text: str,
        *,
        request_id: str | None = None,
        on_reconnect: ReconnectHook | None = None,
    ) -> RunEventStream:
        """Run `text` in `session` and return the stream of the new run's events."""
        run = await self.create_run(session, text, request_id=request_id)
        return self.stream_run_events(run.name, on_reconnect=on_reconnect)

    async def get_run(self, name: str) -> run_pb2.Run:
        """Get a run by name."""
        request = run_service_pb2.GetRunRequest(name=name)
        return await retry_unavailable(
            lambda: self.runs.GetRun(request, metadata=self.metadata, timeout=UNARY_TIMEOUT_S)
        )

    async def cancel_run(self, name: str) -> run_pb2.Run:
        """Ask for a run to be cancelled; its stream ends with run.cancelled unless it ended."""
        request = run_service_pb2.CancelRunRequest(name=name)
        return await retry_unavailable(
            lambda: self.runs.CancelRun(request, metadata=self.metadata, timeout=UNARY_TIMEOUT_S)
        )

    async def list_runs(self, parent: str, *, page_size: int = 0) -> AsyncIterator[run_pb2.Run]:
        """Yield a session's runs, newest first, across every page."""

        def fetch(token: str) -> Awaitable[run_service_pb2.ListRunsResponse]:
            request = run_service_pb2.ListRunsRequest(
                parent=parent, page_size=page_size, page_token=token
            )
            return self._unary(self.runs.ListRuns, request)

        async for run in follow_pages(fetch, lambda page: page.runs):
            yield run

    async def _unary(self, method: Callable[..., Awaitable[T]], request: object) -> T:
        """Call a read RPC with the key and a deadline, retried while the server is away."""
        return await retry_unavailable(
            partial(method, request, metadata=self.metadata, timeout=UNARY_TIMEOUT_S)
        )

    def stream_run_events(
        self,
        name: str,
        *,
        after_sequence: int = 0,
        on_reconnect: ReconnectHook | None = None,
        reconnect_window_s: float = STREAM_RECONNECT_WINDOW_S,
    ) -> RunEventStream:
        """Return a resumable stream of the run's events after `after_sequence`."""
        return RunEventStream(
            self,
            name,
            after_sequence=after_sequence,
            on_reconnect=on_reconnect,
            reconnect_window_s=reconnect_window_s,
        )


class RunEventStream:
    """Follow a run's events to its terminal one, resuming from the last sequence on UNAVAILABLE.

    Iterate it (or `events()`) once. `last_sequence` is the cursor to resume from after an
    interruption; `terminal` holds the terminal event once seen. The stream also ends without
    a terminal event when the run already ended at or before the cursor (a resume past the
    end); `final_run` then holds the run as GetRun reported it.
    """

    def __init__(
        self,
        client: Client,
        name: str,
        *,
        after_sequence: int = 0,
        on_reconnect: ReconnectHook | None = None,
        reconnect_window_s: float = STREAM_RECONNECT_WINDOW_S,
    ) -> None:
        """Prepare to stream `name` from `after_sequence`; nothing is sent until iteration."""
        self._client = client
        self.name = name
        self.last_sequence = after_sequence
        self.terminal: run_pb2.RunEvent | None = None
        self.final_run: run_pb2.Run | None = None
        self.reconnects = 0
        self._on_reconnect = on_reconnect
        self._window_s = reconnect_window_s

    def __aiter__(self) -> AsyncGenerator[run_pb2.RunEvent, None]:
        """Return the event generator, so `async for event in stream` works."""
        return self.events()

    async def events(self) -> AsyncGenerator[run_pb2.RunEvent, None]:
        """Yield each event once, in sequence order, until the terminal event."""
        delay = RETRY_INITIAL_S
        failing_since: float | None = None
        while self.terminal is None:
            error: grpc.aio.AioRpcError | None = None
            call = self._client.runs.StreamRunEvents(
                run_service_pb2.StreamRunEventsRequest(
                    name=self.name, after_sequence=self.last_sequence
                ),
                metadata=self._client.metadata,
            )
            try:
                async for response in call:
                    event = response.event
                    # A resumed stream may repeat what the broken one already delivered.
                    if event.sequence <= self.last_sequence:
                        continue
                    self.last_sequence = event.sequence
                    failing_since, delay = None, RETRY_INITIAL_S
                    if is_terminal(event):
                        self.terminal = event
                    yield event
                    if self.terminal is not None:
                        return
            except grpc.aio.AioRpcError as err:
                if not is_reconnectable(describe_rpc_error(err)):
                    raise
                error = err
            finally:
                call.cancel()
            if error is None and await self._ended_before_cursor():
                return
            # Either the connection broke or the server closed the stream early (e.g. while
            # draining for shutdown without a status); both resume from the cursor.
            now = time.monotonic()
            failing_since = failing_since if failing_since is not None else now
            if now - failing_since > self._window_s:
                if error is not None:
                    raise error
                raise ClientError(
                    RpcFailure(
                        code=grpc.StatusCode.UNAVAILABLE,
                        message=f"the event stream of {self.name} kept ending early",
                        reason="UNAVAILABLE",
                    )
                )
            self.reconnects += 1
            if self._on_reconnect is not None:
                self._on_reconnect(
                    describe_rpc_error(error) if error is not None else None, self.last_sequence
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_S)

    async def _ended_before_cursor(self) -> bool:
        """Say whether the run is over with no event after the cursor left to stream."""
        run = await self._client.get_run(self.name)
        if run.state in TERMINAL_STATES and run.last_event_sequence <= self.last_sequence:
            self.final_run = run
            return True
        return False
