"""RunService: create runs, read them, and list or stream their events."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from agentplatform.v1 import run_pb2, run_service_pb2, run_service_pb2_grpc

from services.control_plane import store
from services.control_plane.admission import Admission, Concurrency, NewRun
from services.control_plane.approvals import Decision, ToolApprovals
from services.control_plane.auth import Principal
from services.control_plane.convert import run_to_proto
from services.control_plane.events import LogDeletedError, event_from_row
from services.control_plane.lifecycle import RunLifecycle
from services.control_plane.policy import required_role
from services.control_plane.ratelimit import KeyRateLimiter
from services.control_plane.runtime import Runtime
from services.rpc import validate
from services.rpc.errors import ApiError, invalid_argument, not_found
from services.rpc.interceptors import current_principal
from services.rpc.names import (
    parse_run_name,
    parse_session_name,
    session_name,
)
from services.rpc.pagination import KEYSET, POSITION, Page

Context = grpc.aio.ServicerContext[Any, Any]

# A stream ends when its caller's role falls below what the policy table asks of it.
_STREAM_RUN_EVENTS = "/agentplatform.v1.RunService/StreamRunEvents"
_STREAM_SESSION_EVENTS = "/agentplatform.v1.RunService/StreamSessionEvents"


_POLICIES = {
    run_service_pb2.CONCURRENCY_POLICY_UNSPECIFIED: Concurrency.REJECT,
    run_service_pb2.REJECT: Concurrency.REJECT,
    run_service_pb2.ENQUEUE: Concurrency.ENQUEUE,
    run_service_pb2.INTERRUPT: Concurrency.INTERRUPT,
}


_DENY_MESSAGE_MAX = 4096
_DECISIONS = {
    run_service_pb2.ToolApprovalDecision.APPROVE: True,
    run_service_pb2.ToolApprovalDecision.DENY: False,
}


def _decisions(request: run_service_pb2.SubmitToolApprovalsRequest) -> list[Decision]:
    """Check the decisions of a submission: at least one, each call once, each decided."""
    if not request.decisions:
        raise invalid_argument("decisions", "At least one decision is required.")
    seen: set[str] = set()
    decisions = []
    for i, decision in enumerate(request.decisions):
        field = f"decisions[{i}]"
        if not decision.call_id or len(decision.call_id) > 128:
            raise invalid_argument(f"{field}.call_id", "call_id is required (at most 128).")
        if decision.call_id in seen:
            raise invalid_argument(f"{field}.call_id", f"{decision.call_id!r} is decided twice.")
        seen.add(decision.call_id)
        approve = _DECISIONS.get(decision.decision)
        if approve is None:
            raise invalid_argument(f"{field}.decision", "decision must be APPROVE or DENY.")
        message = validate.text_field(
            f"{field}.message", decision.message, max_chars=_DENY_MESSAGE_MAX
        )
        decisions.append(Decision(decision.call_id, approve, message))
    return decisions


class RunService(run_service_pb2_grpc.RunServiceServicer):
    """Serve runs and run events of the caller's workspace."""

    def __init__(self, runtime: Runtime, lifecycle: RunLifecycle) -> None:
        self._rt = runtime
        self._lifecycle = lifecycle
        self._admission = Admission(runtime, lifecycle)
        self._approvals = ToolApprovals(runtime, lifecycle)
        self._limiter = KeyRateLimiter(
            "runs created",
            per_minute=runtime.settings.run_rate_per_minute,
            burst=runtime.settings.run_rate_burst,
        )

    async def CreateRun(
        self, request: run_service_pb2.CreateRunRequest, context: Context
    ) -> run_pb2.Run:
        principal: Principal = current_principal()
        session_id = parse_session_name(request.parent, "parent")
        input_text = validate.text_field(
            "input_text",
            request.input_text,
            max_chars=self._rt.settings.max_input_bytes,
            max_bytes=self._rt.settings.max_input_bytes,
            required=True,
        )
        request_id = validate.request_id(request.request_id)
        policy = _POLICIES.get(request.concurrency_policy)
        if policy is None:
            raise invalid_argument(
                "concurrency_policy", f"Unknown concurrency policy {request.concurrency_policy}."
            )
        self._limiter.take(principal.api_key_id)
        new = NewRun(
            workspace_id=principal.workspace_id,
            session_id=session_id,
            created_by=principal.user_id,
            api_key_id=principal.api_key_id,
            input_text=input_text,
            request_id=request_id,
        )
        return run_to_proto(await self._admission.admit(new, policy))

    async def CancelRun(
        self, request: run_service_pb2.CancelRunRequest, context: Context
    ) -> run_pb2.Run:
        principal: Principal = current_principal()
        name = parse_run_name(request.name, "name")
        row = await self._lifecycle.cancel(
            principal.workspace_id, name.session_id, name.run_id, principal.user_id
        )
        if row is None:
            raise not_found(request.name)
        return run_to_proto(row)

    async def SubmitToolApprovals(
        self, request: run_service_pb2.SubmitToolApprovalsRequest, context: Context
    ) -> run_pb2.Run:
        principal: Principal = current_principal()
        name = parse_run_name(request.run, "run")
        try:
            request_id = validate.request_id(request.request_id)
            decisions = _decisions(request)
        except ApiError:
            # Another workspace's run is NOT_FOUND whatever else is wrong with the request.
            await self._run_row(principal, request.run, "run")
            raise
        row = await self._approvals.submit(
            principal.workspace_id,
            name.session_id,
            name.run_id,
            decisions,
            decided_by=principal.user_id,
            request_id=request_id,
        )
        return run_to_proto(row)

    async def _run_row(self, principal: Principal, name: str, field: str) -> store.Record:
        parsed = parse_run_name(name, field)
        async with self._rt.pool.acquire() as conn:
            row = await store.run_get(
                conn, principal.workspace_id, parsed.session_id, parsed.run_id
            )
        if row is None:
            raise not_found(name)
        return row

    async def GetRun(self, request: run_service_pb2.GetRunRequest, context: Context) -> run_pb2.Run:
        return run_to_proto(await self._run_row(current_principal(), request.name, "name"))

    async def ListRuns(
        self, request: run_service_pb2.ListRunsRequest, context: Context
    ) -> run_service_pb2.ListRunsResponse:
        principal: Principal = current_principal()
        session_id = parse_session_name(request.parent, "parent")
        page = Page.of(
            request, f"runs:{session_name(session_id)}", KEYSET, default=50, maximum=1000
        )
        async with self._rt.pool.acquire() as conn:
            if not await store.session_exists(conn, principal.workspace_id, session_id):
                raise not_found(request.parent)
            rows = await store.run_list(conn, session_id, before=page.after, limit=page.fetch)
        rows, token = page.cut(rows, lambda r: (r["create_time"], r["id"]))
        return run_service_pb2.ListRunsResponse(
            runs=[run_to_proto(r) for r in rows], next_page_token=token
        )

    async def ListRunEvents(
        self, request: run_service_pb2.ListRunEventsRequest, context: Context
    ) -> run_service_pb2.ListRunEventsResponse:
        principal: Principal = current_principal()
        row = await self._run_row(principal, request.parent, "parent")
        page = Page.of(request, f"events:{request.parent}", POSITION, default=500, maximum=5000)
        async with self._rt.pool.acquire() as conn:
            rows = await store.run_event_list(
                conn, row["id"], after_sequence=page.after or 0, limit=page.fetch
            )
        rows, token = page.cut(rows, lambda r: r["sequence"])
        return run_service_pb2.ListRunEventsResponse(
            events=[event_from_row(r) for r in rows], next_page_token=token
        )

    async def StreamRunEvents(
        self, request: run_service_pb2.StreamRunEventsRequest, context: Context
    ) -> AsyncIterator[run_service_pb2.StreamRunEventsResponse]:
        principal: Principal = current_principal()
        if request.after_sequence < 0:
            raise invalid_argument("after_sequence", "after_sequence must not be negative.")
        row = await self._run_row(principal, request.name, "name")
        finished = row["state"] in ("completed", "failed", "cancelled")
        needed = required_role(_STREAM_RUN_EVENTS)
        try:
            with self._rt.revocations.watch(principal, needed) as watch:
                async for event in self._rt.bus.stream_run(
                    row["id"],
                    request.after_sequence,
                    terminal_sequence=row["last_event_sequence"] if finished else None,
                    watch=watch,
                ):
                    yield run_service_pb2.StreamRunEventsResponse(event=event)
        except LogDeletedError:
            raise not_found(request.name) from None

    async def StreamSessionEvents(
        self, request: run_service_pb2.StreamSessionEventsRequest, context: Context
    ) -> AsyncIterator[run_service_pb2.StreamSessionEventsResponse]:
        principal: Principal = current_principal()
        session_id = parse_session_name(request.name, "name")
        if request.after_session_sequence < 0:
            raise invalid_argument(
                "after_session_sequence", "after_session_sequence must not be negative."
            )
        async with self._rt.pool.acquire() as conn:
            if not await store.session_exists(conn, principal.workspace_id, session_id):
                raise not_found(request.name)
        needed = required_role(_STREAM_SESSION_EVENTS)
        try:
            with self._rt.revocations.watch(principal, needed) as watch:
                async for event in self._rt.bus.stream_session(
                    session_id, request.after_session_sequence, watch=watch
                ):
                    yield run_service_pb2.StreamSessionEventsResponse(event=event)
        except LogDeletedError:
            raise not_found(request.name) from None
