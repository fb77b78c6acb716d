"""Human approval of tool calls: people's decisions, and the expiry of undecided ones.

    worker: SuspendRun(tool_call.approval_requested…) ─► run 'requires_action', no lease
    SubmitToolApprovals(decisions) ─► tool_call.approved / tool_call.denied (who decided)
    expiry sweep                   ─► tool_call.denied (APPROVAL_EXPIRED)
    no call of the turn pending    ─► run 'queued' again; the next claim continues the attempt
                                      and carries the run's events, so the worker resumes
                                      from the log without asking the model again

Every decision locks the run row first, then the approval rows (the order every event write
takes), so two submissions, or a submission and the sweep, never decide a call twice.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
import structlog
from agentplatform.v1 import run_pb2

from services.control_plane import store
from services.control_plane.events import to_store
from services.control_plane.lifecycle import RunLifecycle
from services.control_plane.runtime import Runtime
from services.rpc.db import Connection
from services.rpc.errors import DATABASE_ERRORS, ApiError, Reason, not_found
from services.rpc.names import run_name, user_name

log = structlog.get_logger(service="control_plane")

_EXPIRY_BATCH = 100
DENIED = "DENIED"


@dataclass(frozen=True)
class Decision:
    """One person's decision on one pending call."""

    call_id: str
    approve: bool
    message: str = ""


def not_pending(run: str, call_id: str, why: str) -> ApiError:
    """Build the refusal of a decision on a call that is not waiting for one."""
    return ApiError(
        grpc.StatusCode.FAILED_PRECONDITION,
        Reason.TOOL_CALL_NOT_PENDING,
        f"Tool call {call_id!r} of {run} is not waiting for approval: {why}.",
        metadata={"run": run, "call_id": call_id},
    )


def _decision_event(decision: store.Decision) -> run_pb2.RunEvent:
    by = user_name(decision.decided_by) if decision.decided_by else ""
    if decision.state == "approved":
        return run_pb2.RunEvent(
            tool_call_approved=run_pb2.ToolCallApproved(call_id=decision.call_id, decided_by=by)
        )
    return run_pb2.RunEvent(
        tool_call_denied=run_pb2.ToolCallDenied(
            call_id=decision.call_id,
            decided_by=by,
            reason="APPROVAL_EXPIRED" if decision.state == "expired" else DENIED,
            message=decision.message,
        )
    )


class ToolApprovals:
    """Record decisions on a run's pending tool calls and queue the run once none is left."""

    def __init__(self, runtime: Runtime, lifecycle: RunLifecycle) -> None:
        self._rt = runtime
        self._lifecycle = lifecycle
        lifecycle.add_sweep(self.expire_due)

    async def submit(
        self,
        workspace_id: uuid.UUID,
        session_id: uuid.UUID,
        run_id: uuid.UUID,
        decisions: Sequence[Decision],
        *,
        decided_by: uuid.UUID,
        request_id: str | None,
    ) -> store.Record:
        """Apply a person's decisions; return the run as it is now.

        NOT_FOUND when the workspace has no such run; a retry of an applied request_id
        changes nothing; any decision on a call that is not pending refuses them all.
        """
        name = run_name(session_id, run_id)
        async with self._rt.pool.acquire() as conn:
            async with conn.transaction():
                run = await store.run_lock(conn, workspace_id, session_id, run_id)
                if run is None:
                    raise not_found(name)
                if request_id is not None and await store.tool_approval_request_seen(
                    conn, run_id, request_id
                ):
                    return run
                stored = await self._decide_locked(
                    conn,
                    run,
                    [
                        store.Decision(
                            d.call_id,
                            "approved" if d.approve else "denied",
                            decided_by,
                            d.message,
                        )
                        for d in decisions
                    ],
                    request_id,
                    strict=True,
                )
            self._after(stored)
            row = await store.run_get(conn, workspace_id, session_id, run_id)
        assert row is not None
        return row

    async def _decide_locked(
        self,
        conn: Connection,
        run: store.Record,
        decisions: list[store.Decision],
        request_id: str | None,
        *,
        strict: bool,
    ) -> tuple[store.Record, list[run_pb2.RunEvent]] | None:
        """Store the decisions on a locked run; with `strict`, refuse any call not pending."""
        name = run_name(run["session_id"], run["id"])
        pending = {
            r["call_id"]
            for r in await store.tool_approval_list(conn, run["id"])
            if r["state"] == "pending"
        }
        if run["state"] != "requires_action":
            if strict:
                raise not_pending(name, decisions[0].call_id, "the run is not waiting for one")
            return None
        for decision in decisions:
            if decision.call_id not in pending and strict:
                raise not_pending(name, decision.call_id, "it was decided, expired or never asked")
        decisions = [d for d in decisions if d.call_id in pending]
        if not decisions:
            return None
        await store.tool_approval_decide(conn, run["id"], decisions, request_id)
        events = [_decision_event(d) for d in decisions]
        resume = not (pending - {d.call_id for d in decisions})
        row = await store.run_action_record(
            conn, run_id=run["id"], events=to_store(events), resume=resume
        )
        return None if row is None else (row, events)

    def _after(self, stored: tuple[store.Record, list[run_pb2.RunEvent]] | None) -> None:
        if stored is None:
            return
        row, events = stored
        self._rt.announce(row, events)
        if row["state"] == "queued":
            self._lifecycle.run_claimable()

    async def expire_due(self) -> int:
        """Deny every pending call past its expiry (APPROVAL_EXPIRED); return how many runs."""
        done = 0
        async with self._rt.pool.acquire() as conn:
            due = await store.tool_approval_expired_runs(conn, _EXPIRY_BATCH)
        for found in due:
            try:
                done += await self._expire_run(found["run_id"])
            except DATABASE_ERRORS as err:
                log.warning("approval_expiry_failed", error=str(err))
        return done

    async def _expire_run(self, run_id: uuid.UUID) -> int:
        async with self._rt.pool.acquire() as conn, conn.transaction():
            run = await store.run_lock_skip(conn, run_id)
            if run is None:
                return 0  # another replica is deciding on it now
            expired = [
                store.Decision(r["call_id"], "expired", None, "")
                for r in await store.tool_approval_list(conn, run_id)
                if r["state"] == "pending" and r["expired"]
            ]
            stored = (
                await self._decide_locked(conn, run, expired, None, strict=False)
                if expired
                else None
            )
        self._after(stored)
        if stored is not None:
            log.info("tool_approvals_expired", run_id=str(run_id), calls=len(expired))
        return int(stored is not None)
