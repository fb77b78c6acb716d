"""Server-streaming RPCs as server-sent events, fanned out from shared upstream feeds.

A stream RPC's request has one integer field `after_<x>`, the cursor, and its response one
message field, the item, whose `<x>` is the item's position and whose `type` names it:
StreamRunEvents (after_sequence ↔ event.sequence), StreamSessionEvents
(after_session_sequence ↔ event.session_sequence). Each item becomes one event
`id: <x>`, `event: <type>`, `data: <canonical JSON>`; `Last-Event-ID` (or `?after=`) sets
the cursor, so a reconnecting EventSource resumes exactly after the last event it saw.

    subscriber ─┐
    subscriber ─┼─ Feed: one upstream gRPC stream + a ring of recent events ─ control plane
    subscriber ─┘

Subscribers with the same RPC and request (cursor aside) share a feed, whatever their
credentials, as long as its ring still holds everything after their cursor. The control
plane still decides for each of them: before joining, a subscriber calls the resource's Get
(the stream's path template without its `:verb`) with its own credentials, and joins only
if that succeeds; a stream with no such Get is never shared. The upstream runs as one
subscriber group's credentials (a group: the subscribers with one Authorization); each other
group holds a Guard, a stream of its own that carries nothing and that the control plane
ends when the group's credentials lose the right to stream, which ends just that group. A
revoked or departed upstream group hands the upstream over to the next group.

Each subscriber's queue is bounded: one that falls `sse_buffer_events` behind, or accepts
no bytes for `sse_send_timeout_seconds`, is dropped, and its EventSource resumes with
Last-Event-ID. The last subscriber to leave a feed cancels its upstream call at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Literal

import anyio
import grpc
import structlog
from google.protobuf import message
from google.rpc import status_pb2
from starlette.types import Message, Receive, Scope, Send

from services.rpc.errors import ApiError, Reason
from services.web import metrics
from services.web.errors import error_body, status_of_rpc_error
from services.web.login import Credentials
from services.web.routes import Route
from services.web.transcode import to_json

log = structlog.get_logger(service="web")

Outcome = Literal["events", "waiting", "ended", "failed"]
KEEPALIVE = b": keep-alive\n\n"


@dataclass(frozen=True)
class StreamShape:
    """Where a stream RPC keeps its cursor, its item, the item's position and type."""

    cursor_field: str
    item_field: str
    position_field: str
    type_field: str | None

    @classmethod
    def of(cls, route: Route) -> StreamShape:
        """Read the shape from the descriptors; raise ValueError when it has none."""
        cursors = [
            f
            for f in route.method.input_type.fields
            if f.name.startswith("after_") and f.cpp_type == f.CPPTYPE_INT64
        ]
        items = [f for f in route.method.output_type.fields if f.message_type is not None]
        if len(cursors) != 1 or len(items) != 1:
            raise ValueError(f"{route.grpc_path}: no after_<x> cursor and single item field")
        position = cursors[0].name.removeprefix("after_")
        item_type = items[0].message_type
        assert item_type is not None
        if position not in item_type.fields_by_name:
            raise ValueError(f"{route.grpc_path}: {item_type.name} has no field {position!r}")
        type_field = "type" if "type" in item_type.fields_by_name else None
        return cls(cursors[0].name, items[0].name, position, type_field)


@dataclass(frozen=True)
class Frame:
    """One encoded event and its position."""

    position: int
    data: bytes


def encode_event(position: int, event: str, data: bytes) -> bytes:
    """Encode one SSE event; the data is single-line JSON (json.dumps escapes newlines)."""
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (position, event.encode(), data)


