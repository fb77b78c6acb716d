"""SessionService: create, read and list sessions and their transcripts."""

from __future__ import annotations

from typing import Any

import grpc
from agentplatform.v1 import session_pb2, session_service_pb2, session_service_pb2_grpc

from services.control_plane import store
from services.control_plane.auth import Principal
from services.control_plane.convert import message_to_proto, session_to_proto
from services.control_plane.runtime import Runtime
from services.rpc import validate
from services.rpc.errors import ApiError, Reason, invalid_argument, not_found
from services.rpc.interceptors import current_principal
from services.rpc.names import parse_session_name, session_name
from services.rpc.pagination import KEYSET, POSITION, Page

Context = grpc.aio.ServicerContext[Any, Any]

TITLE_MAX = 200
INSTRUCTIONS_MAX = 16 * 1024
METADATA_MAX_KEYS = 32
RUN_TIMEOUT_MAX_SECONDS = 24 * 3600


def hosted_model_unavailable() -> ApiError:
    """Build the error that tells an operator to configure the hosted model."""
    return ApiError(
        grpc.StatusCode.FAILED_PRECONDITION,
        Reason.HOSTED_MODEL_UNAVAILABLE,
        "No hosted model is configured. The platform operator must set AP_MODEL_BASE_URL and "
        "AP_MODEL_NAME; adding or editing integration secrets will not fix this.",
    )


class SessionService(session_service_pb2_grpc.SessionServiceServicer):
    """Serve sessions of the caller's workspace."""

    def __init__(self, runtime: Runtime) -> None:
        self._rt = runtime

    async def CreateSession(
        self, request: session_service_pb2.CreateSessionRequest, context: Context
    ) -> session_pb2.Session:
        principal: Principal = current_principal()
        spec = request.session
        title = validate.text_field("session.title", spec.title, max_chars=TITLE_MAX)
        instructions = validate.text_field(
            "session.instructions", spec.instructions, max_chars=INSTRUCTIONS_MAX
        )
        metadata = validate.metadata_map(
            "session.metadata",
            spec.metadata,
            max_keys=METADATA_MAX_KEYS,
            max_key_chars=64,
            max_value_chars=1024,
        )
        request_id = validate.request_id(request.request_id)
        run_timeout = None
        if spec.HasField("run_timeout"):
            # Not ToTimedelta: an out-of-range Duration would overflow there (INTERNAL).
            run_timeout = spec.run_timeout.seconds + spec.run_timeout.nanos / 1e9
            if not 0 < run_timeout <= RUN_TIMEOUT_MAX_SECONDS:
                raise invalid_argument(
                    "session.run_timeout",
                    f"session.run_timeout must be above 0 and at most {RUN_TIMEOUT_MAX_SECONDS} s.",
                )
        if not self._rt.model.configured:
            raise hosted_model_unavailable()
        assert self._rt.model.name is not None
        async with self._rt.pool.acquire() as conn:
            row = await store.session_create(
                conn,
                workspace_id=principal.workspace_id,
                created_by=principal.user_id,
                title=title,
                instructions=instructions,
                metadata=metadata,
                model=self._rt.model.name,
                request_id=request_id,
                run_timeout_seconds=run_timeout,
            )
        return session_to_proto(row)

    async def GetSession(
        self, request: session_service_pb2.GetSessionRequest, context: Context
    ) -> session_pb2.Session:
        principal: Principal = current_principal()
        session_id = parse_session_name(request.name)
        async with self._rt.pool.acquire() as conn:
            row = await store.session_get(conn, principal.workspace_id, session_id)
        if row is None:
            raise not_found(request.name)
        return session_to_proto(row)

    async def ListSessions(
        self, request: session_service_pb2.ListSessionsRequest, context: Context
    ) -> session_service_pb2.ListSessionsResponse:
        principal: Principal = current_principal()
        page = Page.of(
            request, f"sessions:{principal.workspace_id}", KEYSET, default=50, maximum=1000
        )
        async with self._rt.pool.acquire() as conn:
            rows = await store.session_list(
                conn, principal.workspace_id, before=page.after, limit=page.fetch
            )
        rows, token = page.cut(rows, lambda r: (r["create_time"], r["id"]))
        return session_service_pb2.ListSessionsResponse(
            sessions=[session_to_proto(r) for r in rows], next_page_token=token
        )

    async def ListMessages(
        self, request: session_service_pb2.ListMessagesRequest, context: Context
    ) -> session_service_pb2.ListMessagesResponse:
        principal: Principal = current_principal()
        session_id = parse_session_name(request.parent, "parent")
        page = Page.of(
            request, f"messages:{session_name(session_id)}", POSITION, default=100, maximum=1000
        )
        async with self._rt.pool.acquire() as conn:
            if not await store.session_exists(conn, principal.workspace_id, session_id):
                raise not_found(request.parent)
            rows = await store.message_list(
                conn, session_id, after_position=page.after or 0, limit=page.fetch
            )
        rows, token = page.cut(rows, lambda r: r["position"])
        return session_service_pb2.ListMessagesResponse(
            messages=[message_to_proto(session_id, r) for r in rows], next_page_token=token
        )
