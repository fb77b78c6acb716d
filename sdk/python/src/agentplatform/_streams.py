"""Event streams that resume by themselves, and the reply a run's events spell out.

A cursor holds everything a stream knows (the last sequence seen, the terminal event, how
long it has been failing) and decides what to do next; `RunEventStream` (blocking) and
`AsyncRunEventStream` only wait for the network, so both follow the same rules:

- every event is yielded once, in order: a resumed stream may repeat what the broken one
  delivered, and the cursor drops those;
- on UNAVAILABLE (the connection broke, a control plane restarts or drains with
  SERVER_SHUTTING_DOWN) or an early end, the stream reopens after the cursor, with growing
  pauses, for up to `reconnect_window` seconds without progress; other errors are raised;
- a run's stream ends after the terminal event, or when the run had already ended at or
  before the cursor (`final_run` then holds the run); a session's stream does not end by
  itself.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncGenerator, Callable, Generator
from typing import Any

import grpc

from agentplatform._errors import APError, Unavailable, error_from_rpc, run_error
from agentplatform._transport import AsyncTransport, Retry, SyncTransport, rpc
from agentplatform.events import is_terminal
from agentplatform.v1 import run_pb2, run_service_pb2, run_service_pb2_grpc

# Told before a broken stream reopens: the error (None when the server only ended the stream
# early) and the cursor it resumes after.
ReconnectHook = Callable[[APError | None, int], None]

# A control-plane restart takes seconds; past this without progress the server is really gone.
RECONNECT_WINDOW_S = 120.0

TERMINAL_STATES = frozenset(
    {run_pb2.Run.State.COMPLETED, run_pb2.Run.State.FAILED, run_pb2.Run.State.CANCELLED}
)

_GET_RUN = rpc(run_service_pb2_grpc.RunServiceStub, lambda s: s.GetRun, retryable=True)


class Cursor:
    """Where a stream stands in its event log, and what it does after a break."""

    # Whether a run's terminal event ends the stream (a session's stream goes on).
    ends_at_terminal = False

    def __init__(
        self,
        name: str,
        after: int,
        *,
        on_reconnect: ReconnectHook | None,
        reconnect_window: float,
    ) -> None:
        """Start after position `after` of `name`'s log."""
        self.name = name
        self.position = after
        self.reconnects = 0
        self.terminal: run_pb2.RunEvent | None = None
        self.final_run: run_pb2.Run | None = None
        self._on_reconnect = on_reconnect
        self._window = reconnect_window
        # The stream that follows the cursor sets this to its client's retry settings.
        self.retry = Retry()
        self._pause: float | None = None
        self._failing_since: float | None = None

    @property
    def done(self) -> bool:
        """Say whether the stream has nothing more to yield."""
        return self.terminal is not None or self.final_run is not None

    def request(self) -> Any:
        """Return the request that opens the stream after the cursor."""
        raise NotImplementedError

    def open(self, stub: Any) -> Any:
        """Return the stub's streaming method."""
        raise NotImplementedError

    def position_of(self, event: run_pb2.RunEvent) -> int:
        """Return the event's place in this stream's log."""
        raise NotImplementedError

    def end_check(self) -> run_service_pb2.GetRunRequest | None:
        """Return the GetRun that tells whether an early end was the real end, if any."""
        return None

    def accept(self, event: run_pb2.RunEvent) -> bool:
        """Advance past `event`; say whether it is new (False for a repeat after a resume)."""
        position = self.position_of(event)
        if position <= self.position:
            return False
        self.position = position
        self._failing_since, self._pause = None, None
        if self.ends_at_terminal and is_terminal(event):
            self.terminal = event
        return True

    def ended(self, run: run_pb2.Run) -> bool:
        """Say whether the run is over with no event after the cursor left to stream."""
        if run.state in TERMINAL_STATES and run.last_event_sequence <= self.position:
            self.final_run = run
            return True
        return False

    def interrupted(self, error: APError | None) -> float:
        """Record a break and return the pause before reopening; raise if it is final."""
        if error is not None and not isinstance(error, Unavailable):
            raise error
        now = time.monotonic()
        self._failing_since = self._failing_since if self._failing_since is not None else now
        if now - self._failing_since > self._window:
            raise error or Unavailable(
                f"the event stream of {self.name} kept ending early",
                reason="UNAVAILABLE",
                code=grpc.StatusCode.UNAVAILABLE,
            )
        self.reconnects += 1
        if self._on_reconnect is not None:
            self._on_reconnect(error, self.position)
        pause = self._pause or self.retry.initial_backoff
        self._pause = min(pause * 2, self.retry.max_backoff)
        return pause / 2 + random.uniform(0, pause / 2)  # noqa: S311 - jitter, not crypto


class RunCursor(Cursor):
    """A cursor on one run's events, by `sequence`; it ends at the terminal event."""

    ends_at_terminal = True

    def request(self) -> run_service_pb2.StreamRunEventsRequest:
        """Return StreamRunEvents after the cursor."""
        return run_service_pb2.StreamRunEventsRequest(name=self.name, after_sequence=self.position)

    def open(self, stub: Any) -> Any:
        """Return RunService.StreamRunEvents."""
        return stub.StreamRunEvents

    def position_of(self, event: run_pb2.RunEvent) -> int:
        """Return the event's run sequence."""
        return event.sequence

    def end_check(self) -> run_service_pb2.GetRunRequest:
        """Return the GetRun of this run."""
        return run_service_pb2.GetRunRequest(name=self.name)


