"""RunService: create runs, read them, and list or stream their events."""

from __future__ import annotations

import functools
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import grpc
from agentplatform.v1 import run_pb2, run_service_pb2, run_service_pb2_grpc

from services.control_plane import metrics, store
from services.control_plane.auth import Principal
from services.control_plane.convert import run_to_proto
from services.control_plane.events import event_from_row, to_store
from services.control_plane.lifecycle import RunLifecycle
from services.control_plane.ratelimit import KeyRateLimiter
from services.control_plane.runtime import Runtime
from services.rpc import validate
from services.rpc.db import Connection
from services.rpc.errors import ApiError, Reason, invalid_argument, not_found
from services.rpc.interceptors import current_principal
from services.rpc.names import (
    message_name,
    parse_run_name,
    parse_session_name,
    run_name,
    session_name,
)
from services.rpc.pagination import (
    clamp_page_size,
    decode_keyset_token,
    decode_page_token,
    encode_keyset_token,
    encode_page_token,
)

Context = grpc.aio.ServicerContext[Any, Any]


def run_already_active(active_run: str) -> ApiError:
    """Build the refusal of a second active run in a session."""
    return ApiError(
        grpc.StatusCode.FAILED_PRECONDITION,
        Reason.RUN_ALREADY_ACTIVE,
        f"The session already has an active run, {active_run}; wait for it to finish.",
        metadata={"active_run": active_run},
    )


