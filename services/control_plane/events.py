"""Run-event fan-out: in-process channels fed by local commits and by other replicas' NOTIFYs.

    worker ─append─► this replica ─commit─► publish() ──────────────► RunChannel ─► subscribers
                                    └─► Notifier ─pg_notify─► other replicas' Listener ─► hint()
                                                                         hint() ─► one DB read

The database is the source of truth: a subscriber replays from it, the in-memory channel only
saves reads, and a per-process poller re-checks runs whose channels have gone quiet so that a
lost notification costs latency, never an event. No subscriber holds a database connection.
A stream runs as a principal (revocation.Watch) and ends when that principal loses the right
to it; the Listener also carries those changes (ap_principals) to revocation.Revocations.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from datetime import datetime
from typing import Any

import asyncpg
import grpc
import structlog
from agentplatform.events import event_type, is_terminal
from agentplatform.v1 import run_pb2

from services.control_plane import metrics, store
from services.control_plane.revocation import Watch
from services.rpc.errors import DATABASE_ERRORS, ApiError, Reason
from services.rpc.names import run_event_name

log = structlog.get_logger()

EVENTS_CHANNEL = "ap_run_events"
QUEUE_CHANNEL = "ap_runs_queued"
_NOTIFY_PAYLOAD_LIMIT = 7900  # Postgres refuses NOTIFY payloads of 8000 bytes or more
# Sends notifications in order, one per (channel, payload) pair, in one statement.
_NOTIFY_ALL = (
    "SELECT pg_notify(n.channel, n.payload)"
    " FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS n(channel, payload, i) ORDER BY n.i"
)
_CHANNEL_BUFFER = 4096
_REPLAY_PAGE = 500


def place(
    event: run_pb2.RunEvent,
    *,
    session_id: uuid.UUID,
    run_id: uuid.UUID,
    sequence: int,
    session_sequence: int,
    attempt: int,
    create_time: datetime,
) -> None:
    """Give an event its name, positions, attempt and time: what a stored event carries.

    Replays and live deliveries both go through here, so a live event is byte for byte the
    one ListRunEvents returns later.
    """
    event.sequence = sequence
    event.session_sequence = session_sequence
    event.attempt = attempt
    event.name = run_event_name(session_id, run_id, sequence)
    event.create_time.FromDatetime(create_time)


def event_from_row(row: store.Record) -> run_pb2.RunEvent:
    """Rebuild a stored event from its row."""
    event = run_pb2.RunEvent.FromString(row["body"])
    place(
        event,
        session_id=row["session_id"],
        run_id=row["run_id"],
        sequence=row["sequence"],
        session_sequence=row["session_sequence"],
        attempt=row["attempt"],
        create_time=row["create_time"],
    )
    return event


def to_store(events: Iterable[run_pb2.RunEvent]) -> list[store.NewEvent]:
    """Serialize events for storage: typed from their payload, without what `place` adds."""
    stored = []
    for event in events:
        event.type = event_type(event)
        event.ClearField("name")
        event.ClearField("create_time")
        stored.append(store.NewEvent(event.type, event.SerializeToString()))
    return stored


def shutting_down() -> ApiError:
    """Build the status that tells a streaming client to reconnect elsewhere."""
    return ApiError(
        grpc.StatusCode.UNAVAILABLE,
        Reason.SERVER_SHUTTING_DOWN,
        "The server is shutting down; reconnect and resume from the last sequence you saw.",
    )


class LogDeletedError(Exception):
    """The run or session whose log a stream follows was deleted (DeleteSession)."""


Position = Callable[[run_pb2.RunEvent], int]


def run_position(event: run_pb2.RunEvent) -> int:
    """Return an event's place in its run's log."""
    return event.sequence


def session_position(event: run_pb2.RunEvent) -> int:
    """Return an event's place in its session's log."""
    return event.session_sequence


class LogChannel:
    """The in-process view of one event log (a run's or a session's), shared by its subscribers."""

    def __init__(self, key: uuid.UUID, position: Position) -> None:
        self.key = key
        self.position = position
        self.subscribers = 0
        self.known = 0
        self.terminal: int | None = None
        self.deleted = False
        self._events: dict[int, run_pb2.RunEvent] = {}
        self._changed = asyncio.Event()
        self.last_change = asyncio.get_running_loop().time()
        # Replays go through here one at a time: a read that a subscriber needs is made once
        # and remembered, and the subscribers queued behind it are served from memory.
        self.reading = asyncio.Lock()
        # Whether a read from the database completed since the channel opened. From then on
        # the channel is as current as it is for any live subscriber (local commits, peers'
        # notifications, the poller), so a joiner whose cursor the buffer covers needs none.
        self.primed = False

    @property
    def changed(self) -> asyncio.Event:
        """Return the event set at the next change; take it before reading to miss nothing."""
        return self._changed

    def wake(self) -> None:
        """Wake every subscriber to look again."""
        self.last_change = asyncio.get_running_loop().time()
        self.interrupt()

    def interrupt(self) -> None:
        """Wake every subscriber without counting it as a change of the log (a stream ended)."""
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def add(self, events: Iterable[run_pb2.RunEvent]) -> None:
        """Remember stored events and wake the subscribers."""
        for event in events:
            at = self.position(event)
            self._events[at] = event
            self.known = max(self.known, at)
            if self.position is run_position and is_terminal(event):
                self.terminal = at
        while len(self._events) > _CHANNEL_BUFFER:
            del self._events[min(self._events)]
        self.wake()

    def fill(self, events: list[run_pb2.RunEvent]) -> None:
        """Remember events read from the database by a replay, which has sent them itself."""
        for event in events:
            at = self.position(event)
            self._events[at] = event
            if self.position is run_position and is_terminal(event):
                self.terminal = at
        while len(self._events) > _CHANNEL_BUFFER:
            del self._events[min(self._events)]
        self.primed = True
        if events:
            self.observe(self.position(events[-1]))

    def delete(self) -> None:
        """End every subscriber's stream: the log is gone."""
        self.deleted = True
        self.wake()

    def observe(self, position: int) -> None:
        """Record that the log reaches at least this position."""
        if position > self.known:
            self.known = position
            self.wake()

    def cached_after(self, cursor: int) -> list[run_pb2.RunEvent] | None:
        """Return the known events after the cursor, or None when they must be read."""
        events = []
        for at in range(cursor + 1, self.known + 1):
            event = self._events.get(at)
            if event is None:
                return None
            events.append(event)
        return events


