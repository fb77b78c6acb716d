"""SessionService: create, read, list, change and delete sessions; read their transcripts."""

from __future__ import annotations

import re
from collections.abc import Callable, Collection
from typing import Any

import grpc
from agentplatform.v1 import session_pb2, session_service_pb2, session_service_pb2_grpc, tool_pb2
from google.protobuf import empty_pb2

from services.control_plane import store
from services.control_plane.auth import Principal
from services.control_plane.convert import message_to_proto, session_to_proto
from services.control_plane.deletion import SessionDeletion
from services.control_plane.lifecycle import RunLifecycle
from services.control_plane.runtime import Runtime
from services.control_plane.session_filter import parse_session_filter
from services.rpc import validate
from services.rpc.errors import ApiError, Reason, invalid_argument, not_found
from services.rpc.hosted_models import HostedModelSettings
from services.rpc.interceptors import current_principal
from services.rpc.names import parse_session_name, session_name
from services.rpc.pagination import KEYSET, POSITION, Page

Context = grpc.aio.ServicerContext[Any, Any]

TITLE_MAX = 200
INSTRUCTIONS_MAX = 16 * 1024
METADATA_MAX_KEYS = 32
RUN_TIMEOUT_MAX_SECONDS = 24 * 3600

OVERRIDES_MAX_KEYS = 256
_TOOL_KEY = re.compile(r"^(\*|[a-zA-Z0-9_-]{1,64})$")
# A session may only tighten a tool's policy, so these are the values an override can take.
_OVERRIDES = {tool_pb2.ALWAYS_ASK: "always_ask", tool_pb2.NEVER: "never"}


def approval_overrides(spec: session_pb2.Session) -> dict[str, str]:
    """Check a session's approval overrides; return them in their stored form."""
    field = "session.tool_approval_overrides"
    if len(spec.tool_approval_overrides) > OVERRIDES_MAX_KEYS:
        raise invalid_argument(field, f"At most {OVERRIDES_MAX_KEYS} tools.")
    stored = {}
    for tool, policy in spec.tool_approval_overrides.items():
        if not _TOOL_KEY.match(tool):
            raise invalid_argument(field, f'{tool!r} is not a tool name (or "*").')
        if policy not in _OVERRIDES:
            raise invalid_argument(
                field,
                f"{tool}: a session can only tighten a tool's approval policy, to ALWAYS_ASK or "
                "NEVER.",
            )
        stored[tool] = _OVERRIDES[policy]
    return stored


# The fields a caller writes, each with its check, as CreateSession and UpdateSession apply
# them; run_timeout is set on create only, the rest is output only.
_WRITABLE: dict[str, Callable[[session_pb2.Session], object]] = {
    "title": lambda s: validate.text_field("session.title", s.title, max_chars=TITLE_MAX),
    "instructions": lambda s: validate.text_field(
        "session.instructions", s.instructions, max_chars=INSTRUCTIONS_MAX
    ),
    "metadata": lambda s: validate.metadata_map(
        "session.metadata",
        s.metadata,
        max_keys=METADATA_MAX_KEYS,
        max_key_chars=64,
        max_value_chars=1024,
    ),
    "tool_approval_overrides": approval_overrides,
}


def checked_fields(spec: session_pb2.Session, fields: Collection[str]) -> dict[str, Any]:
    """Check the named writable fields of a session as given; return their values."""
    return {field: _WRITABLE[field](spec) for field in fields}


def hosted_model_unavailable() -> ApiError:
    """Build the error that tells an operator to configure the hosted model."""
    return ApiError(
        grpc.StatusCode.FAILED_PRECONDITION,
        Reason.HOSTED_MODEL_UNAVAILABLE,
        "No hosted model is configured. The platform operator must set AP_MODEL_BASE_URL and "
        "AP_MODEL_NAME (or AP_MODELS); adding or editing integration secrets will not fix this.",
    )


def chosen_model(models: HostedModelSettings, requested: str) -> str:
    """Return the id of the model a new session uses: the one it asks for, else the default."""
    default = models.default_model
    if default is None:
        raise hosted_model_unavailable()
    if not requested:
        return default.id
    if models.find(requested) is None:
        # FAILED_PRECONDITION like "none configured": the same reason, the same class in
        # the SDK; the field says which input it was.
        raise ApiError(
            grpc.StatusCode.FAILED_PRECONDITION,
            Reason.HOSTED_MODEL_UNAVAILABLE,
            f"session.model {requested!r} is not a model this platform offers; offered: "
            f"{', '.join(m.id for m in models.offered)}.",
            field="session.model",
        )
    return requested


class SessionService(session_service_pb2_grpc.SessionServiceServicer):
    """Serve sessions of the caller's workspace."""

    def __init__(self, runtime: Runtime, lifecycle: RunLifecycle) -> None:
        self._rt = runtime
        self._deletion = SessionDeletion(runtime, lifecycle)

    async def CreateSession(
        self, request: session_service_pb2.CreateSessionRequest, context: Context
    ) -> session_pb2.Session:
        principal: Principal = current_principal()
        spec = request.session
        values = checked_fields(spec, _WRITABLE)
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
        model = chosen_model(self._rt.model, spec.model)
        async with self._rt.pool.acquire() as conn:
            row = await store.session_create(
                conn,
                workspace_id=principal.workspace_id,
                created_by=principal.user_id,
                title=values["title"],
                instructions=values["instructions"],
                metadata=values["metadata"],
                tool_approval_overrides=values["tool_approval_overrides"],
                model=model,
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
        matching = parse_session_filter(request.filter)
        page = Page.of(
            request,
            f"sessions:{principal.workspace_id}:{request.filter}",
            KEYSET,
            default=50,
            maximum=1000,
        )
        async with self._rt.pool.acquire() as conn:
            rows = await store.session_list(
                conn,
                principal.workspace_id,
                before=page.after,
                limit=page.fetch,
                title_contains=matching.title_contains,
                text_contains=matching.text_contains,
                metadata_equals=matching.metadata_equals,
                metadata_has=matching.metadata_has,
                latest_run_states=matching.latest_run_states,
            )
        rows, token = page.cut(rows, lambda r: (r["create_time"], r["id"]))
        return session_service_pb2.ListSessionsResponse(
            sessions=[session_to_proto(r) for r in rows], next_page_token=token
        )

    async def UpdateSession(
        self, request: session_service_pb2.UpdateSessionRequest, context: Context
    ) -> session_pb2.Session:
        principal: Principal = current_principal()
        session_id = parse_session_name(request.session.name, "session.name")
        fields = validate.update_paths(request.update_mask, request.session, updatable=_WRITABLE)
        values = checked_fields(request.session, fields)
        async with self._rt.pool.acquire() as conn:
            if fields:
                row = await store.session_update(
                    conn, principal.workspace_id, session_id, fields=fields, **values
                )
            else:
                row = await store.session_get(conn, principal.workspace_id, session_id)
        if row is None:
            raise not_found(request.session.name)
        return session_to_proto(row)

    async def DeleteSession(
        self, request: session_service_pb2.DeleteSessionRequest, context: Context
    ) -> empty_pb2.Empty:
        principal: Principal = current_principal()
        session_id = parse_session_name(request.name)
        deleted = await self._deletion.delete(principal, session_id, force=request.force)
        if not deleted and not request.allow_missing:
            raise not_found(request.name)
        return empty_pb2.Empty()

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
