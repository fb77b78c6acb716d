"""Run state changes the control plane makes itself: cancel, rescue, release, promote.

Workers move their own runs forward through the dispatch API; everything here happens to
runs no worker is (or any longer may be) driving, and always appends the event that says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable

import structlog
from agentplatform.v1 import run_pb2

from services.control_plane import metrics, store
from services.control_plane.events import to_store
from services.control_plane.runtime import Runtime
from services.rpc.db import Connection
from services.rpc.errors import DATABASE_ERRORS
from services.rpc.names import user_name

log = structlog.get_logger(service="control_plane")

_RESCUE_BATCH = 100
ACTIVE_STATES = ("waiting", "queued", "running", "requires_action")
# A stored row and the events it stored, to announce after the commit.
Announcement = tuple[store.Record, list[run_pb2.RunEvent]]


def cancel_requested_event(requested_by: uuid.UUID | None, reason: str) -> run_pb2.RunEvent:
    """Build the "run.cancel_requested" event of a cancel asked by a user (None: the platform)."""
    return run_pb2.RunEvent(
        run_cancel_requested=run_pb2.RunCancelRequested(
            requested_by=user_name(requested_by) if requested_by else "", reason=reason
        )
    )


async def unresolved_calls_cancelled(conn: Connection, run_id: uuid.UUID) -> list[run_pb2.RunEvent]:
    """Build a CANCELLED result for each call of a waiting run's turn that has none.

    The turn's calls are those asked for when the run last entered REQUIRES_ACTION; while it
    waits none of them has run (its other calls finished before it was parked).
    """
    rows = await store.tool_approval_list(conn, run_id)
    if not rows:
        return []
    latest = max(r["request_time"] for r in rows)
    return [
        run_pb2.RunEvent(
            tool_call_completed=run_pb2.ToolCallCompleted(
                call_id=r["call_id"],
                result="The run was cancelled before this call ran.",
                is_error=True,
                error_code="CANCELLED",
            )
        )
        for r in rows
        if r["request_time"] == latest
    ]


class RunLifecycle:
    """Change run states on the control plane's own initiative and announce the events."""

    def __init__(self, runtime: Runtime) -> None:
        self._rt = runtime
        self._task: asyncio.Task[None] | None = None
        self._sweeps: list[Callable[[], Awaitable[object]]] = []

    def add_sweep(self, sweep: Callable[[], Awaitable[object]]) -> None:
        """Run `sweep` in the maintenance loop too (e.g. expiring tool approvals)."""
        self._sweeps.append(sweep)

    async def end_unclaimed(
        self,
        conn: Connection,
        run_id: uuid.UUID,
        state: str,
        events: list[run_pb2.RunEvent],
        *,
        reason: str | None,
        message: str | None,
    ) -> store.Record | None:
        """End a run no worker holds with `events`, the terminal one last (caller's transaction)."""
        return await store.run_end_now(
            conn,
            run_id=run_id,
            state=state,
            events=to_store(events),
            error_reason=reason,
            error_message=message,
        )

    async def cancel_locked(
        self,
        conn: Connection,
        run: store.Record,
        reason: str,
        requested_by: uuid.UUID | None = None,
    ) -> list[Announcement]:
        """Cancel a run locked by the caller: at once if no worker holds it, else ask its worker.

        The cancel is a logged command: "run.cancel_requested" (who asked) when it is asked,
        then one "run.cancelled" when it took effect. A run no worker holds gets both at once;
        a running run's worker logs the request when it hears of it (its next heartbeat or
        append reply) and finishes the run cancelled. A run waiting for approval also gets a
        "tool_call.completed" (CANCELLED) for each call of its turn, so no call of the
        transcript is left without a result. Returns what to announce after the commit.
        """
        if run["state"] == "running":
            await store.run_request_cancel(conn, run["id"], requested_by)
            return []
        events = [cancel_requested_event(requested_by, reason)]
        if run["state"] == "requires_action":
            events += await unresolved_calls_cancelled(conn, run["id"])
            await store.tool_approval_cancel_pending(conn, run["id"])
        events.append(run_pb2.RunEvent(run_cancelled=run_pb2.RunCancelled(reason=reason)))
        row = await self.end_unclaimed(
            conn, run["id"], "cancelled", events, reason="RUN_CANCELLED", message=reason
        )
        return [] if row is None else [(row, events)]

    async def cancel(
        self,
        workspace_id: uuid.UUID,
        session_id: uuid.UUID,
        run_id: uuid.UUID,
        requested_by: uuid.UUID | None = None,
    ) -> store.Record | None:
        """Cancel a run on request; return it as it is now, None if the workspace has no such run.

        A run that ended already is left as it is.
        """
        async with self._rt.pool.acquire() as conn:
            async with conn.transaction():
                run = await store.run_lock(conn, workspace_id, session_id, run_id)
                if run is None:
                    return None
                ended = []
                if run["state"] in ACTIVE_STATES:
                    ended = await self.cancel_locked(
                        conn, run, "cancelled on request", requested_by
                    )
            for stored, events in ended:
                self._rt.announce(stored, events)
            if ended:
                await self.promote(session_id)
            return await store.run_get(conn, workspace_id, session_id, run_id)

    async def promote(self, session_id: uuid.UUID) -> None:
        """Make the session's next waiting run claimable and wake a worker for it."""
        async with self._rt.pool.acquire() as conn:
            promoted = await store.run_promote_next(conn, session_id)
        if promoted is not None:
            self.run_claimable()

    def run_claimable(self) -> None:
        """Tell local and remote workers that a run can be claimed."""
        self._rt.claim_waiters.wake_one()
        self._rt.notifier.run_queued()

    # ── the maintenance loop every replica runs; idempotent, so no leader is needed ──

    def start(self) -> None:
        """Start rescuing expired leases and promoting stalled queues."""
        self._task = asyncio.create_task(self._maintain_forever(), name="run-maintenance")

    async def stop(self) -> None:
        """Stop the maintenance loop."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _maintain_forever(self) -> None:
        while True:
            await asyncio.sleep(self._rt.settings.poll_interval_seconds)
            try:
                await self.rescue_expired()
                await self._promote_stalled()
                for sweep in self._sweeps:
                    await sweep()
            except DATABASE_ERRORS as err:
                log.warning("maintenance_failed", error=str(err))

    async def rescue_expired(self) -> int:
        """Retry runs whose worker stopped heartbeating, or fail them at the attempt limit."""
        settings = self._rt.settings
        announced: list[Announcement] = []
        ended_sessions: set[uuid.UUID] = set()
        requeued = 0
        async with self._rt.pool.acquire() as conn, conn.transaction():
            for run in await store.run_expired_list(conn, _RESCUE_BATCH):
                run_id = run["id"]
                if run["cancel_requested"]:
                    events = [
                        run_pb2.RunEvent(
                            run_cancelled=run_pb2.RunCancelled(
                                reason="cancelled; its worker was lost"
                            )
                        )
                    ]
                    if not run["cancel_logged"]:
                        events.insert(
                            0,
                            cancel_requested_event(
                                run["cancel_requested_by"], "cancelled on request"
                            ),
                        )
                    row = await self.end_unclaimed(
                        conn,
                        run_id,
                        "cancelled",
                        events,
                        reason="RUN_CANCELLED",
                        message="Cancelled; its worker was lost before it stopped.",
                    )
                    ended_sessions.add(run["session_id"])
                elif run["attempt"] >= settings.max_attempts:
                    message = f"The run's worker was lost on all {run['attempt']} attempts."
                    events = [
                        run_pb2.RunEvent(
                            run_failed=run_pb2.RunFailed(reason="WORKER_LOST", message=message)
                        )
                    ]
                    row = await self.end_unclaimed(
                        conn, run_id, "failed", events, reason="WORKER_LOST", message=message
                    )
                    ended_sessions.add(run["session_id"])
                else:
                    events = [
                        run_pb2.RunEvent(
                            run_attempt_started=run_pb2.RunAttemptStarted(
                                attempt=run["attempt"] + 1, reason="WORKER_LOST"
                            )
                        )
                    ]
                    row = await store.run_requeue(conn, run_id=run_id, event=to_store(events)[0])
                    requeued += 1
                if row is not None:
                    announced.append((row, events))
        metrics.LEASE_RESCUES.inc(len(announced))
        for row, events in announced:
            log.warning("lease_expired_run_rescued", run_id=str(row["id"]), outcome=events[-1].type)
            self._rt.announce(row, events)
        for session_id in ended_sessions:
            await self.promote(session_id)
        for _ in range(requeued):
            self.run_claimable()
        return len(announced)

    async def _promote_stalled(self) -> None:
        async with self._rt.pool.acquire() as conn:
            sessions = await store.run_stalled_session_list(conn, _RESCUE_BATCH)
        for session_id in sessions:
            await self.promote(session_id)
