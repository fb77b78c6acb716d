"""Run-event fan-out: in-process channels fed by local commits and by other replicas' NOTIFYs.

    worker ─append─► this replica ─commit─► publish() ──────────────► RunChannel ─► subscribers
                                    └─► Notifier ─pg_notify─► other replicas' Listener ─► hint()
                                                                         hint() ─► one DB read

The database is the source of truth: a subscriber replays from it, the in-memory channel only
saves reads, and a per-process poller re-checks runs whose channels have gone quiet so that a
lost notification costs latency, never an event. No subscriber holds a database connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from datetime import datetime
from typing import Any

import asyncpg
import structlog
from agentplatform.v1 import run_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from services.control_plane import store
from services.rpc.names import run_event_name

log = structlog.get_logger()

EVENTS_CHANNEL = "ap_run_events"
QUEUE_CHANNEL = "ap_runs_queued"
TERMINAL_TYPES = frozenset({"run.completed", "run.failed", "run.cancelled"})
_NOTIFY_PAYLOAD_LIMIT = 7900  # Postgres refuses NOTIFY payloads of 8000 bytes or more
_CHANNEL_BUFFER = 4096
_REPLAY_PAGE = 500


def event_from_row(session_id: uuid.UUID, run_id: uuid.UUID, row: store.Record) -> run_pb2.RunEvent:
    """Rebuild a stored event with its name and time."""
    event = run_pb2.RunEvent.FromString(row["body"])
    event.sequence = row["sequence"]
    event.attempt = row["attempt"]
    event.name = run_event_name(session_id, run_id, row["sequence"])
    event.create_time.FromDatetime(row["create_time"])
    return event


def stamp(event: run_pb2.RunEvent, session_id: uuid.UUID, run_id: uuid.UUID, at: datetime) -> None:
    """Give a freshly stored event its name and time, as a replay would show them."""
    event.name = run_event_name(session_id, run_id, event.sequence)
    ts = Timestamp()
    ts.FromDatetime(at)
    event.create_time.CopyFrom(ts)


class RunChannel:
    """The in-process view of one run's event log, shared by that run's local subscribers."""

    def __init__(self, run_id: uuid.UUID, session_id: uuid.UUID) -> None:
        self.run_id = run_id
        self.session_id = session_id
        self.subscribers = 0
        self.known_sequence = 0
        self.terminal_sequence: int | None = None
        self._events: dict[int, run_pb2.RunEvent] = {}
        self._changed = asyncio.Event()
        self.last_change = asyncio.get_running_loop().time()

    @property
    def changed(self) -> asyncio.Event:
        """Return the event set at the next change; take it before reading to miss nothing."""
        return self._changed

    def _wake(self) -> None:
        self.last_change = asyncio.get_running_loop().time()
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def add(self, events: Iterable[run_pb2.RunEvent]) -> None:
        """Remember stored events and wake the subscribers."""
        for event in events:
            self._events[event.sequence] = event
            self.known_sequence = max(self.known_sequence, event.sequence)
            if event.type in TERMINAL_TYPES:
                self.terminal_sequence = event.sequence
        while len(self._events) > _CHANNEL_BUFFER:
            del self._events[min(self._events)]
        self._wake()

    def observe(self, sequence: int) -> None:
        """Record that the log reaches at least this sequence."""
        if sequence > self.known_sequence:
            self.known_sequence = sequence
            self._wake()

    def cached_after(self, cursor: int) -> list[run_pb2.RunEvent] | None:
        """Return the known events after the cursor, or None when they must be read."""
        events = []
        for sequence in range(cursor + 1, self.known_sequence + 1):
            event = self._events.get(sequence)
            if event is None:
                return None
            events.append(event)
        return events


class EventBus:
    """Feed every local subscriber of a run from one channel per run."""

    def __init__(self, pool: asyncpg.Pool, *, poll_interval: float) -> None:
        self._pool = pool
        self._poll_interval = poll_interval
        self._channels: dict[uuid.UUID, RunChannel] = {}
        self._refreshing: dict[uuid.UUID, asyncio.Task[None]] = {}
        self._poller: asyncio.Task[None] | None = None

    @property
    def subscriber_count(self) -> int:
        """Count the open subscriptions in this process."""
        return sum(c.subscribers for c in self._channels.values())

    def start(self) -> None:
        """Start the safety-net poller."""
        self._poller = asyncio.create_task(self._poll_forever(), name="event-bus-poller")

    async def stop(self) -> None:
        """Stop background work."""
        tasks = [t for t in [self._poller, *self._refreshing.values()] if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def publish(self, run_id: uuid.UUID, events: list[run_pb2.RunEvent]) -> None:
        """Hand events this process just committed to the run's local subscribers."""
        channel = self._channels.get(run_id)
        if channel is not None:
            channel.add(events)

    def hint(self, run_id: uuid.UUID, sequence: int) -> None:
        """React to another replica's commit: read the new events once for all subscribers."""
        channel = self._channels.get(run_id)
        if channel is not None and sequence > channel.known_sequence:
            self._refresh(channel)

    def refresh_all(self) -> None:
        """Re-read every watched run, e.g. after the listener reconnected."""
        for channel in list(self._channels.values()):
            self._refresh(channel)

    def _refresh(self, channel: RunChannel) -> None:
        if channel.run_id in self._refreshing:
            return
        task = asyncio.create_task(self._read_new(channel))
        self._refreshing[channel.run_id] = task
        task.add_done_callback(lambda _t: self._refreshing.pop(channel.run_id, None))

    async def _read_new(self, channel: RunChannel) -> None:
        try:
            async with self._pool.acquire() as conn:
                rows = await store.run_event_list(
                    conn, channel.run_id, after_sequence=channel.known_sequence, limit=_REPLAY_PAGE
                )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as err:
            log.warning("event_refresh_failed", run_id=str(channel.run_id), error=str(err))
            return
        if rows:
            channel.add(event_from_row(channel.session_id, channel.run_id, r) for r in rows)

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self._poll_interval)
            now = asyncio.get_running_loop().time()
            quiet = {
                run_id: c
                for run_id, c in self._channels.items()
                if now - c.last_change >= self._poll_interval
            }
            if not quiet:
                continue
            try:
                async with self._pool.acquire() as conn:
                    rows = await conn.fetch(
                        "SELECT id, last_event_sequence FROM runs WHERE id = ANY($1::uuid[])",
                        list(quiet),
                    )
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as err:
                log.warning("event_poll_failed", error=str(err))
                continue
            for row in rows:
                self.hint(row["id"], row["last_event_sequence"])

    async def _read(self, channel: RunChannel, cursor: int) -> list[run_pb2.RunEvent]:
        async with self._pool.acquire() as conn:
            rows = await store.run_event_list(
                conn, channel.run_id, after_sequence=cursor, limit=_REPLAY_PAGE
            )
        return [event_from_row(channel.session_id, channel.run_id, r) for r in rows]

    async def stream(
        self,
        session_id: uuid.UUID,
        run_id: uuid.UUID,
        after_sequence: int,
        *,
        terminal_sequence: int | None,
    ) -> AsyncIterator[run_pb2.RunEvent]:
        """Yield the run's events after the cursor, stored ones then live ones, to the terminal.

        The subscription opens before the replay, so an event committed in between is seen.
        A cursor at or past the terminal event ends the stream with nothing to send.
        """
        channel = self._channels.get(run_id)
        if channel is None:
            channel = self._channels[run_id] = RunChannel(run_id, session_id)
        if terminal_sequence is not None and channel.terminal_sequence is None:
            channel.terminal_sequence = terminal_sequence
        channel.subscribers += 1
        try:
            cursor, must_read = after_sequence, True
            while True:
                if channel.terminal_sequence is not None and cursor >= channel.terminal_sequence:
                    return
                changed = channel.changed
                batch = None if must_read else channel.cached_after(cursor)
                if batch is None:
                    batch = await self._read(channel, cursor)
                    must_read = len(batch) == _REPLAY_PAGE
                    if batch:
                        channel.observe(batch[-1].sequence)
                for event in batch:
                    yield event
                    cursor = event.sequence
                    if event.type in TERMINAL_TYPES:
                        return
                if not batch:
                    await changed.wait()
        finally:
            channel.subscribers -= 1
            if channel.subscribers == 0:
                self._channels.pop(run_id, None)


