"""DispatchService: workers claim runs under a lease, append events, heartbeat and finish."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from agentplatform.dispatch.v1 import dispatch_service_pb2 as pb
from agentplatform.dispatch.v1 import dispatch_service_pb2_grpc
from agentplatform.events import TERMINAL_PAYLOADS
from agentplatform.v1 import error_reason_pb2, run_pb2
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from services.control_plane import metrics, store
from services.control_plane.convert import APPROVAL_POLICIES
from services.control_plane.events import to_store
from services.control_plane.lifecycle import RunLifecycle
from services.control_plane.policy import roles_allowed
from services.control_plane.runtime import Runtime
from services.rpc.db import Connection
from services.rpc.errors import ApiError, Reason, invalid_argument, not_found
from services.rpc.names import (
    api_key_name,
    message_name,
    parse_run_name,
    run_name,
    user_name,
    workspace_name,
)

Context = grpc.aio.ServicerContext[Any, Any]

MAX_EVENTS_PER_APPEND = 1000
_SUBMIT_APPROVALS = "/agentplatform.v1.RunService/SubmitToolApprovals"


def _user(user_id: uuid.UUID | None) -> str:
    return user_name(user_id) if user_id else ""


def lease_lost(run: str) -> ApiError:
    """Build the refusal sent to a worker whose lease was taken over."""
    return ApiError(
        grpc.StatusCode.FAILED_PRECONDITION,
        Reason.LEASE_LOST,
        f"The lease on {run} is no longer held by this worker; stop the run.",
        metadata={"run": run},
    )


def _check_worker_events(events: Sequence[run_pb2.RunEvent]) -> None:
    """Refuse a batch that is too long, not consecutive, or carries a terminal event."""
    if len(events) > MAX_EVENTS_PER_APPEND:
        raise invalid_argument("events", f"At most {MAX_EVENTS_PER_APPEND} events per call.")
    for i, event in enumerate(events):
        if i and event.sequence != events[i - 1].sequence + 1:
            raise invalid_argument("events", "Event sequences must be consecutive.")
        kind = event.WhichOneof("payload")
        if kind is None or kind in TERMINAL_PAYLOADS:
            raise invalid_argument(
                "events", "Events need a payload; terminal events come from FinishRun."
            )


def _tool_calls(
    events: Sequence[run_pb2.RunEvent],
) -> tuple[list[store.ToolCallStart], list[store.ToolCallEnd]]:
    """Derive the tool call records that a batch of events reports."""
    starts: list[store.ToolCallStart] = []
    ends: list[store.ToolCallEnd] = []
    for event in events:
        kind = event.WhichOneof("payload")
        if kind == "tool_call_started":
            s = event.tool_call_started
            starts.append(store.ToolCallStart(s.call_id, s.tool, s.arguments_json, event.sequence))
        elif kind == "tool_call_completed":
            c = event.tool_call_completed
            ends.append(
                store.ToolCallEnd(
                    c.call_id, c.result, c.is_error, c.error_code, c.truncated, c.duration_ms
                )
            )
    return starts, ends


_OUTPUT_PAYLOADS = frozenset({"output_text_delta", "reasoning_summary_delta"})


def _event_facts(events: Sequence[run_pb2.RunEvent]) -> store.EventFacts:
    """Read what a batch says about its run: its usage events' sum, the model, any output.

    Each usage event carries one model call's counts, so the run's row adds them up: a
    batch is stored once (a retried one is refused by the sequence check), and a new attempt
    adds to what the ones before it used.
    """
    usage = run_pb2.Usage()
    model: str | None = None
    output = False
    for event in events:
        kind = event.WhichOneof("payload")
        if kind == "usage":
            u = event.usage
            usage.input_tokens += u.input_tokens
            usage.output_tokens += u.output_tokens
            usage.reasoning_tokens += u.reasoning_tokens
            usage.cached_input_tokens += u.cached_input_tokens
            usage.cost_micros += u.cost_micros
        elif kind == "run_started":
            model = event.run_started.model
        elif kind in _OUTPUT_PAYLOADS:
            output = True
    return store.EventFacts(
        usage=store.RunUsage(
            usage.input_tokens,
            usage.output_tokens,
            usage.reasoning_tokens,
            usage.cached_input_tokens,
            usage.cost_micros,
        ),
        model=model,
        output=output,
    )


def _transaction_if(
    conn: Connection, needed: object
) -> contextlib.AbstractAsyncContextManager[object]:
    """Open a transaction only when records go with the events: most batches need none."""
    return conn.transaction() if needed else contextlib.nullcontext()


def _budgets_left(row: store.Record) -> list[pb.BudgetLeft]:
    """Say what is left of the claimed run's budgets: its workspace's and its key's."""
    left = []
    for budget, tokens, cost in (
        (workspace_name(row["workspace_id"]), row["budget_tokens_left"], row["budget_cost_left"]),
        (
            api_key_name(row["api_key_id"]) if row["api_key_id"] else "",
            row["key_budget_tokens_left"],
            row["key_budget_cost_left"],
        ),
    ):
        if tokens is not None or cost is not None:
            left.append(pb.BudgetLeft(budget=budget, tokens=tokens, cost_micros=cost))
    return left