class Subscriber:
    """One HTTP client of a feed: a bounded queue of frames and how it ended."""

    def __init__(
        self,
        cursor: int,
        limit: int,
        credentials: Credentials,
        on_leave: Callable[[Subscriber], None],
    ) -> None:
        self.cursor = cursor
        self.credentials = credentials
        self._limit = limit
        self._on_leave = on_leave
        self._left = False
        self._frames: deque[Frame] = deque()
        self._wake = asyncio.Event()
        self.ended: str | None = None
        self.failure: status_pb2.Status | None = None
        self.feed: Feed | None = None
        # Read by the hub's housekeeping (keep-alives, stalled sends): no timer per event.
        self.last_write = time.monotonic()
        self.sending_since: float | None = None
        self._keepalive_due = False
        self.cancel_response: Callable[[], None] | None = None

    def offer(self, frame: Frame) -> None:
        """Queue a frame after the cursor; a full queue drops the subscriber."""
        if self.ended is not None or frame.position <= self.cursor:
            return
        if len(self._frames) >= self._limit:
            metrics.SSE_DROPPED.labels("slow").inc()
            self.finish("slow")
            return
        self._frames.append(frame)
        self.cursor = frame.position
        self._wake.set()

    def finish(self, why: str, failure: status_pb2.Status | None = None) -> None:
        """End the subscription: "ended" and "failed" deliver what is queued first."""
        if self.ended is None:
            self.ended, self.failure = why, failure
            if why not in ("ended", "failed"):
                self._frames.clear()
            self._wake.set()

    async def first_outcome(self, wait: float) -> Outcome:
        """Wait up to `wait` s for the first event or the end; say which came."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                while not self._frames and self.ended is None:
                    await self._wake.wait()
                    self._wake.clear()
        if self._frames:
            return "events"
        if self.ended == "failed":
            return "failed"
        return "ended" if self.ended is not None else "waiting"

    def keep_alive(self) -> None:
        """Have a keep-alive comment written (the hub calls it when the stream is idle)."""
        self._keepalive_due = True
        self._wake.set()

    async def chunks(self, retry_ms: int) -> AsyncIterator[bytes]:
        """Yield the stream's bytes: the retry hint, events, keep-alives, a final error."""
        try:
            yield b"retry: %d\n\n" % retry_ms
            while True:
                if self._frames:
                    # One write for whatever queued meanwhile: a client behind costs fewer sends.
                    # Taken before the yield: more may queue while the write is in progress.
                    batch = b"".join(frame.data for frame in self._frames)
                    self._frames.clear()
                    yield batch
                elif self._keepalive_due:
                    yield KEEPALIVE
                self._keepalive_due = False
                if self.ended is not None:
                    if self.failure is not None:
                        yield _error_event(self.failure)
                    return
                await self._wake.wait()
                self._wake.clear()
        finally:
            self.leave()

    def leave(self) -> None:
        """Leave the feed (the last one out cancels its upstream call)."""
        if not self._left:
            self._left = True
            self.finish("left")
            self._on_leave(self)


def _error_event(status: status_pb2.Status) -> bytes:
    return (
        b"event: error\ndata: %s\n\n"
        % json.dumps(error_body(status), separators=(",", ":")).encode()
    )


Connect = Callable[[message.Message, Credentials], grpc.aio.UnaryStreamCall]  # type: ignore[type-arg]
# A cursor past any position: a guard stream with it is sent nothing, only ended.
_NOTHING_AFTER = 2**63 - 1
# The upstream's errors that are about its credentials, not the stream: another
# subscriber's credentials take the upstream over.
_CREDENTIAL_CODES = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)


class Guard:
    """A stream of one subscriber group's own that carries nothing and ends on revocation.

    The same stream RPC with the cursor past any position: the control plane authorizes it
    as any stream, sends it no event, and ends it when the credentials lose the right to
    stream (revocation.py), which ends the group's subscribers with that error.
    """

    def __init__(
        self,
        call: grpc.aio.UnaryStreamCall,  # type: ignore[type-arg]
        on_end: Callable[[status_pb2.Status], None],
    ) -> None:
        self._call = call
        self._on_end = on_end
        metrics.SSE_GUARDS.inc()
        self._task = asyncio.create_task(self._watch(), name="sse guard")

    async def _watch(self) -> None:
        try:
            async for _ in self._call:
                pass
        except grpc.aio.AioRpcError as err:
            if err.code() != grpc.StatusCode.CANCELLED:
                self._on_end(status_of_rpc_error(err))
        except asyncio.CancelledError:
            pass
        finally:
            metrics.SSE_GUARDS.dec()

    def cancel(self) -> None:
        """End the guard stream (its group left, or took the upstream over)."""
        self._call.cancel()
        if self._task is not asyncio.current_task():
            self._task.cancel()