class SessionCursor(Cursor):
    """A cursor on every run's events of a session, by `session_sequence`; it never ends."""

    def request(self) -> run_service_pb2.StreamSessionEventsRequest:
        """Return StreamSessionEvents after the cursor."""
        return run_service_pb2.StreamSessionEventsRequest(
            name=self.name, after_session_sequence=self.position
        )

    def open(self, stub: Any) -> Any:
        """Return RunService.StreamSessionEvents."""
        return stub.StreamSessionEvents

    def position_of(self, event: run_pb2.RunEvent) -> int:
        """Return the event's session sequence."""
        return event.session_sequence


class _StreamState:
    """The cursor's facts, as the stream classes show them."""

    def __init__(self, cursor: Cursor) -> None:
        self._cursor = cursor

    @property
    def name(self) -> str:
        """Return the run's (or session's) name."""
        return self._cursor.name

    @property
    def last_sequence(self) -> int:
        """Return the cursor: the last sequence (session_sequence for a session) yielded.

        Pass it as `after_sequence` to resume later from exactly here.
        """
        return self._cursor.position

    @property
    def terminal(self) -> run_pb2.RunEvent | None:
        """Return the terminal event (run.completed, run.failed, run.cancelled) once seen."""
        return self._cursor.terminal

    @property
    def final_run(self) -> run_pb2.Run | None:
        """Return the run when it had ended at or before the cursor, so no terminal came."""
        return self._cursor.final_run

    @property
    def reconnects(self) -> int:
        """Return how many times the stream was reopened after a break."""
        return self._cursor.reconnects


class RunEventStream(_StreamState):
    """Iterate a run's (or a session's) events, resuming after breaks; see the module doc.

    Iterate it once (`for event in stream`); break out of the loop to stop early.
    """

    def __init__(self, transport: SyncTransport, cursor: Cursor) -> None:
        """Follow `cursor`'s log over `transport`; nothing is sent until iteration."""
        super().__init__(cursor)
        self._transport = transport
        cursor.retry = transport.retry

    def __iter__(self) -> Generator[run_pb2.RunEvent, None, None]:
        """Yield each event once, in order, until the terminal one."""
        cursor, transport = self._cursor, self._transport
        while not cursor.done:
            error: APError | None = None
            call = transport.open_stream(
                cursor.open, run_service_pb2_grpc.RunServiceStub, cursor.request()
            )
            try:
                for response in call:
                    if cursor.accept(response.event):
                        yield response.event
                        if cursor.done:
                            return
            except grpc.RpcError as err:
                error = error_from_rpc(err)
            finally:
                call.cancel()  # type: ignore[no-untyped-call]
            check = cursor.end_check() if error is None else None
            if check is not None:
                try:
                    if cursor.ended(transport.call(_GET_RUN, check)):
                        return
                except Unavailable as err:
                    error = err
            time.sleep(cursor.interrupted(error))


class AsyncRunEventStream(_StreamState):
    """Iterate a run's (or a session's) events, resuming after breaks; see the module doc.

    Iterate it once (`async for event in stream`); break out of the loop to stop early.
    """

    def __init__(self, transport: AsyncTransport, cursor: Cursor) -> None:
        """Follow `cursor`'s log over `transport`; nothing is sent until iteration."""
        super().__init__(cursor)
        self._transport = transport
        cursor.retry = transport.retry

    async def __aiter__(self) -> AsyncGenerator[run_pb2.RunEvent, None]:
        """Yield each event once, in order, until the terminal one."""
        cursor, transport = self._cursor, self._transport
        while not cursor.done:
            error: APError | None = None
            call = transport.open_stream(
                cursor.open, run_service_pb2_grpc.RunServiceStub, cursor.request()
            )
            try:
                async for response in call:
                    if cursor.accept(response.event):
                        yield response.event
                        if cursor.done:
                            return
            except grpc.RpcError as err:
                error = error_from_rpc(err)
            finally:
                call.cancel()
            check = cursor.end_check() if error is None else None
            if check is not None:
                try:
                    if cursor.ended(await transport.call(_GET_RUN, check)):
                        return
                except Unavailable as err:
                    error = err
            await asyncio.sleep(cursor.interrupted(error))


class Reply:
    """Collect a run's reply from its events: the final attempt's output text.

    A run that restarts on another worker (`run.attempt_started`) starts its reply over.
    """

    def __init__(self, run: str) -> None:
        """Collect the reply of `run`."""
        self.run = run
        self._attempt = 0
        self._parts: list[str] = []
        self._terminal: run_pb2.RunEvent | None = None

    def add(self, event: run_pb2.RunEvent) -> None:
        """Take one event of the run into account."""
        kind = event.WhichOneof("payload")
        if kind == "run_attempt_started":
            self._attempt = max(self._attempt, event.attempt)
            self._parts.clear()
        elif kind == "output_text_delta" and event.attempt >= self._attempt:
            self._parts.append(event.output_text_delta.text)
        elif is_terminal(event):
            self._terminal = event

    def text(self) -> str:
        """Return the reply; raise `RunFailed` or `RunCancelled` if the run did not complete."""
        terminal = self._terminal
        kind = terminal.WhichOneof("payload") if terminal is not None else None
        if kind == "run_completed":
            return "".join(self._parts)
        if terminal is not None and kind == "run_cancelled":
            raise run_error(self.run, "", terminal.run_cancelled.reason, cancelled=True)
        if terminal is not None and kind == "run_failed":
            failed = terminal.run_failed
            raise run_error(self.run, failed.reason, failed.message, cancelled=False)
        raise run_error(self.run, "", "the run ended without a terminal event", cancelled=False)
