"""UsageService: what the workspace's ended runs consumed, summed as the caller groups it.

Every run that ends leaves one `run_usage` row (store/runs.py); QueryUsage sums those of the
caller's workspace in a time range. Grouping or filtering by API key is for owners only, the
role that sees keys (ListApiKeys); everyone else sees sessions, models and days.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from agentplatform.v1 import run_pb2, usage_service_pb2, usage_service_pb2_grpc

from services.control_plane import store
from services.control_plane.auth import Principal
from services.control_plane.policy import at_least
from services.control_plane.runtime import Runtime
from services.rpc.errors import ApiError, Reason, invalid_argument
from services.rpc.interceptors import current_principal
from services.rpc.names import api_key_name, parse_api_key_name, parse_session_name, session_name
from services.rpc.pagination import POSITION, Page
from services.rpc.validate import timestamp

Context = grpc.aio.ServicerContext[Any, Any]

_DIMENSIONS = frozenset(
    {
        usage_service_pb2.SESSION,
        usage_service_pb2.API_KEY,
        usage_service_pb2.MODEL,
        usage_service_pb2.DAY,
    }
)


def month_start(now: datetime) -> datetime:
    """Return the start of `now`'s calendar month in UTC."""
    now = now.astimezone(UTC)
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def _owners_only(principal: Principal, field: str) -> None:
    if not at_least(principal.role, "owner"):
        raise ApiError(
            grpc.StatusCode.PERMISSION_DENIED,
            Reason.PERMISSION_DENIED,
            f"Your role ({principal.role}) cannot see usage by API key ({field}); it takes owner.",
            metadata={"role": principal.role, "required_role": "owner"},
        )


def _group_to_proto(row: store.Record) -> usage_service_pb2.UsageGroup:
    group = usage_service_pb2.UsageGroup(
        session=session_name(row["session_id"]) if row["session_id"] else "",
        api_key=api_key_name(row["api_key_id"]) if row["api_key_id"] else "",
        model=row["model"] or "",
        day=row["day"].isoformat() if row["day"] else "",
        run_count=row["run_count"],
        usage=run_pb2.Usage(
            input_tokens=row["input_tokens"],
            output_tokens=row["output_tokens"],
            reasoning_tokens=row["reasoning_tokens"],
            cached_input_tokens=row["cached_input_tokens"],
            cost_micros=row["cost_micros"],
        ),
    )
    group.model_latency.FromMilliseconds(row["model_latency_ms"])
    group.run_duration.FromMilliseconds(row["duration_ms"])
    if row["mean_time_to_first_token_ms"] is not None:
        group.mean_time_to_first_token.FromTimedelta(
            timedelta(milliseconds=row["mean_time_to_first_token_ms"])
        )
    return group


class UsageService(usage_service_pb2_grpc.UsageServiceServicer):
    """Serve the usage rollups of the caller's workspace."""

    def __init__(self, runtime: Runtime) -> None:
        self._rt = runtime

    async def QueryUsage(
        self, request: usage_service_pb2.QueryUsageRequest, context: Context
    ) -> usage_service_pb2.QueryUsageResponse:
        principal: Principal = current_principal()
        now = datetime.now(UTC)
        start = (
            timestamp(request.start_time, "start_time") if request.HasField("start_time") else None
        )
        end = timestamp(request.end_time, "end_time") if request.HasField("end_time") else now
        start = start or month_start(end)
        if end <= start:
            raise invalid_argument("end_time", "end_time must be after start_time.")
        dims = set(request.group_by)
        if dims - _DIMENSIONS:
            raise invalid_argument("group_by", "group_by takes SESSION, API_KEY, MODEL or DAY.")
        if usage_service_pb2.API_KEY in dims:
            _owners_only(principal, "group_by")
        session_id = parse_session_name(request.session, "session") if request.session else None
        key_id: uuid.UUID | None = None
        if request.api_key:
            _owners_only(principal, "api_key")
            key_id = parse_api_key_name(request.api_key, "api_key")
        scope = "usage:" + ":".join(
            [
                str(principal.workspace_id),
                request.start_time.ToJsonString() if request.HasField("start_time") else "",
                request.end_time.ToJsonString() if request.HasField("end_time") else "",
                ",".join(str(d) for d in sorted(dims)),
                request.session,
                request.api_key,
            ]
        )
        page = Page.of(request, scope, POSITION, default=100, maximum=1000)
        offset = page.after or 0
        async with self._rt.pool.acquire() as conn:
            rows = await store.usage_query(
                conn,
                principal.workspace_id,
                start=start,
                end=end,
                by_session=usage_service_pb2.SESSION in dims,
                by_api_key=usage_service_pb2.API_KEY in dims,
                by_model=usage_service_pb2.MODEL in dims,
                by_day=usage_service_pb2.DAY in dims,
                session_id=session_id,
                api_key_id=key_id,
                offset=offset,
                limit=page.fetch,
            )
        numbered, token = page.cut(list(enumerate(rows, offset + 1)), lambda r: r[0])
        return usage_service_pb2.QueryUsageResponse(
            groups=[_group_to_proto(row) for _, row in numbered], next_page_token=token
        )
