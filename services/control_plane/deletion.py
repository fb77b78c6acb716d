"""Delete a session for good: its messages, runs, run events and tool call records with it.

    foreign or missing      ─► False (the servicer answers NOT_FOUND, or OK with allow_missing)
    a member, not its maker ─► PERMISSION_DENIED: below admin, only your own sessions
    a queued or running run ─► FAILED_PRECONDITION / RUN_ALREADY_ACTIVE naming it, unless force:
    force                   ─► the runs are cancelled as CancelRun does it (queued ones at once,
                               a running one's worker is told on its next append or heartbeat);
                               a short wait lets running ones end, then the session goes anyway,
                               and a worker still on one is refused every write (NOT_FOUND or
                               LEASE_LOST) and abandons it
    deleted                 ─► open streams of the session and its runs end with NOT_FOUND: at
                               once on this replica, within a poll interval on the others

Locks follow the order every event write takes — the run rows, then the session row — so a
delete never deadlocks with an append or a finish in flight (see `_delete_locked`).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import asyncpg
import grpc
import structlog

from services.control_plane import store
from services.control_plane.auth import Principal
from services.control_plane.events import LogDeletedError
from services.control_plane.lifecycle import ACTIVE_STATES, Announcement, RunLifecycle
from services.control_plane.policy import at_least
from services.control_plane.runtime import Runtime
from services.rpc.errors import ApiError, Reason
from services.rpc.names import run_name

log = structlog.get_logger(service="control_plane")

_ACTIVE = ACTIVE_STATES
# How long a forced delete waits for running runs to end, in heartbeats: a worker hears of the
# cancel on its next append reply or heartbeat and then makes one FinishRun call.
_FORCE_WAIT_HEARTBEATS = 3
# A run created between locking the runs and locking the session, and already held by a
# worker, makes the delete start over; it takes a create racing the delete to happen at all.
_LOCK_ATTEMPTS = 10
_RETRY_LOCKING = (asyncpg.LockNotAvailableError, asyncpg.DeadlockDetectedError)


def check_may_delete(principal: Principal, created_by: uuid.UUID) -> None:
    """Refuse a member's delete of a session someone else created; admins delete any."""
    if created_by != principal.user_id and not at_least(principal.role, "admin"):
        raise ApiError(
            grpc.StatusCode.PERMISSION_DENIED,
            Reason.PERMISSION_DENIED,
            f"Your role ({principal.role}) deletes only the sessions you created; deleting "
            "another member's takes admin.",
            metadata={"role": principal.role, "required_role": "admin"},
        )


def session_has_active_run(active_run: str) -> ApiError:
    """Build the refusal to delete a session whose run is queued or running."""
    return ApiError(
        grpc.StatusCode.FAILED_PRECONDITION,
        Reason.RUN_ALREADY_ACTIVE,
        f"The session has an active run, {active_run}; cancel it, or delete with force.",
        metadata={"active_run": active_run},
    )


def runs_kept_starting(active_run: str | None) -> ApiError:
    """Build the answer of a delete that runs starting in the session kept racing."""
    return ApiError(
        grpc.StatusCode.ABORTED,
        Reason.RUN_ALREADY_ACTIVE,
        "Runs of the session kept starting while it was being deleted; retry.",
        metadata={"active_run": active_run} if active_run else None,
    )


class SessionDeletion:
    """Delete sessions of the caller's workspace under the rules above."""

    def __init__(self, runtime: Runtime, lifecycle: RunLifecycle) -> None:
        self._rt = runtime
        self._lifecycle = lifecycle

    async def delete(self, principal: Principal, session_id: uuid.UUID, *, force: bool) -> bool:
        """Delete the session; False when the workspace has no such session."""
        async with self._rt.pool.acquire() as conn:
            created_by = await store.session_creator(conn, principal.workspace_id, session_id)
        if created_by is None:
            return False
        check_may_delete(principal, created_by)
        if force:
            await self._cancel_runs(session_id)
        run_ids = await self._delete_retrying(principal, session_id, force=force)
        if run_ids is None:
            return False  # another call deleted it meanwhile
        self._rt.bus.end_deleted(session_id, run_ids)
        log.info("session_deleted", session_id=str(session_id), runs=len(run_ids))
        return True

    async def _delete_retrying(
        self, principal: Principal, session_id: uuid.UUID, *, force: bool
    ) -> list[uuid.UUID] | None:
        for _ in range(_LOCK_ATTEMPTS):
            with contextlib.suppress(*_RETRY_LOCKING):
                return await self._delete_locked(principal, session_id, force=force)
        async with self._rt.pool.acquire() as conn:
            active = await store.run_active_id(conn, session_id)
        raise runs_kept_starting(run_name(session_id, active) if active else None)

    async def _delete_locked(
        self, principal: Principal, session_id: uuid.UUID, *, force: bool
    ) -> list[uuid.UUID] | None:
        """Lock the runs, then the session, and delete; None when the session went meanwhile.

        Appends, finishes and rescues lock a run and then its session; taking them in that
        order too means waiting for such a write rather than deadlocking with it. A run created
        after the runs were locked (its create held the session first) is locked without
        waiting: if a worker holds it already, this raises and the caller starts over.
        """
        async with self._rt.pool.acquire() as conn, conn.transaction():
            runs = await store.run_lock_all(conn, session_id)
            found = await store.session_creator(conn, principal.workspace_id, session_id, lock=True)
            if found is None:
                return None
            runs += await store.run_lock_others_nowait(conn, session_id, [r["id"] for r in runs])
            active = [r for r in runs if r["state"] in _ACTIVE]
            if active and not force:
                first = next((r for r in active if r["state"] != "waiting"), active[0])
                raise session_has_active_run(run_name(session_id, first["id"]))
            await store.session_delete(conn, session_id)
        return [r["id"] for r in runs]

    async def _cancel_runs(self, session_id: uuid.UUID) -> None:
        """Cancel the session's active runs as CancelRun would; wait a little for running ones."""
        ended: list[Announcement] = []
        async with self._rt.pool.acquire() as conn, conn.transaction():
            pending = await store.run_pending_list(conn, session_id)
            for run in pending:
                ended += await self._lifecycle.cancel_locked(
                    conn, run, "cancelled: its session is being deleted"
                )
        for stored, events in ended:
            self._rt.announce(stored, events)
        running = [r for r in pending if r["state"] == "running"]
        if running:
            wait = _FORCE_WAIT_HEARTBEATS * self._rt.settings.heartbeat_seconds
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await asyncio.gather(*(self._ended(r) for r in running))

    async def _ended(self, run: store.Record) -> None:
        """Return when the run has stored its terminal event (or was deleted meanwhile)."""
        with contextlib.suppress(LogDeletedError):
            async for _ in self._rt.bus.stream_run(
                run["id"], run["last_event_sequence"], terminal_sequence=None
            ):
                pass
