"""End open streams whose caller lost the right to them, on every replica, within moments.

A unary call is authorized by the key lookup it starts with; a stream (StreamSessionEvents
never ends by itself) outlives that lookup. So every stream registers the principal it runs
as, and principal changes reach each replica as notifications:

    DeleteApiKey / DeleteMember / UpdateMember ── same statement ──► NOTIFY ap_principals
        every replica's Listener ─► Revocations.hear ─► the affected Watches end:
            key revoked                     UNAUTHENTICATED
            member removed, role too low    PERMISSION_DENIED

Nothing is read per event or per stream. Two gaps are closed without a query on the hot
path: a change heard between a stream's key lookup and its registration is remembered for a
while and applied at registration, and a change that happened while this replica's LISTEN
connection was down is found by one re-check of every watched key when it reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import asyncpg
import grpc
import structlog

from services.control_plane import store
from services.control_plane.auth import KeyCache, Principal
from services.control_plane.policy import at_least
from services.rpc.errors import DATABASE_ERRORS, ApiError, Reason, unauthenticated

log = structlog.get_logger()

K = TypeVar("K")

# How long a change is remembered for streams whose key lookup it may have raced; a stream
# that took longer than this from lookup to registration is re-checked in the database.
RECENT_SECONDS = 60.0
_RECHECK_RETRY_SECONDS = 1.0
# How long a servicer that revoked something waits for every replica to have applied it.
HEAR_ALL_SECONDS = 2.0


def key_revoked() -> ApiError:
    """Build the end of a stream whose API key was revoked."""
    return unauthenticated("The API key of this stream was revoked; the stream has ended.")


def member_removed() -> ApiError:
    """Build the end of a stream whose user left the workspace."""
    return ApiError(
        grpc.StatusCode.PERMISSION_DENIED,
        Reason.PERMISSION_DENIED,
        "You are no longer a member of this workspace; the stream has ended.",
    )


def role_too_low(role: str, needed: str) -> ApiError:
    """Build the end of a stream whose user's role fell below what the stream takes."""
    return ApiError(
        grpc.StatusCode.PERMISSION_DENIED,
        Reason.PERMISSION_DENIED,
        f"Your role is now {role}; this stream takes {needed} or above, so it has ended.",
        metadata={"role": role, "required_role": needed},
    )


class Watch:
    """One open stream's principal and, once it lost the right to stream, the error it ends with."""

    __slots__ = ("ended", "needed", "on_end", "principal")

    def __init__(self, principal: Principal, needed: str) -> None:
        self.principal = principal
        self.needed = needed
        self.ended: ApiError | None = None
        # Set by the stream to wake itself; the end is also checked before each event.
        self.on_end: Callable[[], None] = _nothing

    def end(self, error: ApiError) -> None:
        """End the stream with `error` (the first reason wins)."""
        if self.ended is None:
            self.ended = error
            self.on_end()

    def apply(self, change: Change) -> None:
        """End the stream if `change` takes its right away."""
        principal = self.principal
        if change.key_id is not None:
            if change.key_id == principal.api_key_id:
                self.end(key_revoked())
        elif change.member == (principal.workspace_id, principal.user_id):
            if change.role is None:
                self.end(member_removed())
            elif not at_least(change.role, self.needed):
                self.end(role_too_low(change.role, self.needed))


def _nothing() -> None:
    return None


@dataclass(frozen=True)
class Change:
    """One notified principal change: a key revoked, or a membership's new role (None: gone)."""

    heard_at: float
    key_id: uuid.UUID | None = None
    member: tuple[uuid.UUID, uuid.UUID] | None = None
    role: str | None = None

    @property
    def subject(self) -> str:
        """Name what changed: "key:<id>" or "member:<workspace>:<user>"."""
        if self.key_id is not None:
            return f"key:{self.key_id}"
        assert self.member is not None
        return f"member:{self.member[0]}:{self.member[1]}"

    @classmethod
    def parse(cls, payload: str, heard_at: float) -> Change:
        """Read "key:{key}" or "member:{workspace}:{user}:{role}" (ValueError if neither)."""
        kind, _, rest = payload.partition(":")
        if kind == "key":
            return cls(heard_at, key_id=uuid.UUID(rest))
        if kind == "member":
            workspace, user, role = rest.split(":")
            return cls(heard_at, member=(uuid.UUID(workspace), uuid.UUID(user)), role=role or None)
        raise ValueError(payload)