class RunService(run_service_pb2_grpc.RunServiceServicer):
    """Serve runs and run events of the caller's workspace."""

    def __init__(self, runtime: Runtime, lifecycle: RunLifecycle) -> None:
        self._rt = runtime
        self._lifecycle = lifecycle
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
        policy = request.concurrency_policy
        if policy not in run_service_pb2.ConcurrencyPolicy.values():
            raise invalid_argument("concurrency_policy", f"Unknown concurrency policy {policy}.")
        self._limiter.take(principal.api_key_id)
        run_id, message_id = uuid.uuid4(), uuid.uuid4()
        queued = run_pb2.RunEvent(
            run_queued=run_pb2.RunQueued(input_message=message_name(session_id, message_id))
        )
        (new_event,) = to_store([queued])
        async with self._rt.pool.acquire() as conn:
            if request_id is not None:
                existing = await store.run_get_by_request_id(
                    conn, principal.workspace_id, request_id
                )
                if existing is not None:
                    return self._replayed(existing, session_id)
            create = functools.partial(
                store.run_create,
                conn,
                workspace_id=principal.workspace_id,
                session_id=session_id,
                created_by=principal.user_id,
                input_text=input_text,
                request_id=request_id,
                queued_event=new_event,
                run_id=run_id,
                message_id=message_id,
            )
            try:
                row = await self._create_by_policy(conn, principal, session_id, policy, create)
            except (store.RunAlreadyActiveError, asyncpg.UniqueViolationError) as err:
                # A concurrent create with the same request_id may have won the race.
                replayed = await self._replay_race(conn, principal, request_id, session_id)
                if replayed is not None:
                    return replayed
                if isinstance(err, store.RunAlreadyActiveError) and err.active_run_id:
                    raise run_already_active(run_name(session_id, err.active_run_id)) from None
                raise
        if row is None:
            raise not_found(request.parent)
        metrics.record_run_created()
        self._rt.announce(row, [queued])
        if row["state"] == "queued":
            self._lifecycle.run_claimable()
        return run_to_proto(row)

    async def _create_by_policy(
        self,
        conn: Connection,
        principal: Principal,
        session_id: uuid.UUID,
        policy: run_service_pb2.ConcurrencyPolicy.ValueType,
        create: Callable[..., Awaitable[store.Record | None]],
    ) -> store.Record | None:
        """Store the run as the session's concurrency policy says."""
        if policy == run_service_pb2.INTERRUPT:
            return await self._interrupt_and_create(conn, principal, session_id, create)
        if policy != run_service_pb2.ENQUEUE:
            return await create(wait_behind_active=False)
        try:
            return await create(wait_behind_active=True)
        except store.RunAlreadyActiveError:
            # A concurrent create became active after this one looked: wait behind it.
            return await create(wait_behind_active=True)

    async def _replay_race(
        self,
        conn: Connection,
        principal: Principal,
        request_id: str | None,
        session_id: uuid.UUID,
    ) -> run_pb2.Run | None:
        """Return the run a concurrent create with the same request_id stored, if any."""
        if request_id is None:
            return None
        existing = await store.run_get_by_request_id(conn, principal.workspace_id, request_id)
        return None if existing is None else self._replayed(existing, session_id)

    async def _interrupt_and_create(
        self,
        conn: Connection,
        principal: Principal,
        session_id: uuid.UUID,
        create: Callable[..., Awaitable[store.Record | None]],
    ) -> store.Record | None:
        """Cancel the session's pending runs and create the new one behind any still stopping."""
        ended: list[tuple[store.Record, run_pb2.RunEvent]] = []
        async with conn.transaction():
            if not await store.session_lock(conn, principal.workspace_id, session_id):
                return None
            for pending in await store.run_pending_list(conn, session_id):
                ended += await self._cancel_locked(conn, pending, "interrupted by a new run")
            row = await create(wait_behind_active=True)
        for stored, event in ended:
            self._rt.announce(stored, [event])
        return row

    async def _cancel_locked(
        self, conn: Connection, run: store.Record, reason: str
    ) -> list[tuple[store.Record, run_pb2.RunEvent]]:
        """Cancel a locked run: at once if no worker holds it, else ask its worker to stop."""
        if run["state"] == "running":
            await store.run_request_cancel(conn, run["id"])
            return []
        event = run_pb2.RunEvent(run_cancelled=run_pb2.RunCancelled(reason=reason))
        row = await self._lifecycle.end_unclaimed(
            conn, run["id"], "cancelled", event, reason="RUN_CANCELLED", message=reason
        )
        return [] if row is None else [(row, event)]

    async def CancelRun(
        self, request: run_service_pb2.CancelRunRequest, context: Context
    ) -> run_pb2.Run:
        principal: Principal = current_principal()
        name = parse_run_name(request.name, "name")
        async with self._rt.pool.acquire() as conn:
            async with conn.transaction():
                run = await store.run_lock(
                    conn, principal.workspace_id, name.session_id, name.run_id
                )
                if run is None:
                    raise not_found(request.name)
                ended = []
                if run["state"] in ("waiting", "queued", "running"):
                    ended = await self._cancel_locked(conn, run, "cancelled on request")
            for stored, event in ended:
                self._rt.announce(stored, [event])
            if ended:
                await self._lifecycle.promote(name.session_id)
            row = await store.run_get(conn, principal.workspace_id, name.session_id, name.run_id)
        assert row is not None
        return run_to_proto(row)

    @staticmethod
    def _replayed(existing: store.Record, session_id: uuid.UUID) -> run_pb2.Run:
        if existing["session_id"] != session_id:
            raise ApiError(
                grpc.StatusCode.INVALID_ARGUMENT,
                Reason.REQUEST_ID_REUSED,
                "request_id was already used for a run in another session.",
                field="request_id",
            )
        return run_to_proto(existing)

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
        limit = clamp_page_size(request.page_size, default=50, maximum=1000)
        scope = f"runs:{session_name(session_id)}"
        before = decode_keyset_token(request.page_token, scope)
        async with self._rt.pool.acquire() as conn:
            if not await store.session_exists(conn, principal.workspace_id, session_id):
                raise not_found(request.parent)
            rows = await store.run_list(conn, session_id, before=before, limit=limit + 1)
        response = run_service_pb2.ListRunsResponse(runs=[run_to_proto(r) for r in rows[:limit]])
        if len(rows) > limit:
            last = rows[limit - 1]
            response.next_page_token = encode_keyset_token(scope, last["create_time"], last["id"])
        return response

    async def ListRunEvents(
        self, request: run_service_pb2.ListRunEventsRequest, context: Context
    ) -> run_service_pb2.ListRunEventsResponse:
        principal: Principal = current_principal()
        row = await self._run_row(principal, request.parent, "parent")
        limit = clamp_page_size(request.page_size, default=500, maximum=5000)
        scope = f"events:{request.parent}"
        cursor = decode_page_token(request.page_token, scope)
        after = 0
        if cursor is not None:
            after = cursor.get("q", -1)
            if not isinstance(after, int) or after < 0:
                raise invalid_argument("page_token", "page_token is malformed.")
        async with self._rt.pool.acquire() as conn:
            rows = await store.run_event_list(
                conn, row["id"], after_sequence=after, limit=limit + 1
            )
        response = run_service_pb2.ListRunEventsResponse(
            events=[event_from_row(r) for r in rows[:limit]]
        )
        if len(rows) > limit:
            response.next_page_token = encode_page_token(scope, {"q": rows[limit - 1]["sequence"]})
        return response

    async def StreamRunEvents(
        self, request: run_service_pb2.StreamRunEventsRequest, context: Context
    ) -> AsyncIterator[run_service_pb2.StreamRunEventsResponse]:
        principal: Principal = current_principal()
        if request.after_sequence < 0:
            raise invalid_argument("after_sequence", "after_sequence must not be negative.")
        row = await self._run_row(principal, request.name, "name")
        finished = row["state"] in ("completed", "failed", "cancelled")
        async for event in self._rt.bus.stream_run(
            row["id"],
            request.after_sequence,
            terminal_sequence=row["last_event_sequence"] if finished else None,
        ):
            yield run_service_pb2.StreamRunEventsResponse(event=event)

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
        async for event in self._rt.bus.stream_session(session_id, request.after_session_sequence):
            yield run_service_pb2.StreamSessionEventsResponse(event=event)