class Feed:
    """One upstream stream, its recent frames, and the subscribers it serves.

    The upstream runs with the credentials of one subscriber group (subscribers with the
    same Authorization), the owner; every other group holds a Guard of its own. When the
    owner group leaves, or the control plane ends the upstream for its credentials, the next
    group takes it over, resuming after the last position: no gap, no duplicate.
    """

    def __init__(
        self,
        key: tuple[str, bytes] | None,
        connect: Connect,
        request: message.Message,
        owner: Credentials,
        *,
        shape: StreamShape,
        replay_limit: int,
        forget: Callable[[Feed], None],
    ) -> None:
        self.key = key
        self._connect = connect
        self._request = request
        self._shape = shape
        self._ring: deque[Frame] = deque()
        self._replay_limit = replay_limit
        self._forget = forget
        # Every frame after `floor` is in the ring or still to come; `position` was last.
        self.position = self.floor = int(getattr(request, shape.cursor_field))
        self.open = True
        self.owner = owner
        self.groups: dict[str | None, set[Subscriber]] = {}
        self._guards: dict[str | None, Guard] = {}
        metrics.SSE_UPSTREAMS.inc()
        self._call = self._upstream()
        self._task = asyncio.create_task(self._pump(self._call), name="feed")

    @property
    def subscribers(self) -> set[Subscriber]:
        """Return every subscriber of the feed."""
        return set().union(*self.groups.values())

    def can_join(self, cursor: int) -> bool:
        """Say whether a subscriber after `cursor` can be served from this feed."""
        return self.open and self.key is not None and cursor >= self.floor

    def join(self, subscriber: Subscriber) -> None:
        """Add a subscriber, replaying the ring after its cursor first (no await: no gap)."""
        subscriber.feed = self
        for frame in self._ring:
            subscriber.offer(frame)
        group = subscriber.credentials.authorization
        if group not in self.groups:
            self.groups[group] = set()
            if group != self.owner.authorization:
                self._guards[group] = self._guard(subscriber.credentials)
        self.groups[group].add(subscriber)

    def leave(self, subscriber: Subscriber) -> None:
        """Remove a subscriber; with none left, cancel the upstream call now."""
        group = subscriber.credentials.authorization
        members = self.groups.get(group)
        if members is None:
            return
        members.discard(subscriber)
        if members:
            return
        del self.groups[group]
        if (guard := self._guards.pop(group, None)) is not None:
            guard.cancel()
        if not self.groups:
            self.close()
        elif group == self.owner.authorization and self.open:
            self._hand_over()

    def close(self) -> None:
        """Cancel the upstream call and the guards, and forget the feed."""
        if self.open:
            self.open = False
            self._forget(self)
            metrics.SSE_UPSTREAMS.dec()
            self._call.cancel()
            if self._task is not asyncio.current_task():
                self._task.cancel()
            for guard in self._guards.values():
                guard.cancel()
            self._guards.clear()

    def _upstream(self) -> grpc.aio.UnaryStreamCall:  # type: ignore[type-arg]
        request = type(self._request)()
        request.CopyFrom(self._request)
        setattr(request, self._shape.cursor_field, self.position)
        return self._connect(request, self.owner)

    def _guard(self, credentials: Credentials) -> Guard:
        request = type(self._request)()
        request.CopyFrom(self._request)
        setattr(request, self._shape.cursor_field, _NOTHING_AFTER)
        group = credentials.authorization
        return Guard(
            self._connect(request, credentials), lambda failure: self._fail(group, failure)
        )

    def _fail(self, group: str | None, failure: status_pb2.Status) -> None:
        """End one group's subscribers with the control plane's error (their guard ended)."""
        self._guards.pop(group, None)
        for subscriber in list(self.groups.get(group, ())):
            subscriber.finish("failed", failure)

    def _hand_over(self) -> None:
        """Run the upstream with the next group's credentials, after the last position."""
        group, members = next(iter(self.groups.items()))
        if (guard := self._guards.pop(group, None)) is not None:
            guard.cancel()
        self.owner = next(iter(members)).credentials
        self._call.cancel()
        if self._task is not asyncio.current_task():
            self._task.cancel()
        metrics.SSE_HANDOVERS.inc()
        self._call = self._upstream()
        self._task = asyncio.create_task(self._pump(self._call), name="feed")

    async def _pump(self, call: grpc.aio.UnaryStreamCall) -> None:  # type: ignore[type-arg]
        shape = self._shape
        try:
            async for response in call:
                item = getattr(response, shape.item_field)
                position = int(getattr(item, shape.position_field))
                event = getattr(item, shape.type_field) if shape.type_field else shape.item_field
                frame = Frame(position, encode_event(position, event, to_json(item)))
                self.position = position
                self._ring.append(frame)
                if len(self._ring) > self._replay_limit:
                    self.floor = self._ring.popleft().position
                for members in list(self.groups.values()):
                    for subscriber in list(members):
                        subscriber.offer(frame)
            self._end("ended", None)
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.CANCELLED:
                return
            failure = status_of_rpc_error(err)
            if err.code() in _CREDENTIAL_CODES and self.open:
                # The owner's credentials lost the right; everyone else's still stands.
                self._fail(self.owner.authorization, failure)
                self.groups.pop(self.owner.authorization, None)
                if self.groups:
                    self._hand_over()
                    return
            self._end("failed", failure)
        except asyncio.CancelledError:
            pass

    def _end(self, why: str, failure: status_pb2.Status | None) -> None:
        for subscriber in self.subscribers:
            subscriber.finish(why, failure)
        self.close()