class DispatchService(dispatch_service_pb2_grpc.DispatchServiceServicer):
    """Serve the worker-facing dispatch API."""

    def __init__(self, runtime: Runtime, lifecycle: RunLifecycle) -> None:
        self._rt = runtime
        self._lifecycle = lifecycle

    async def ClaimRun(self, request: pb.ClaimRunRequest, context: Context) -> pb.ClaimRunResponse:
        settings = self._rt.settings
        wait = min(request.wait.ToTimedelta().total_seconds(), settings.claim_max_wait_seconds)
        deadline = asyncio.get_running_loop().time() + max(wait, 0.0)
        waiters = self._rt.claim_waiters
        woken: bool | None = False  # the first attempt is made as if woken
        while True:
            polling = woken is None
            if woken is not None or waiters.take_poll(settings.poll_interval_seconds):
                claim = await self._claim(request.worker_id or "unknown")
                if claim is not None:
                    if polling or woken:
                        # A run no wake announced: there may be more behind it.
                        waiters.wake_one(cascade=True)
                    return pb.ClaimRunResponse(claim=claim)
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return pb.ClaimRunResponse()
            # Woken at once by a local create or a peer's NOTIFY; one poll per interval among
            # all waiters is the net.
            woken = await waiters.wait(min(remaining, settings.poll_interval_seconds))

    async def _claim(self, worker_id: str) -> pb.RunClaim | None:
        settings = self._rt.settings
        async with self._rt.pool.acquire() as conn:
            row = await store.run_claim(
                conn,
                worker_id=worker_id[:200],
                lease_seconds=settings.lease_seconds,
                default_timeout_seconds=settings.run_timeout_seconds,
            )
        if row is None:
            return None
        metrics.record_claim(row["attempt"], row["create_time"])
        lease_expire = Timestamp()
        lease_expire.FromDatetime(row["lease_expire_time"])
        deadline = Timestamp()
        deadline.FromDatetime(row["deadline"])
        heartbeat = Duration()
        heartbeat.FromMilliseconds(int(settings.heartbeat_seconds * 1000))
        return pb.RunClaim(
            run=run_name(row["session_id"], row["id"]),
            attempt=row["attempt"],
            fencing_token=row["fencing_token"],
            lease_expire_time=lease_expire,
            heartbeat_interval=heartbeat,
            last_event_sequence=row["last_event_sequence"],
            workspace=workspace_name(row["workspace_id"]),
            workspace_display_name=row["workspace_display_name"],
            caller=user_name(row["created_by"]),
            caller_display_name=row["caller_display_name"],
            caller_role=row["caller_role"],
            session_instructions=row["instructions"],
            transcript=[
                pb.TranscriptEntry(role=role, content=text) for role, text in row["transcript"]
            ],
            input_text=row["input_text"],
            deadline=deadline,
            tools_version=row["tools_version"],
            usage=run_pb2.Usage(
                input_tokens=row["input_tokens"],
                output_tokens=row["output_tokens"],
                reasoning_tokens=row["reasoning_tokens"],
                cached_input_tokens=row["cached_input_tokens"],
                cost_micros=row["cost_micros"],
            ),
            budgets_left=_budgets_left(row),
            tool_approval_overrides={
                tool: APPROVAL_POLICIES[policy]
                for tool, policy in row["tool_approval_overrides"].items()
            },
            events=[run_pb2.RunEvent.FromString(body) for body in row["run_events"] or ()],
            model=row["model"],
        )

    async def _store_with_tool_calls(
        self,
        run_id: uuid.UUID,
        events: Sequence[run_pb2.RunEvent],
        store_events: Callable[[Connection], Awaitable[store.Record | None]],
    ) -> store.Record | None:
        """Store a worker's events and the tool call records they report, in one transaction.

        Returns the storing statement's row, None when it refused the write.
        """
        starts, ends = _tool_calls(events)
        async with self._rt.pool.acquire() as conn, _transaction_if(conn, starts or ends):
            row = await store_events(conn)
            if row is not None and (starts or ends):
                await store.tool_call_record(
                    conn,
                    run_id=run_id,
                    session_id=row["session_id"],
                    attempt=row["attempt"],
                    started=starts,
                    ended=ends,
                )
        return row

    async def _explain_refusal(
        self, run: str, run_id: uuid.UUID, fencing_token: int, last: int | None
    ) -> int:
        """Return the stored last sequence if the refused write was a retry already applied.

        `last` is the sequence the write would have reached; None when unknown (a finish with
        no events), in which case a finished run under the same fence counts as applied.
        """
        async with self._rt.pool.acquire() as conn:
            check = await store.run_fence_check(conn, run_id, fencing_token)
        if check is None:
            raise not_found(run)
        if not check.fence_matches:
            raise lease_lost(run)
        if (last is None and not check.running) or (
            last is not None and check.last_event_sequence >= last
        ):
            return check.last_event_sequence  # a retry of a write that was applied
        if not check.running:
            raise lease_lost(run)
        raise ApiError(
            grpc.StatusCode.FAILED_PRECONDITION,
            Reason.SEQUENCE_MISMATCH,
            f"Events must continue after sequence {check.last_event_sequence}.",
            metadata={"last_event_sequence": str(check.last_event_sequence)},
        )

    async def AppendRunEvents(
        self, request: pb.AppendRunEventsRequest, context: Context
    ) -> pb.AppendRunEventsResponse:
        name = parse_run_name(request.run, "run")
        if not request.events:
            raise invalid_argument("events", "At least one event is required.")
        events = list(request.events)
        _check_worker_events(events)
        row = await self._store_with_tool_calls(
            name.run_id,
            events,
            functools.partial(
                store.run_event_append,
                run_id=name.run_id,
                fencing_token=request.fencing_token,
                last_sequence=events[-1].sequence,
                events=to_store(events),
                facts=_event_facts(events),
            ),
        )
        if row is None:
            last = await self._explain_refusal(
                request.run, name.run_id, request.fencing_token, events[-1].sequence
            )
            return pb.AppendRunEventsResponse(last_event_sequence=last)
        self._rt.announce(row, events)
        return pb.AppendRunEventsResponse(
            last_event_sequence=row["last_event_sequence"],
            cancel_requested=row["cancel_requested"],
            cancel_requested_by=_user(row["cancel_requested_by"]),
        )

    async def HeartbeatRun(
        self, request: pb.HeartbeatRunRequest, context: Context
    ) -> pb.HeartbeatRunResponse:
        name = parse_run_name(request.run, "run")
        async with self._rt.pool.acquire() as conn:
            row = await store.run_heartbeat(
                conn,
                run_id=name.run_id,
                fencing_token=request.fencing_token,
                lease_seconds=self._rt.settings.lease_seconds,
            )
        if row is None:
            raise lease_lost(request.run)
        response = pb.HeartbeatRunResponse(
            cancel_requested=row["cancel_requested"],
            cancel_requested_by=_user(row["cancel_requested_by"]),
        )
        response.lease_expire_time.FromDatetime(row["lease_expire_time"])
        return response

    async def FinishRun(
        self, request: pb.FinishRunRequest, context: Context
    ) -> pb.FinishRunResponse:
        name = parse_run_name(request.run, "run")
        events = list(request.events)
        _check_worker_events(events)
        outcome = request.WhichOneof("outcome")
        if outcome is None:
            raise invalid_argument("outcome", "outcome is required.")
        output_message_id = uuid.uuid4() if outcome == "completed" else None
        terminal, state, reason, message = self._terminal(
            request, name.session_id, output_message_id
        )
        all_events = [*events, terminal]
        row = await self._store_with_tool_calls(
            name.run_id,
            events,
            functools.partial(
                store.run_finish,
                run_id=name.run_id,
                fencing_token=request.fencing_token,
                first_sequence=events[0].sequence if events else 0,
                events=to_store(all_events),
                state=state,
                reply_text=request.completed.text if outcome == "completed" else None,
                error_reason=reason,
                error_message=message,
                facts=_event_facts(events),
                model_latency_ms=request.model_latency.ToMilliseconds(),
                output_message_id=output_message_id,
            ),
        )
        if row is None:
            expected = events[-1].sequence + 1 if events else None
            last = await self._explain_refusal(
                request.run, name.run_id, request.fencing_token, expected
            )
            return pb.FinishRunResponse(terminal_sequence=last)
        self._rt.announce(row, all_events)
        if row["session_has_waiting"]:
            await self._lifecycle.promote(name.session_id)
        return pb.FinishRunResponse(terminal_sequence=terminal.sequence)

    async def SuspendRun(
        self, request: pb.SuspendRunRequest, context: Context
    ) -> pb.SuspendRunResponse:
        name = parse_run_name(request.run, "run")
        events = list(request.events)
        if not events:
            raise invalid_argument("events", "At least one event is required.")
        _check_worker_events(events)
        asked = [
            e.tool_call_approval_requested
            for e in events
            if e.HasField("tool_call_approval_requested")
        ]
        if not asked:
            raise invalid_argument(
                "events", "A suspended run needs at least one tool_call.approval_requested."
            )
        expire = datetime.now(UTC) + timedelta(seconds=self._rt.settings.approval_timeout_seconds)
        approvers = roles_allowed(_SUBMIT_APPROVALS)
        for request_event in asked:
            request_event.expire_time.FromDatetime(expire)
            request_event.ClearField("approver_roles")
            request_event.approver_roles.extend(approvers)
        row = await self._store_with_tool_calls(
            name.run_id,
            events,
            functools.partial(
                store.run_suspend,
                run_id=name.run_id,
                fencing_token=request.fencing_token,
                last_sequence=events[-1].sequence,
                events=to_store(events),
                calls=[(a.call_id, a.tool) for a in asked],
                expire_time=expire,
                facts=_event_facts(events),
            ),
        )
        if row is None:
            last = await self._explain_refusal(
                request.run, name.run_id, request.fencing_token, events[-1].sequence
            )
            return pb.SuspendRunResponse(last_event_sequence=last)
        self._rt.announce(row, events)
        if row["cancel_requested"]:
            # Cancelled while the worker was parking it: the cancel takes effect now.
            await self._lifecycle.cancel(
                row["workspace_id"], name.session_id, name.run_id, row["cancel_requested_by"]
            )
        return pb.SuspendRunResponse(last_event_sequence=row["last_event_sequence"])

    async def ReleaseRun(
        self, request: pb.ReleaseRunRequest, context: Context
    ) -> pb.ReleaseRunResponse:
        name = parse_run_name(request.run, "run")
        async with self._rt.pool.acquire() as conn:
            attempt = await store.run_attempt(conn, name.run_id)
            if attempt is None:
                raise not_found(request.run)
            event = run_pb2.RunEvent(
                run_attempt_started=run_pb2.RunAttemptStarted(
                    attempt=attempt + 1, reason="WORKER_DRAINED"
                )
            )
            row = await store.run_requeue(
                conn,
                run_id=name.run_id,
                event=to_store([event])[0],
                fencing_token=request.fencing_token,
            )
        if row is None:
            raise lease_lost(request.run)
        self._rt.announce(row, [event])
        self._lifecycle.run_claimable()
        return pb.ReleaseRunResponse()

    @staticmethod
    def _terminal(
        request: pb.FinishRunRequest, session_id: uuid.UUID, output_message_id: uuid.UUID | None
    ) -> tuple[run_pb2.RunEvent, str, str | None, str | None]:
        outcome = request.WhichOneof("outcome")
        if outcome == "completed":
            assert output_message_id is not None
            return (
                run_pb2.RunEvent(
                    run_completed=run_pb2.RunCompleted(
                        output_message=message_name(session_id, output_message_id)
                    )
                ),
                "completed",
                None,
                None,
            )
        if outcome == "failed":
            reason = request.failed.reason
            if reason not in error_reason_pb2.ErrorReason.keys() or reason.endswith("UNSPECIFIED"):  # noqa: SIM118 - an enum wrapper, not a dict
                raise invalid_argument("failed.reason", f"Unknown error reason {reason!r}.")
            message = request.failed.message[:4000]
            return (
                run_pb2.RunEvent(run_failed=run_pb2.RunFailed(reason=reason, message=message)),
                "failed",
                reason,
                message,
            )
        cancel_reason = request.cancelled.reason[:1000]
        return (
            run_pb2.RunEvent(run_cancelled=run_pb2.RunCancelled(reason=cancel_reason)),
            "cancelled",
            "RUN_CANCELLED",
            cancel_reason,
        )