Reader = Callable[[int], Awaitable[list[store.Record]]]


class EventBus:
    """Feed every local subscriber of a run or session from one channel per log."""

    def __init__(self, pool: asyncpg.Pool, *, poll_interval: float) -> None:
        self._pool = pool
        self._poll_interval = poll_interval
        self._runs: dict[uuid.UUID, LogChannel] = {}
        self._sessions: dict[uuid.UUID, LogChannel] = {}
        self._refreshing: dict[tuple[str, uuid.UUID], asyncio.Task[None]] = {}
        self._poller: asyncio.Task[None] | None = None
        self._closing = False

    def start(self) -> None:
        """Start the safety-net poller."""
        self._poller = asyncio.create_task(self._poll_forever(), name="event-bus-poller")

    def close(self) -> None:
        """End every stream with a status that tells its client to reconnect."""
        self._closing = True
        for channel in [*self._runs.values(), *self._sessions.values()]:
            channel.wake()

    async def stop(self) -> None:
        """Stop background work."""
        self.close()
        tasks = [t for t in [self._poller, *self._refreshing.values()] if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def publish(
        self, run_id: uuid.UUID, session_id: uuid.UUID, events: list[run_pb2.RunEvent]
    ) -> None:
        """Hand events this process just committed to the local subscribers."""
        if (run := self._runs.get(run_id)) is not None:
            run.add(events)
        if (session := self._sessions.get(session_id)) is not None:
            session.add(events)

    def end_deleted(self, session_id: uuid.UUID, run_ids: Iterable[uuid.UUID]) -> None:
        """End the local streams of a session deleted with these runs (peers: by the poller)."""
        channels = [self._sessions.get(session_id), *(self._runs.get(r) for r in run_ids)]
        for channel in channels:
            if channel is not None:
                channel.delete()

    def hint(
        self, run_id: uuid.UUID, sequence: int, session_id: uuid.UUID, session_sequence: int
    ) -> None:
        """React to another replica's commit: read the new events once for all subscribers."""
        run = self._runs.get(run_id)
        if run is not None and sequence > run.known:
            self._refresh("run", run)
        session = self._sessions.get(session_id)
        if session is not None and session_sequence > session.known:
            self._refresh("session", session)

    def refresh_all(self) -> None:
        """Re-read every watched log, e.g. after the listener reconnected."""
        for channel in list(self._runs.values()):
            self._refresh("run", channel)
        for channel in list(self._sessions.values()):
            self._refresh("session", channel)

    def _refresh(self, kind: str, channel: LogChannel) -> None:
        key = (kind, channel.key)
        if key in self._refreshing:
            return
        task = asyncio.create_task(self._read_new(kind, channel))
        self._refreshing[key] = task
        task.add_done_callback(lambda _t: self._refreshing.pop(key, None))

    async def _read_new(self, kind: str, channel: LogChannel) -> None:
        try:
            rows = await self._reader(kind, channel.key)(channel.known)
        except DATABASE_ERRORS as err:
            log.warning("event_refresh_failed", key=str(channel.key), error=str(err))
            return
        if rows:
            channel.add(event_from_row(r) for r in rows)

    def _reader(self, kind: str, key: uuid.UUID) -> Reader:
        async def read(cursor: int) -> list[store.Record]:
            async with self._pool.acquire() as conn:
                if kind == "run":
                    return await store.run_event_list(
                        conn, key, after_sequence=cursor, limit=_REPLAY_PAGE
                    )
                return await store.run_event_list_by_session(
                    conn, key, after_session_sequence=cursor, limit=_REPLAY_PAGE
                )

        return read

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self._poll_interval)
            try:
                await self._poll_quiet("run", self._runs)
                await self._poll_quiet("session", self._sessions)
            except DATABASE_ERRORS as err:
                log.warning("event_poll_failed", error=str(err))

    async def _poll_quiet(self, kind: str, channels: dict[uuid.UUID, LogChannel]) -> None:
        now = asyncio.get_running_loop().time()
        quiet = [k for k, c in channels.items() if now - c.last_change >= self._poll_interval]
        if not quiet:
            return
        last_sequences = store.run_last_sequences if kind == "run" else store.session_last_sequences
        async with self._pool.acquire() as conn:
            rows = await last_sequences(conn, quiet)
        for row in rows:
            channel = channels.get(row["id"])
            if channel is not None and row["last_event_sequence"] > channel.known:
                self._refresh(kind, channel)
        # A log that has no row any more was deleted, perhaps through another replica.
        for key in set(quiet) - {row["id"] for row in rows}:
            if (channel := channels.get(key)) is not None:
                channel.delete()

    async def stream_run(
        self,
        run_id: uuid.UUID,
        after_sequence: int,
        *,
        terminal_sequence: int | None,
        watch: Watch | None = None,
    ) -> AsyncIterator[run_pb2.RunEvent]:
        """Yield the run's events after the cursor, stored ones then live ones, to the terminal.

        A cursor at or past the terminal event ends the stream with nothing to send; a
        `watch` that ends raises its error.
        """
        channel = self._runs.get(run_id)
        if channel is None:
            channel = self._runs[run_id] = LogChannel(run_id, run_position)
        if terminal_sequence is not None and channel.terminal is None:
            channel.terminal = terminal_sequence
        try:
            reader = self._reader("run", run_id)
            async for event in self._follow(channel, after_sequence, reader, watch):
                yield event
        finally:
            self._release(self._runs, channel)

    async def stream_session(
        self, session_id: uuid.UUID, after_session_sequence: int, *, watch: Watch | None = None
    ) -> AsyncIterator[run_pb2.RunEvent]:
        """Yield the events of every run of the session after the cursor.

        It never ends by itself: only when the client leaves, the server stops, or a `watch`
        ends (raising its error).
        """
        channel = self._sessions.get(session_id)
        if channel is None:
            channel = self._sessions[session_id] = LogChannel(session_id, session_position)
        reader = self._reader("session", session_id)
        try:
            async for event in self._follow(channel, after_session_sequence, reader, watch):
                yield event
        finally:
            self._release(self._sessions, channel)

    def _release(self, channels: dict[uuid.UUID, LogChannel], channel: LogChannel) -> None:
        channel.subscribers -= 1
        metrics.STREAM_SUBSCRIBERS.dec()
        if channel.subscribers == 0 and channels.get(channel.key) is channel:
            del channels[channel.key]

    async def _follow(
        self, channel: LogChannel, cursor: int, read: Reader, watch: Watch | None
    ) -> AsyncIterator[run_pb2.RunEvent]:
        # The subscription opens before the replay, so an event committed in between is seen.
        channel.subscribers += 1
        metrics.STREAM_SUBSCRIBERS.inc()
        if watch is not None:
            watch.on_end = channel.interrupt
        must_read = True
        while True:
            if self._closing:
                raise shutting_down()
            if watch is not None and watch.ended is not None:
                raise watch.ended
            if channel.terminal is not None and cursor >= channel.terminal:
                return
            changed = channel.changed
            batch = None if must_read else channel.cached_after(cursor)
            if batch is None:
                batch, must_read = await self._replay(channel, cursor, read)
            for event in batch:
                if watch is not None and watch.ended is not None:
                    raise watch.ended
                yield event
                cursor = channel.position(event)
                if channel.position is run_position and is_terminal(event):
                    return
            if not batch:
                # What was stored before the delete has been sent; nothing more will come.
                if channel.deleted:
                    raise LogDeletedError()
                await changed.wait()

    async def _replay(
        self, channel: LogChannel, cursor: int, read: Reader
    ) -> tuple[list[run_pb2.RunEvent], bool]:
        """Return the events after the cursor and whether more may be stored beyond them.

        One replay of a channel at a time: 1,000 subscribers joining a run that is streaming
        make one database read between them, not 1,000 (each of which queued for one of the
        pool's connections and rebuilt the same events).
        """
        async with channel.reading:
            if channel.primed:
                cached = channel.cached_after(cursor)
                if cached is not None:
                    return cached, False
            rows = await read(cursor)
            batch = [event_from_row(r) for r in rows]
            channel.fill(batch)
            return batch, len(rows) == _REPLAY_PAGE