def authorizer_of(stream: Route, routes: list[Route]) -> Route | None:
    """Return the Get that authorizes a stream's joiners: its template without the verb."""
    if not stream.path.verb:
        return None
    base = stream.path.template.rsplit(":", 1)[0]
    for get in routes:
        if get.http_method == "GET" and not get.streaming and get.path.template == base:
            return get
    return None


class StreamHub:
    """Open, share and end the edge's event streams."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        routes: list[Route],
        *,
        buffer_events: int,
        replay_events: int,
        request_timeout: float,
        keepalive_seconds: float,
        send_timeout_seconds: float,
    ) -> None:
        self._channel = channel
        self._keepalive = keepalive_seconds
        self._send_timeout = send_timeout_seconds
        self._housekeeping: asyncio.Task[None] | None = None
        self._buffer_events = buffer_events
        self._replay_events = replay_events
        self._request_timeout = request_timeout
        self.shapes = {r.grpc_path: StreamShape.of(r) for r in routes if r.streaming}
        self._authorizers = {
            stream.grpc_path: get
            for stream in routes
            if stream.streaming and (get := authorizer_of(stream, routes)) is not None
        }
        self._feeds: dict[tuple[str, bytes], Feed] = {}
        self._subscribers: set[Subscriber] = set()
        self.stopping = False

    def shared(self, route: Route) -> bool:
        """Say whether subscribers of this stream may share feeds."""
        return route.grpc_path in self._authorizers

    async def subscribe(
        self, route: Route, request: message.Message, credentials: Credentials
    ) -> Subscriber:
        """Subscribe to a stream after the request's cursor (raises AioRpcError, ApiError)."""
        if self.stopping:
            raise ApiError(
                grpc.StatusCode.UNAVAILABLE,
                Reason.SERVER_SHUTTING_DOWN,
                "This edge is shutting down; reconnect with Last-Event-ID.",
            )
        shape = self.shapes[route.grpc_path]
        cursor = int(getattr(request, shape.cursor_field))
        subscriber = Subscriber(cursor, self._buffer_events, credentials, self._release)
        key = None
        if self.shared(route) and credentials.authorization:
            keyed = type(request)()
            keyed.CopyFrom(request)
            keyed.ClearField(shape.cursor_field)
            key = (route.grpc_path, keyed.SerializeToString(deterministic=True))
            feed = self._feeds.get(key)
            if feed is not None and feed.can_join(cursor):
                await self._authorize(route, request, credentials)
                if feed.can_join(cursor):
                    metrics.SSE_SHARED_JOINS.inc()
                    return self._track(subscriber, feed)
        call = self._channel.unary_stream(
            route.grpc_path,
            request_serializer=type(request).SerializeToString,
            response_deserializer=route.response_class().FromString,
        )

        def connect(request: message.Message, credentials: Credentials) -> grpc.aio.UnaryStreamCall:  # type: ignore[type-arg]
            return call(request, metadata=credentials.metadata)

        shared_key = key if key is not None and key not in self._feeds else None
        feed = Feed(
            shared_key,
            connect,
            request,
            credentials,
            shape=shape,
            replay_limit=self._replay_events if shared_key is not None else 0,
            forget=self._forget,
        )
        if feed.key is not None:
            self._feeds[feed.key] = feed
        return self._track(subscriber, feed)

    def _track(self, subscriber: Subscriber, feed: Feed) -> Subscriber:
        feed.join(subscriber)
        self._subscribers.add(subscriber)
        metrics.SSE_SUBSCRIBERS.inc()
        if self._housekeeping is None or self._housekeeping.done():
            self._housekeeping = asyncio.create_task(self._keep(), name="sse housekeeping")
        return subscriber

    async def _keep(self) -> None:
        """Send keep-alives to idle streams and cut off stalled ones, for every subscriber.

        One periodic pass instead of a timer per event and per send: at a thousand streams,
        per-event timers were most of the edge's CPU.
        """
        period = min(self._keepalive, self._send_timeout) / 2
        while self._subscribers:
            await asyncio.sleep(period)
            now = time.monotonic()
            for subscriber in list(self._subscribers):
                since = subscriber.sending_since
                if since is not None and now - since > self._send_timeout:
                    metrics.SSE_DROPPED.labels("send_timeout").inc()
                    subscriber.finish("send_timeout")
                    if subscriber.cancel_response is not None:
                        subscriber.cancel_response()
                elif since is None and now - subscriber.last_write >= self._keepalive:
                    subscriber.keep_alive()

    def _release(self, subscriber: Subscriber) -> None:
        if subscriber in self._subscribers:
            self._subscribers.discard(subscriber)
            metrics.SSE_SUBSCRIBERS.dec()
        if subscriber.feed is not None:
            subscriber.feed.leave(subscriber)
            subscriber.feed = None

    async def _authorize(
        self, route: Route, request: message.Message, credentials: Credentials
    ) -> None:
        get = self._authorizers[route.grpc_path]
        get_request = get.request_class()()
        for name in get.path.variables:
            setattr(get_request, name, getattr(request, name))
        await self._channel.unary_unary(
            get.grpc_path,
            request_serializer=type(get_request).SerializeToString,
            response_deserializer=get.response_class().FromString,
        )(get_request, metadata=credentials.metadata, timeout=self._request_timeout)

    def _forget(self, feed: Feed) -> None:
        if feed.key is not None and self._feeds.get(feed.key) is feed:
            del self._feeds[feed.key]

    def end_login(self, login_id: str) -> int:
        """End every stream of a cookie login (logout); return how many."""
        ended = [
            s
            for s in self._subscribers
            if s.credentials.login is not None and s.credentials.login.login_id == login_id
        ]
        for subscriber in ended:
            subscriber.finish("logout")
        return len(ended)

    def close_all(self) -> None:
        """End every stream (shutdown): clients reconnect elsewhere with Last-Event-ID."""
        self.stopping = True
        for subscriber in list(self._subscribers):
            subscriber.finish("shutdown")
        if self._housekeeping is not None:
            self._housekeeping.cancel()

    @property
    def upstream_count(self) -> int:
        """Return how many shared feeds are open."""
        return len(self._feeds)


