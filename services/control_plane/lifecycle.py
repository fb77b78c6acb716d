"""Run state changes the control plane makes itself: cancel, rescue, release, promote.

Workers move their own runs forward through the dispatch API; everything here happens to
runs no worker is (or any longer may be) driving, and always appends the event that says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import structlog
from agentplatform.v1 import run_pb2

from services.control_plane import metrics, store
from services.control_plane.events import to_store
from services.control_plane.runtime import Runtime
from services.rpc.db import Connection
from services.rpc.errors import DATABASE_ERRORS

log = structlog.get_logger(service="control_plane")

_RESCUE_BATCH = 100


class RunLifecycle:
    """Change run states on the control plane's own initiative and announce the events."""

    def __init__(self, runtime: Runtime) -> None:
        self._rt = runtime
        self._task: asyncio.Task[None] | None = None

    async def end_unclaimed(
        self,
        conn: Connection,
        run_id: uuid.UUID,
        state: str,
        event: run_pb2.RunEvent,
        *,
        reason: str | None,
        message: str | None,
    ) -> store.Record | None:
        """End a run no worker holds with its terminal event (in the caller's transaction)."""
        return await store.run_end_now(
            conn,
            run_id=run_id,
            state=state,
            event=to_store([event])[0],
            error_reason=reason,
            error_message=message,
        )

    async def cancel_locked(
        self, conn: Connection, run: store.Record, reason: str
    ) -> list[tuple[store.Record, run_pb2.RunEvent]]:
        """Cancel a run locked by the caller: at once if no worker holds it, else ask its worker.

        Returns what to announce after the commit: the stored run.cancelled, if any.
        """
        if run["state"] == "running":
            await store.run_request_cancel(conn, run["id"])
            return []
        event = run_pb2.RunEvent(run_cancelled=run_pb2.RunCancelled(reason=reason))
        row = await self.end_unclaimed(
            conn, run["id"], "cancelled", event, reason="RUN_CANCELLED", message=reason
        )
        return [] if row is None else [(row, event)]

    async def cancel(
        self, workspace_id: uuid.UUID, session_id: uuid.UUID, run_id: uuid.UUID
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
                if run["state"] in ("waiting", "queued", "running"):
                    ended = await self.cancel_locked(conn, run, "cancelled on request")
            for stored, event in ended:
                self._rt.announce(stored, [event])
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
            except DATABASE_ERRORS as err:
                log.warning("maintenance_failed", error=str(err))

    async def rescue_expired(self) -> int:
        """Retry runs whose worker stopped heartbeating, or fail them at the attempt limit."""
        settings = self._rt.settings
        announced: list[tuple[store.Record, run_pb2.RunEvent]] = []
        ended_sessions: set[uuid.UUID] = set()
        requeued = 0
        async with self._rt.pool.acquire() as conn, conn.transaction():
            for run in await store.run_expired_list(conn, _RESCUE_BATCH):
                run_id = run["id"]
                if run["cancel_requested"]:
                    event = run_pb2.RunEvent(
                        run_cancelled=run_pb2.RunCancelled(reason="cancelled; its worker was lost")
                    )
                    row = await self.end_unclaimed(
                        conn,
                        run_id,
                        "cancelled",
                        event,
                        reason="RUN_CANCELLED",
                        message="Cancelled; its worker was lost before it stopped.",
                    )
                    ended_sessions.add(run["session_id"])
                elif run["attempt"] >= settings.max_attempts:
                    message = f"The run's worker was lost on all {run['attempt']} attempts."
                    event = run_pb2.RunEvent(
                        run_failed=run_pb2.RunFailed(reason="WORKER_LOST", message=message)
                    )
                    row = await self.end_unclaimed(
                        conn, run_id, "failed", event, reason="WORKER_LOST", message=message
                    )
                    ended_sessions.add(run["session_id"])
                else:
                    event = run_pb2.RunEvent(
                        run_attempt_started=run_pb2.RunAttemptStarted(
                            attempt=run["attempt"] + 1, reason="WORKER_LOST"
                        )
                    )
                    row = await store.run_requeue(conn, run_id=run_id, event=to_store([event])[0])
                    requeued += 1
                if row is not None:
                    announced.append((row, event))
        metrics.LEASE_RESCUES.inc(len(announced))
        for row, event in announced:
            log.warning("lease_expired_run_rescued", run_id=str(row["id"]), outcome=event.type)
            self._rt.announce(row, [event])
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