class Revocations:
    """The open streams of this process by principal, ended as principal changes are heard."""

    def __init__(self, pool: asyncpg.Pool, keys: KeyCache | None = None) -> None:
        self._pool = pool
        # The authenticator's cache of keys: a change heard here is forgotten there first.
        self.keys = keys if keys is not None else KeyCache()
        self._by_key: dict[uuid.UUID, set[Watch]] = {}
        self._by_member: dict[tuple[uuid.UUID, uuid.UUID], set[Watch]] = {}
        self._recent: deque[Change] = deque()
        # When the LISTEN connection last connected; None while it is down.
        self._listening_since: float | None = None
        self._recheck: asyncio.Task[None] | None = None
        self._recheck_again = False
        self.heard = 0
        self._heard_more = asyncio.Event()
        self._acks: deque[tuple[float, str]] = deque()
        self._acked_more = asyncio.Event()
        self._acking: set[asyncio.Task[None]] = set()

    @contextlib.contextmanager
    def watch(self, principal: Principal, needed: str) -> Iterator[Watch]:
        """Register a stream running as `principal` (which needs role `needed`) while it runs."""
        watch = Watch(principal, needed)
        member = (principal.workspace_id, principal.user_id)
        if principal.api_key_id is not None:
            self._by_key.setdefault(principal.api_key_id, set()).add(watch)
        self._by_member.setdefault(member, set()).add(watch)
        try:
            self._catch_up(watch)
            yield watch
        finally:
            _discard(self._by_key, principal.api_key_id, watch)
            _discard(self._by_member, member, watch)

    def _catch_up(self, watch: Watch) -> None:
        """Apply what was heard since the stream's key lookup; re-check if that may be short."""
        since = watch.principal.authenticated_at
        for change in self._recent:
            if change.heard_at >= since:
                watch.apply(change)
        now = asyncio.get_running_loop().time()
        listening = self._listening_since
        if listening is None or listening > since or now - since > RECENT_SECONDS:
            self._schedule_recheck()

    def hear(self, payload: str) -> None:
        """Apply one notified change to the watched streams (the Listener calls it)."""
        now = asyncio.get_running_loop().time()
        try:
            change = Change.parse(payload, now)
        except ValueError:
            log.warning("principal_payload_malformed", payload=payload[:100])
            return
        if change.key_id is not None:
            self.keys.forget_key(change.key_id)
        else:
            assert change.member is not None
            self.keys.forget_member(*change.member)
        self._recent.append(change)
        while self._recent and now - self._recent[0].heard_at > RECENT_SECONDS:
            self._recent.popleft()
        if change.key_id is not None:
            watches = self._by_key.get(change.key_id, set())
        else:
            assert change.member is not None
            watches = self._by_member.get(change.member, set())
        for watch in list(watches):
            watch.apply(change)
        self.heard += 1
        self._heard_more.set()
        self._heard_more = asyncio.Event()
        # Tell the replica that made the change (it waits for every replica's word).
        self._send_ack(change.subject)

    def _send_ack(self, subject: str) -> None:
        task = asyncio.create_task(self._ack(subject), name="principal-ack")
        self._acking.add(task)
        task.add_done_callback(self._acking.discard)

    async def _ack(self, subject: str) -> None:
        try:
            async with self._pool.acquire() as conn:
                await conn.execute(
                    "SELECT pg_notify($1, $2)", store.PRINCIPALS_HEARD_CHANNEL, subject
                )
        except DATABASE_ERRORS as err:
            log.warning("principal_ack_failed", error=str(err))

    def acknowledged(self, subject: str) -> None:
        """Note that a replica has applied a change (the Listener calls it)."""
        now = asyncio.get_running_loop().time()
        self._acks.append((now, subject))
        while self._acks and now - self._acks[0][0] > RECENT_SECONDS:
            self._acks.popleft()
        self._acked_more.set()
        self._acked_more = asyncio.Event()

    async def until_applied_everywhere(self, subject: str, *, since: float) -> None:
        """Wait (HEAR_ALL_SECONDS at most) until every listening replica applied a change.

        The servicer that committed a change to a key or membership (`subject`: "key:<id>" or
        "member:<workspace>:<user>") waits for this before it answers, so a caller's next
        call, on any replica, finds the key or membership gone from that replica's cache
        (auth.KeyCache) and its streams ended. Every replica that hears the change NOTIFYs
        `ap_principals_heard`; the replicas are counted by their LISTEN connections. A replica
        that does not answer in time still drops the key when it hears the change, and a
        deaf one serves nothing from its cache.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + HEAR_ALL_SECONDS
        try:
            async with self._pool.acquire() as conn:
                replicas = await store.listening_replicas(conn)
        except DATABASE_ERRORS as err:
            log.warning("principal_replicas_unknown", error=str(err))
            return
        while sum(1 for at, s in self._acks if s == subject and at >= since) < replicas:
            remaining = deadline - loop.time()
            if remaining <= 0:
                log.warning("principal_change_unacknowledged", subject=subject)
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._acked_more.wait(), remaining)

    async def wait_heard(self, *, after: int) -> None:
        """Wait until more than `after` changes have been heard."""
        while self.heard <= after:
            await self._heard_more.wait()

    def listening(self) -> None:
        """Note that LISTEN is (re)established; re-check for changes missed while it was not."""
        self._listening_since = asyncio.get_running_loop().time()
        self.keys.listening(True)
        self._schedule_recheck()

    def deaf(self) -> None:
        """Note that the LISTEN connection is down: changes may go unheard until it is back."""
        self._listening_since = None
        self.keys.listening(False)

    async def stop(self) -> None:
        """Stop a re-check and acknowledgements in progress."""
        tasks = [*self._acking, *([self._recheck] if self._recheck is not None else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _schedule_recheck(self) -> None:
        if self._recheck is not None and not self._recheck.done():
            self._recheck_again = True
            return
        self._recheck = asyncio.create_task(self._recheck_all(), name="principal-recheck")

    async def _recheck_all(self) -> None:
        """Read the standing of every watched key at once and end the streams that lost it."""
        self._recheck_again = True
        while self._recheck_again and self._by_key:
            self._recheck_again = False
            key_ids = list(self._by_key)
            try:
                async with self._pool.acquire() as conn:
                    rows = await store.api_key_standing(conn, key_ids)
            except DATABASE_ERRORS as err:
                log.warning("principal_recheck_failed", error=str(err))
                self._recheck_again = True
                await asyncio.sleep(_RECHECK_RETRY_SECONDS)
                continue
            standing = {row["id"]: row for row in rows}
            for key_id in key_ids:
                row = standing.get(key_id)
                for watch in list(self._by_key.get(key_id, ())):
                    if row is None or row["role"] is None:
                        watch.end(member_removed())
                    elif row["revoked"]:
                        watch.end(key_revoked())
                    elif not at_least(row["role"], watch.needed):
                        watch.end(role_too_low(row["role"], watch.needed))


def _discard(index: dict[K, set[Watch]], key: K | None, watch: Watch) -> None:
    if key is None:
        return
    watches = index.get(key)
    if watches is not None:
        watches.discard(watch)
        if not watches:
            del index[key]