class EventStreamResponse:
    """A text/event-stream response that ends at once when the client goes away.

    Written here rather than taken from sse-starlette, whose shutdown handling is
    process-global (a module-level flag, a polling task, a patch of uvicorn's signal
    handler) and would end every edge of a process together, before the edge has drained.
    A send stuck past the send timeout is cancelled by the hub's housekeeping.
    """

    def __init__(self, subscriber: Subscriber, retry_ms: int) -> None:
        self._subscriber = subscriber
        self._chunks = subscriber.chunks(retry_ms)

    async def __call__(self, _scope: Scope, receive: Receive, send: Send) -> None:
        """Stream the chunks until they end or the client disconnects."""
        try:
            await self._serve(receive, send)
        finally:
            # Also when the client left before the first byte and the chunks never started.
            self._subscriber.leave()

    async def _serve(self, receive: Receive, send: Send) -> None:
        subscriber = self._subscriber
        async with anyio.create_task_group() as group:
            subscriber.cancel_response = group.cancel_scope.cancel

            async def write(message: Message) -> None:
                subscriber.sending_since = time.monotonic()
                await send(message)
                subscriber.sending_since = None
                subscriber.last_write = time.monotonic()

            async def stream() -> None:
                try:
                    await write(
                        {
                            "type": "http.response.start",
                            "status": 200,
                            "headers": [
                                (b"content-type", b"text/event-stream; charset=utf-8"),
                                (b"cache-control", b"no-store"),
                                (b"x-accel-buffering", b"no"),
                            ],
                        }
                    )
                    async for chunk in self._chunks:
                        await write(
                            {"type": "http.response.body", "body": chunk, "more_body": True}
                        )
                    await write({"type": "http.response.body", "body": b"", "more_body": False})
                finally:
                    await _aclose(self._chunks)
                    group.cancel_scope.cancel()

            async def watch_disconnect() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                group.cancel_scope.cancel()

            group.start_soon(stream)
            group.start_soon(watch_disconnect)


async def _aclose(chunks: AsyncIterator[bytes]) -> None:
    aclose = getattr(chunks, "aclose", None)
    if aclose is not None:
        with anyio.CancelScope(shield=True):
            await aclose()
