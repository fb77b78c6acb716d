"""Admit a new run into its session under the request's concurrency policy.

A session runs one run at a time; the partial unique index runs_one_active_per_session holds
that line even for racing creates. A create while a run is active follows its policy:

    REJECT     refused with FAILED_PRECONDITION / RUN_ALREADY_ACTIVE, naming the active run
    ENQUEUE    stored 'waiting' behind the runs before it; promoted when they end, in order
    INTERRUPT  the session's pending runs are cancelled (a running one is asked to stop), then
               the new run is stored, waiting behind a run whose worker is still stopping

A create whose request_id was used before returns that first run instead, whichever policy.
A workspace or key over its monthly budget gets RESOURCE_EXHAUSTED / BUDGET_EXCEEDED
(budgets.py).
"""

from __future__ import annotations

import enum
import functools
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg
import grpc
from agentplatform.v1 import run_pb2

from services.control_plane import metrics, store
from services.control_plane.budgets import budget_exceeded
from services.control_plane.events import to_store
from services.control_plane.lifecycle import Announcement, RunLifecycle
from services.control_plane.runtime import Runtime
from services.rpc.db import Connection
from services.rpc.errors import ApiError, Reason, not_found
from services.rpc.names import (
    api_key_name,
    message_name,
    run_name,
    session_name,
    workspace_name,
)


class Concurrency(enum.Enum):
    """What a create does while its session has an active run."""

    REJECT = "reject"
    ENQUEUE = "enqueue"
    INTERRUPT = "interrupt"


@dataclass(frozen=True)
class NewRun:
    """A run to create: where, by whom, with what input, under which request_id."""

    workspace_id: uuid.UUID
    session_id: uuid.UUID
    created_by: uuid.UUID
    api_key_id: uuid.UUID | None
    input_text: str
    request_id: str | None


def run_already_active(active_run: str) -> ApiError:
    """Build the refusal of a second active run in a session."""
    return ApiError(
        grpc.StatusCode.FAILED_PRECONDITION,
        Reason.RUN_ALREADY_ACTIVE,
        f"The session already has an active run, {active_run}; wait for it to finish.",
        metadata={"active_run": active_run},
    )


def request_id_reused() -> ApiError:
    """Build the refusal of a request_id that an earlier create used in another session."""
    return ApiError(
        grpc.StatusCode.INVALID_ARGUMENT,
        Reason.REQUEST_ID_REUSED,
        "request_id was already used for a run in another session.",
        field="request_id",
    )


Create = Callable[..., Awaitable[store.Record | None]]

# How often a create races the session's runs before it gives up (each race means another
# run became active or ended between the create's check and its insert).
_CREATE_RACE_RETRIES = 5


class Admission:
    """Create runs in sessions under their concurrency policies and announce them."""

    def __init__(self, runtime: Runtime, lifecycle: RunLifecycle) -> None:
        self._rt = runtime
        self._lifecycle = lifecycle

    async def admit(self, new: NewRun, policy: Concurrency) -> store.Record:
        """Create the run as the policy says, announce its run.queued, and wake a worker.

        Returns the run's row: the new run's, or the first one's for a repeated request_id.
        """
        message_id = uuid.uuid4()
        queued = run_pb2.RunEvent(
            run_queued=run_pb2.RunQueued(input_message=message_name(new.session_id, message_id))
        )
        async with self._rt.pool.acquire() as conn:
            if (earlier := await _earlier(conn, new)) is not None:
                return earlier
            create = functools.partial(
                store.run_create,
                conn,
                workspace_id=new.workspace_id,
                session_id=new.session_id,
                created_by=new.created_by,
                api_key_id=new.api_key_id,
                input_text=new.input_text,
                request_id=new.request_id,
                queued_event=to_store([queued])[0],
                run_id=uuid.uuid4(),
                message_id=message_id,
            )
            try:
                row = await self._create_by_policy(conn, new, policy, create)
            except (store.RunAlreadyActiveError, asyncpg.UniqueViolationError) as err:
                # A concurrent create with the same request_id may have won the race.
                if (earlier := await _earlier(conn, new)) is not None:
                    return earlier
                if isinstance(err, store.RunAlreadyActiveError) and err.active_run_id:
                    active = run_name(new.session_id, err.active_run_id)
                    raise run_already_active(active) from None
                raise
            if row is None:
                raise await _refusal(conn, new)
        metrics.record_run_created()
        self._rt.announce(row, [queued])
        # A create behind an active run locked the session's queued run for a moment, so a
        # worker's claim may have skipped it: wake one to look again.
        self._lifecycle.run_claimable()
        return row

    async def _create_by_policy(
        self, conn: Connection, new: NewRun, policy: Concurrency, create: Create
    ) -> store.Record | None:
        """Store the run as the policy says; None when the session does not exist."""
        if policy is Concurrency.INTERRUPT:
            return await self._interrupt_and_create(conn, new, create)
        for _ in range(_CREATE_RACE_RETRIES):
            try:
                return await create(wait_behind_active=policy is Concurrency.ENQUEUE)
            except store.RunAlreadyActiveError as err:
                # Between the create's check and its insert a concurrent create made a run
                # active (enqueue: wait behind it), or the active run ended (reject: the
                # session is free now), so the create is tried again.
                if policy is Concurrency.REJECT and err.active_run_id is not None:
                    raise
        # Runs kept starting and ending under this create: a retry by the client is safe.
        raise ApiError(
            grpc.StatusCode.ABORTED,
            Reason.RUN_ALREADY_ACTIVE,
            "Runs of this session started and ended while the run was created; try again.",
        )

    async def _interrupt_and_create(
        self, conn: Connection, new: NewRun, create: Create
    ) -> store.Record | None:
        """Cancel the session's pending runs and create the new one behind any still stopping."""
        ended: list[Announcement] = []
        async with conn.transaction():
            # Runs before their session, the order every event write locks them in.
            pending_runs = await store.run_pending_list(conn, new.session_id)
            if not await store.session_lock(conn, new.workspace_id, new.session_id):
                return None
            for pending in pending_runs:
                ended += await self._lifecycle.cancel_locked(
                    conn, pending, "interrupted by a new run", new.created_by
                )
            row = await create(wait_behind_active=True)
            if row is None:
                raise await _refusal(conn, new)  # and the cancels roll back with it
        for stored, events in ended:
            self._rt.announce(stored, events)
        return row


async def _refusal(conn: Connection, new: NewRun) -> ApiError:
    """Explain a create that stored nothing: a spent budget, else a missing session."""
    budget = await store.budget_get(conn, new.workspace_id)
    if budget is not None and (err := budget_exceeded(workspace_name(new.workspace_id), budget)):
        return err
    if new.api_key_id is not None:
        key_budget = await store.api_key_budget_get(conn, new.workspace_id, new.api_key_id)
        if key_budget is not None and (
            err := budget_exceeded(api_key_name(new.api_key_id), key_budget)
        ):
            return err
    return not_found(session_name(new.session_id))


async def _earlier(conn: Connection, new: NewRun) -> store.Record | None:
    """Return the run an earlier create with the same request_id stored, if any."""
    if new.request_id is None:
        return None
    earlier = await store.run_get_by_request_id(conn, new.workspace_id, new.request_id)
    if earlier is not None and earlier["session_id"] != new.session_id:
        raise request_id_reused()
    return earlier