class Notifier:
    """Tell other replicas about commits with coalesced NOTIFYs, outside write transactions."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._pending: dict[uuid.UUID, tuple[int, uuid.UUID, int]] = {}
        self._queued = False
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # The server pids of the connections this process notified on: its own
        # ap_runs_queued comes back through its Listener, and the local create that sent it
        # has woken a local waiter already.
        self.own_backends: set[int] = set()

    def start(self) -> None:
        """Start sending."""
        self._task = asyncio.create_task(self._send_forever(), name="notifier")

    async def stop(self) -> None:
        """Stop sending."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def run_events(
        self, run_id: uuid.UUID, last_sequence: int, session_id: uuid.UUID, session_sequence: int
    ) -> None:
        """Announce that a run's log (and its session's) now reaches these positions."""
        known = self._pending.get(run_id)
        if known is None or known[0] < last_sequence:
            self._pending[run_id] = (last_sequence, session_id, session_sequence)
        self._wake.set()

    def run_queued(self) -> None:
        """Announce that a run became claimable."""
        self._queued = True
        self._wake.set()

    def _payloads(self) -> list[str]:
        payloads, current = [], ""
        for run_id, (seq, session_id, session_seq) in self._pending.items():
            item = f"{run_id}:{seq}:{session_id}:{session_seq}"
            if current and len(current) + len(item) + 1 > _NOTIFY_PAYLOAD_LIMIT:
                payloads.append(current)
                current = ""
            current = f"{current},{item}" if current else item
        if current:
            payloads.append(current)
        return payloads

    async def _send_forever(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            payloads, queued = self._payloads(), self._queued
            self._pending, self._queued = {}, False
            channels = [EVENTS_CHANNEL] * len(payloads)
            if queued:
                channels.insert(0, QUEUE_CHANNEL)
                payloads.insert(0, "")
            if not channels:
                continue
            try:
                async with self._pool.acquire() as conn:
                    if queued:
                        self.own_backends.add(conn.get_server_pid())
                    # One statement (one round trip) for all of a wake's notifications, the
                    # queue's first; Postgres delivers them in this order at its commit.
                    await conn.execute(_NOTIFY_ALL, channels, payloads)
            except DATABASE_ERRORS as err:
                # Peers' pollers cover a lost notification; it costs latency, not events.
                log.warning("notify_failed", error=str(err))


class Listener:
    """Hold the process's one LISTEN connection and reconnect it by itself."""

    def __init__(
        self,
        dsn: str,
        *,
        on_events: Callable[[uuid.UUID, int, uuid.UUID, int], None],
        on_queued: Callable[[], None],
        on_principal: Callable[[str], None],
        on_principal_heard: Callable[[str], None],
        on_reconnect: Callable[[], None],
        on_lost: Callable[[], None],
        own_backends: set[int] | None = None,
    ) -> None:
        self._dsn = dsn
        self._own_backends = own_backends if own_backends is not None else set()
        self._on_events = on_events
        self._on_queued = on_queued
        self._on_principal = on_principal
        self._on_principal_heard = on_principal_heard
        self._on_reconnect = on_reconnect
        self._on_lost = on_lost
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()
        self.reconnects = 0
        self._reconnected = asyncio.Event()

    def start(self) -> None:
        """Start listening."""
        self._task = asyncio.create_task(self._listen_forever(), name="listener")

    async def stop(self) -> None:
        """Stop listening."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def wait_reconnected(self, *, after: int) -> None:
        """Wait until the listener has connected more than `after` times."""
        while self.reconnects <= after:
            await self._reconnected.wait()

    def _handle(self, _conn: Any, pid: int, channel: str, payload: object) -> None:
        if channel == QUEUE_CHANNEL:
            if pid not in self._own_backends:
                self._on_queued()
            return
        if channel == store.PRINCIPALS_CHANNEL:
            self._on_principal(str(payload))
            return
        if channel == store.PRINCIPALS_HEARD_CHANNEL:
            self._on_principal_heard(str(payload))
            return
        for item in str(payload).split(","):
            try:
                run_id, seq, session_id, session_seq = item.split(":")
                self._on_events(
                    uuid.UUID(run_id), int(seq), uuid.UUID(session_id), int(session_seq)
                )
            except ValueError:
                log.warning("notify_payload_malformed", payload=item[:100])

    async def _listen_forever(self) -> None:
        backoff = 0.05
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(
                    self._dsn, server_settings={"application_name": store.LISTENER_APPLICATION}
                )
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _c, lost=lost: lost.set())
                await conn.add_listener(EVENTS_CHANNEL, self._handle)
                await conn.add_listener(QUEUE_CHANNEL, self._handle)
                await conn.add_listener(store.PRINCIPALS_CHANNEL, self._handle)
                await conn.add_listener(store.PRINCIPALS_HEARD_CHANNEL, self._handle)
                self.connected.set()
                self.reconnects += 1
                self._reconnected.set()
                self._reconnected = asyncio.Event()
                backoff = 0.05
                # Whatever was notified while we were away is read from the database now.
                self._on_reconnect()
                self._on_queued()
                await lost.wait()
                log.warning("listener_connection_lost")
            except DATABASE_ERRORS as err:
                log.warning("listener_connect_failed", error=str(err))
            finally:
                if self.connected.is_set():
                    self._on_lost()
                self.connected.clear()
                if conn is not None and not conn.is_closed():
                    conn.terminate()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)


class ClaimWaiters:
    """Workers waiting in ClaimRun; a new run wakes one of them at once.

    While they wait, one claim attempt per poll interval among all of this process's
    waiters is the safety net for a run no wake announced (a lost NOTIFY): each waiter
    that times out asks `take_poll`, and only the first in an interval tries. A poll that
    finds a run wakes one more waiter, which does the same, until the queue is empty.
    """

    def __init__(self) -> None:
        self._waiters: list[asyncio.Future[bool]] = []
        self._last_poll = -math.inf

    def wake_one(self, *, cascade: bool = False) -> None:
        """Wake the longest-waiting worker, if any; `cascade`: to go on draining a poll's find."""
        while self._waiters:
            waiter = self._waiters.pop(0)
            if not waiter.done():
                waiter.set_result(cascade)
                return

    def take_poll(self, interval: float) -> bool:
        """Return whether this waiter should make the interval's safety-net claim attempt."""
        now = asyncio.get_running_loop().time()
        if now - self._last_poll < interval:
            return False
        self._last_poll = now
        return True

    async def wait(self, timeout: float) -> bool | None:
        """Wait until woken (True: by a poll's cascade) or the timeout passes (None)."""
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            return await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            return None
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