class Notifier:
    """Tell other replicas about commits with coalesced NOTIFYs, outside write transactions."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._pending: dict[uuid.UUID, int] = {}
        self._queued = False
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start sending."""
        self._task = asyncio.create_task(self._send_forever(), name="notifier")

    async def stop(self) -> None:
        """Stop sending."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def run_events(self, run_id: uuid.UUID, last_sequence: int) -> None:
        """Announce that a run's log now reaches `last_sequence`."""
        self._pending[run_id] = max(last_sequence, self._pending.get(run_id, 0))
        self._wake.set()

    def run_queued(self) -> None:
        """Announce that a run became claimable."""
        self._queued = True
        self._wake.set()

    def _payloads(self) -> list[str]:
        payloads, current = [], ""
        for run_id, seq in self._pending.items():
            item = f"{run_id}:{seq}"
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
            try:
                async with self._pool.acquire() as conn:
                    if queued:
                        await conn.execute("SELECT pg_notify($1, '')", QUEUE_CHANNEL)
                    for payload in payloads:
                        await conn.execute("SELECT pg_notify($1, $2)", EVENTS_CHANNEL, payload)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as err:
                # Peers' pollers cover a lost notification; it costs latency, not events.
                log.warning("notify_failed", error=str(err))


class Listener:
    """Hold the process's one LISTEN connection and reconnect it by itself."""

    def __init__(
        self,
        dsn: str,
        *,
        on_events: Callable[[uuid.UUID, int], None],
        on_queued: Callable[[], None],
        on_reconnect: Callable[[], None],
    ) -> None:
        self._dsn = dsn
        self._on_events = on_events
        self._on_queued = on_queued
        self._on_reconnect = on_reconnect
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()

    def start(self) -> None:
        """Start listening."""
        self._task = asyncio.create_task(self._listen_forever(), name="listener")

    async def stop(self) -> None:
        """Stop listening."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _handle(self, _conn: Any, _pid: int, channel: str, payload: object) -> None:
        if channel == QUEUE_CHANNEL:
            self._on_queued()
            return
        for item in str(payload).split(","):
            run_id, _, seq = item.partition(":")
            try:
                self._on_events(uuid.UUID(run_id), int(seq))
            except ValueError:
                log.warning("notify_payload_malformed", payload=item[:100])

    async def _listen_forever(self) -> None:
        backoff = 0.05
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(self._dsn)
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _c, lost=lost: lost.set())
                await conn.add_listener(EVENTS_CHANNEL, self._handle)
                await conn.add_listener(QUEUE_CHANNEL, self._handle)
                self.connected.set()
                backoff = 0.05
                # Whatever was notified while we were away is read from the database now.
                self._on_reconnect()
                self._on_queued()
                await lost.wait()
                log.warning("listener_connection_lost")
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as err:
                log.warning("listener_connect_failed", error=str(err))
            finally:
                self.connected.clear()
                if conn is not None and not conn.is_closed():
                    conn.terminate()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)


class ClaimWaiters:
    """Workers waiting in ClaimRun; a new run wakes one of them at once."""

    def __init__(self) -> None:
        self._waiters: list[asyncio.Future[None]] = []

    def wake_one(self) -> None:
        """Wake the longest-waiting worker, if any."""
        while self._waiters:
            waiter = self._waiters.pop(0)
            if not waiter.done():
                waiter.set_result(None)
                return

    async def wait(self, timeout: float) -> None:
        """Wait until woken or the timeout passes."""
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            pass
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
