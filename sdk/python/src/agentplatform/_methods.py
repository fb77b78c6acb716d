"""Every call of the public API, described once for `Client` and `AsyncClient`.

A method is a request builder (its signature and docstring are the method's) plus the RPC it
sends, wrapped in one of three descriptors:

    unary(rpc, build)           Client: returns the result     AsyncClient: awaitable
    paged(rpc, build, items)    Client: Iterator of items      AsyncClient: AsyncIterator
    streamed(build)             Client: RunEventStream         AsyncClient: AsyncRunEventStream

The descriptor binds the builder to the client's transport, so the two clients share every
line but the waiting, and the type checker sees each method with its real signature. A new
RPC is a builder and one line in `Methods`; `tests/ecosystem/test_sdk.py` fails until every
public RPC has a method.
"""

from __future__ import annotations

import datetime as dt
import functools
import inspect
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator, Mapping
from typing import Any, Generic, Literal, ParamSpec, Self, TypeVar, overload

from google.protobuf import duration_pb2, empty_pb2, field_mask_pb2

from agentplatform._streams import (
    RECONNECT_WINDOW_S,
    AsyncRunEventStream,
    Cursor,
    ReconnectHook,
    RunCursor,
    RunEventStream,
    SessionCursor,
)
from agentplatform._transport import AsyncTransport, Rpc, SyncTransport, rpc
from agentplatform.v1 import (
    api_key_pb2,
    api_key_service_pb2,
    api_key_service_pb2_grpc,
    invitation_pb2,
    invitation_service_pb2,
    invitation_service_pb2_grpc,
    master_key_pb2,
    master_key_service_pb2,
    master_key_service_pb2_grpc,
    profile_pb2,
    profile_service_pb2,
    profile_service_pb2_grpc,
    run_pb2,
    run_service_pb2,
    run_service_pb2_grpc,
    secret_pb2,
    secret_service_pb2,
    secret_service_pb2_grpc,
    session_pb2,
    session_service_pb2,
    session_service_pb2_grpc,
    tool_pb2,
    tool_service_pb2,
    tool_service_pb2_grpc,
    usage_service_pb2,
    usage_service_pb2_grpc,
    workspace_pb2,
    workspace_service_pb2,
    workspace_service_pb2_grpc,
)

P = ParamSpec("P")
T = TypeVar("T")
RequestT = TypeVar("RequestT")
ResponseT = TypeVar("ResponseT")
ItemT = TypeVar("ItemT")

ConcurrencyPolicy = Literal["reject", "enqueue", "interrupt"]
UsageDimension = Literal["session", "api_key", "model", "day"]

# The longest input_text CreateRun accepts by default (AP_MAX_INPUT_BYTES); the CLI refuses
# longer input before it creates anything.
MAX_INPUT_BYTES = 64 * 1024


class SyncBase:
    """A client whose methods block: `Client`."""

    _transport: SyncTransport


class AsyncBase:
    """A client whose methods are awaited or iterated with `async for`: `AsyncClient`."""

    _transport: AsyncTransport


class _Method(Generic[P]):
    """What the three descriptors share: the builder, the name and the shown signature."""

    def __init__(self, build: Callable[P, Any]) -> None:
        self.build = build
        self.name = build.__name__.lstrip("_")
        self.__doc__ = build.__doc__
        self.__signature__ = inspect.signature(build).replace(
            return_annotation=inspect.Signature.empty
        )

    def __set_name__(self, owner: type[Any], name: str) -> None:
        self.name = name

    def _bind(self, obj: SyncBase | AsyncBase, method: Callable[..., Any]) -> Any:
        """Give the bound method the builder's name, docs and signature; cache it on `obj`."""
        functools.update_wrapper(method, self.build)
        method.__name__ = method.__qualname__ = self.name
        del method.__wrapped__  # type: ignore[attr-defined]
        method.__signature__ = self.__signature__  # type: ignore[attr-defined]
        # A non-data descriptor: the instance attribute answers every later lookup.
        obj.__dict__[self.name] = method
        return method


class UnaryMethod(_Method[P], Generic[P, T]):
    """A method that makes one unary call and returns its (mapped) response."""

    def __init__(
        self,
        call: Rpc[Any, Any],
        build: Callable[P, Any],
        returns: type[Any],
        result: Callable[[Any], T],
    ) -> None:
        super().__init__(build)
        self.rpc = call
        self.returns = returns
        self.result = result

    @overload
    def __get__(self, obj: None, owner: type[Any]) -> Self: ...
    @overload
    def __get__(self, obj: SyncBase, owner: type[Any]) -> Callable[P, T]: ...
    @overload
    def __get__(self, obj: AsyncBase, owner: type[Any]) -> Callable[P, Coroutine[Any, Any, T]]: ...
    def __get__(self, obj: SyncBase | AsyncBase | None, owner: type[Any]) -> Any:
        """Return the method bound to `obj`'s transport."""
        if obj is None:
            return self
        transport, call, build, result = obj._transport, self.rpc, self.build, self.result
        if isinstance(transport, AsyncTransport):

            async def method(*args: Any, **kwargs: Any) -> T:
                return result(await transport.call(call, build(*args, **kwargs)))

            return self._bind(obj, method)

        def blocking(*args: Any, **kwargs: Any) -> T:
            return result(transport.call(call, build(*args, **kwargs)))

        return self._bind(obj, blocking)


class PagedMethod(_Method[P], Generic[P, ItemT]):
    """A List method: an iterator over the items of every page, fetched as it is consumed."""

    def __init__(
        self,
        call: Rpc[Any, Any],
        build: Callable[P, Any],
        items: Callable[[Any], Iterable[ItemT]],
        of: type[ItemT],
    ) -> None:
        super().__init__(build)
        self.rpc = call
        self.items = items
        self.of = of

    @overload
    def __get__(self, obj: None, owner: type[Any]) -> Self: ...
    @overload
    def __get__(self, obj: SyncBase, owner: type[Any]) -> Callable[P, Iterator[ItemT]]: ...
    @overload
    def __get__(self, obj: AsyncBase, owner: type[Any]) -> Callable[P, AsyncIterator[ItemT]]: ...
    def __get__(self, obj: SyncBase | AsyncBase | None, owner: type[Any]) -> Any:
        """Return the method bound to `obj`'s transport."""
        if obj is None:
            return self
        transport, call, build, items = obj._transport, self.rpc, self.build, self.items

        # Both transports' `pages` return an iterator at once: a generator or an async one.
        def method(*args: Any, **kwargs: Any) -> Any:
            return transport.pages(call, build(*args, **kwargs), items)

        return self._bind(obj, method)


class StreamMethod(_Method[P]):
    """A method that returns a resumable event stream."""

    def __init__(self, build: Callable[P, Cursor]) -> None:
        super().__init__(build)

    @overload
    def __get__(self, obj: None, owner: type[Any]) -> Self: ...
    @overload
    def __get__(self, obj: SyncBase, owner: type[Any]) -> Callable[P, RunEventStream]: ...
    @overload
    def __get__(self, obj: AsyncBase, owner: type[Any]) -> Callable[P, AsyncRunEventStream]: ...
    def __get__(self, obj: SyncBase | AsyncBase | None, owner: type[Any]) -> Any:
        """Return the method bound to `obj`'s transport."""
        if obj is None:
            return self
        transport, build = obj._transport, self.build
        stream: Callable[[Any, Cursor], Any] = (
            AsyncRunEventStream if isinstance(transport, AsyncTransport) else RunEventStream
        )

        def method(*args: Any, **kwargs: Any) -> Any:
            return stream(transport, build(*args, **kwargs))

        return self._bind(obj, method)


# The result types are given, not inferred from grpc's stub types, so that the methods' types
# hold for users without type stubs of grpc; tests/ecosystem/test_sdk.py checks each against
# the RPC's output type in the proto descriptors.


def unary(
    call: Rpc[RequestT, Any], build: Callable[P, RequestT], *, returns: type[T]
) -> UnaryMethod[P, T]:
    """Describe a method that returns the RPC's response, a `returns`."""
    return UnaryMethod(call, build, returns, _same)


def deleting(call: Rpc[RequestT, Any], build: Callable[P, RequestT]) -> UnaryMethod[P, None]:
    """Describe a method whose RPC answers `Empty`; it returns None."""
    return UnaryMethod(call, build, empty_pb2.Empty, _nothing)


def paged(
    call: Rpc[RequestT, Any],
    build: Callable[P, RequestT],
    items: Callable[[Any], Iterable[Any]],
    *,
    of: type[ItemT],
) -> PagedMethod[P, ItemT]:
    """Describe a List method that iterates `items(page)`, each an `of`, of every page."""
    return PagedMethod(call, build, items, of)


def streamed(build: Callable[P, Cursor]) -> StreamMethod[P]:
    """Describe a method that returns a resumable stream following the cursor `build` makes."""
    return StreamMethod(build)


def _same(response: Any) -> Any:
    return response


def _nothing(_: empty_pb2.Empty) -> None:
    return None


def _new_request_id(given: str | None) -> str:
    """Return the caller's request_id, or a new UUID so a retry cannot create twice."""
    return given or str(uuid.uuid4())


def _mask(**fields: object) -> field_mask_pb2.FieldMask:
    """Return the update mask naming the fields given (not None); refuse an empty update."""
    paths = [name for name, value in fields.items() if value is not None]
    if not paths:
        raise ValueError(f"nothing to update: give at least one of {', '.join(fields)}")
    return field_mask_pb2.FieldMask(paths=paths)


# -- sessions -------------------------------------------------------------------------------

_SESSIONS = session_service_pb2_grpc.SessionServiceStub


def _create_session(
    *,
    title: str = "",
    instructions: str = "",
    metadata: Mapping[str, str] | None = None,
    run_timeout: dt.timedelta | None = None,
    model: str = "",
    request_id: str | None = None,
) -> session_service_pb2.CreateSessionRequest:
    """Create a session and return it.

    `instructions` are added to the system prompt of every run; `run_timeout` overrides the
    platform's longest run; `model` picks one of the platform's offered models (default: its
    default). A retry reuses one `request_id`, so it cannot create two.
    """
    session = session_pb2.Session(
        title=title, instructions=instructions, metadata=metadata, model=model
    )
    if run_timeout is not None:
        session.run_timeout.CopyFrom(_duration(run_timeout))
    return session_service_pb2.CreateSessionRequest(
        session=session, request_id=_new_request_id(request_id)
    )


def _duration(value: dt.timedelta) -> duration_pb2.Duration:
    out = duration_pb2.Duration()
    out.FromTimedelta(value)
    return out


def _get_session(name: str) -> session_service_pb2.GetSessionRequest:
    """Get a session, "sessions/{session}"."""
    return session_service_pb2.GetSessionRequest(name=name)


def _list_sessions(*, page_size: int = 0) -> session_service_pb2.ListSessionsRequest:
    """Iterate the workspace's sessions, newest first, across every page."""
    return session_service_pb2.ListSessionsRequest(page_size=page_size)


def _update_session(
    name: str,
    *,
    title: str | None = None,
    instructions: str | None = None,
    metadata: Mapping[str, str] | None = None,
) -> session_service_pb2.UpdateSessionRequest:
    """Change a session's title, instructions or metadata and return it.

    Only the fields given change; "" (or {} for `metadata`) clears one, and `metadata`
    replaces the whole map.
    """
    return session_service_pb2.UpdateSessionRequest(
        session=session_pb2.Session(
            name=name, title=title or "", instructions=instructions or "", metadata=metadata
        ),
        update_mask=_mask(title=title, instructions=instructions, metadata=metadata),
    )


def _delete_session(
    name: str, *, force: bool = False, allow_missing: bool = False
) -> session_service_pb2.DeleteSessionRequest:
    """Delete a session for good, with its messages, runs, run events and tool call records.

    While a run of it is queued or running this raises `RunAlreadyActive` naming the run,
    unless `force` cancels its runs first. With `allow_missing`, a session that does not
    exist (or was deleted already) is no error.
    """
    return session_service_pb2.DeleteSessionRequest(
        name=name, force=force, allow_missing=allow_missing
    )


def _list_messages(session: str, *, page_size: int = 0) -> session_service_pb2.ListMessagesRequest:
    """Iterate a session's transcript, oldest message first, across every page."""
    return session_service_pb2.ListMessagesRequest(parent=session, page_size=page_size)


# -- runs -----------------------------------------------------------------------------------

_RUNS = run_service_pb2_grpc.RunServiceStub


def _create_run(
    session: str,
    text: str,
    *,
    concurrency_policy: ConcurrencyPolicy = "reject",
    request_id: str | None = None,
) -> run_service_pb2.CreateRunRequest:
    """Create a run that answers `text` in `session`, and return it (queued).

    While another run of the session is active, `concurrency_policy` decides: "reject"
    raises `RunAlreadyActive` naming it, "enqueue" runs this one after it, "interrupt"
    cancels it first. A retry reuses one `request_id`, so it cannot queue the text twice.
    """
    try:
        policy = run_service_pb2.ConcurrencyPolicy.Value(concurrency_policy.upper())
    except (ValueError, AttributeError):
        raise ValueError(
            f"concurrency_policy must be 'reject', 'enqueue' or 'interrupt', not "
            f"{concurrency_policy!r}"
        ) from None
    return run_service_pb2.CreateRunRequest(
        parent=session,
        input_text=text,
        concurrency_policy=policy,
        request_id=_new_request_id(request_id),
    )


def _get_run(name: str) -> run_service_pb2.GetRunRequest:
    """Get a run, "sessions/{session}/runs/{run}"."""
    return run_service_pb2.GetRunRequest(name=name)


def _list_runs(session: str, *, page_size: int = 0) -> run_service_pb2.ListRunsRequest:
    """Iterate a session's runs, newest first, across every page."""
    return run_service_pb2.ListRunsRequest(parent=session, page_size=page_size)


def _list_run_events(run: str, *, page_size: int = 0) -> run_service_pb2.ListRunEventsRequest:
    """Iterate a run's stored events in order (no waiting for new ones: see stream_run_events)."""
    return run_service_pb2.ListRunEventsRequest(parent=run, page_size=page_size)


def _cancel_run(name: str) -> run_service_pb2.CancelRunRequest:
    """Cancel a run and return it; a finished run is returned as it is.

    The run logs run.cancel_requested (who asked), then one run.cancelled when it stopped: a
    queued run or one waiting for approval at once, a running one within a heartbeat.
    """
    return run_service_pb2.CancelRunRequest(name=name)


def _submit_tool_approvals(
    run: str,
    *,
    approve: Iterable[str] = (),
    deny: Mapping[str, str] | Iterable[str] = (),
    request_id: str | None = None,
) -> run_service_pb2.SubmitToolApprovalsRequest:
    """Approve or deny pending tool calls of a run in REQUIRES_ACTION, and return the run.

    `approve` names call ids to run; `deny` names call ids not to run, or maps each to a
    message for the model. Calls not named stay pending; once none is, the run continues.
    A call that is not pending raises `ToolCallNotPending`. A retry reuses one `request_id`,
    so a decision is never applied twice.
    """
    Decision = run_service_pb2.ToolApprovalDecision
    denied = dict(deny) if isinstance(deny, Mapping) else dict.fromkeys(deny, "")
    decisions = [Decision(call_id=c, decision=Decision.APPROVE) for c in approve]
    decisions += [Decision(call_id=c, decision=Decision.DENY, message=m) for c, m in denied.items()]
    if not decisions:
        raise ValueError("give at least one call id to approve or deny")
    return run_service_pb2.SubmitToolApprovalsRequest(
        run=run, decisions=decisions, request_id=_new_request_id(request_id)
    )


def _stream_run_events(
    run: str,
    *,
    after_sequence: int = 0,
    on_reconnect: ReconnectHook | None = None,
    reconnect_window: float = RECONNECT_WINDOW_S,
) -> Cursor:
    """Return a stream of the run's events after `after_sequence`, to its terminal event.

    The stored events come first, then live ones. On a broken connection or a restarting
    control plane the stream reopens after the last sequence it yielded, for up to
    `reconnect_window` seconds without progress; `on_reconnect(error, last_sequence)` is
    told each time.
    """
    return RunCursor(
        run, after_sequence, on_reconnect=on_reconnect, reconnect_window=reconnect_window
    )


def _stream_session_events(
    session: str,
    *,
    after_session_sequence: int = 0,
    on_reconnect: ReconnectHook | None = None,
    reconnect_window: float = RECONNECT_WINDOW_S,
) -> Cursor:
    """Return a stream of every run's events in `session` after `after_session_sequence`.

    Events carry `session_sequence`, the cursor of this stream. It resumes like
    `stream_run_events` and does not end by itself: break out of the loop to stop.
    """
    return SessionCursor(
        session,
        after_session_sequence,
        on_reconnect=on_reconnect,
        reconnect_window=reconnect_window,
    )


# -- secrets (metadata; values go in and never come back) -----------------------------------

_SECRETS = secret_service_pb2_grpc.SecretServiceStub


def _get_secret(name: str) -> secret_service_pb2.GetSecretRequest:
    """Get a secret's metadata (name, version, times), "secrets/{secret}"; never its value."""
    return secret_service_pb2.GetSecretRequest(name=name)


def _list_secrets(*, page_size: int = 0) -> secret_service_pb2.ListSecretsRequest:
    """Iterate the workspace's secrets' metadata, ordered by id, across every page."""
    return secret_service_pb2.ListSecretsRequest(page_size=page_size)


def _put_secret(
    name: str,
    value: bytes | str,
    *,
    expected_version: int | None = None,
    request_id: str | None = None,
) -> secret_service_pb2.PutSecretRequest:
    """Store a new version of a secret's value and return its metadata.

    `name` is "secrets/{id}"; a str value is stored as UTF-8. With `expected_version`, the
    value is stored only if that is the newest version (0: only if the secret is new),
    else `VersionMismatch`.
    """
    request = secret_service_pb2.PutSecretRequest(
        name=name,
        value=value.encode() if isinstance(value, str) else value,
        request_id=_new_request_id(request_id),
    )
    if expected_version is not None:
        request.expected_version = expected_version
    return request


def _delete_secret(name: str) -> secret_service_pb2.DeleteSecretRequest:
    """Delete a secret and destroy every version of its value."""
    return secret_service_pb2.DeleteSecretRequest(name=name)


# -- tools ----------------------------------------------------------------------------------

_TOOLS = tool_service_pb2_grpc.ToolServiceStub


def _create_tool(tool_id: str, tool: tool_pb2.Tool) -> tool_service_pb2.CreateToolRequest:
    """Register an HTTP tool named "tools/{tool_id}" and return it.

    `tool` holds its description, JSON Schema `parameters` and `http` endpoint.
    """
    return tool_service_pb2.CreateToolRequest(tool_id=tool_id, tool=tool)


def _list_tools(*, page_size: int = 0) -> tool_service_pb2.ListToolsRequest:
    """Iterate the workspace's tools, HTTP and MCP alike, ordered by name."""
    return tool_service_pb2.ListToolsRequest(page_size=page_size)


def _get_tool(name: str) -> tool_service_pb2.GetToolRequest:
    """Get a tool, "tools/{tool}"; an MCP server's tools are "tools/{server}__{tool}"."""
    return tool_service_pb2.GetToolRequest(name=name)


ApprovalPolicy = Literal["always_allow", "always_ask", "never"]


def _approval_policy(policy: ApprovalPolicy) -> tool_pb2.ApprovalPolicy.ValueType:
    try:
        return tool_pb2.ApprovalPolicy.Value(policy.upper())
    except (ValueError, AttributeError):
        raise ValueError(
            f"approval_policy must be 'always_allow', 'always_ask' or 'never', not {policy!r}"
        ) from None


def _update_tool(
    name: str, *, approval_policy: ApprovalPolicy
) -> tool_service_pb2.UpdateToolRequest:
    """Change a tool's approval policy ("tools/{tool}", HTTP or of an MCP server); return it."""
    return tool_service_pb2.UpdateToolRequest(
        tool=tool_pb2.Tool(name=name, approval_policy=_approval_policy(approval_policy)),
        update_mask=field_mask_pb2.FieldMask(paths=["approval_policy"]),
    )


def _update_mcp_server(
    name: str, *, approval_policy: ApprovalPolicy
) -> tool_service_pb2.UpdateMcpServerRequest:
    """Change an MCP server's approval policy and that of all its tools; return the server."""
    return tool_service_pb2.UpdateMcpServerRequest(
        mcp_server=tool_pb2.McpServer(name=name, approval_policy=_approval_policy(approval_policy)),
        update_mask=field_mask_pb2.FieldMask(paths=["approval_policy"]),
    )


def _delete_tool(name: str) -> tool_service_pb2.DeleteToolRequest:
    """Remove an HTTP tool, "tools/{tool}"."""
    return tool_service_pb2.DeleteToolRequest(name=name)


def _create_mcp_server(
    mcp_server_id: str, mcp_server: tool_pb2.McpServer
) -> tool_service_pb2.CreateMcpServerRequest:
    """Register an MCP server, discover its tools and return it with them."""
    return tool_service_pb2.CreateMcpServerRequest(
        mcp_server_id=mcp_server_id, mcp_server=mcp_server
    )


def _list_mcp_servers(*, page_size: int = 0) -> tool_service_pb2.ListMcpServersRequest:
    """Iterate the workspace's MCP servers, ordered by id."""
    return tool_service_pb2.ListMcpServersRequest(page_size=page_size)


def _delete_mcp_server(name: str) -> tool_service_pb2.DeleteMcpServerRequest:
    """Remove an MCP server, "mcpServers/{server}", and its tools."""
    return tool_service_pb2.DeleteMcpServerRequest(name=name)


def _list_tool_calls(run: str, *, page_size: int = 0) -> tool_service_pb2.ListToolCallsRequest:
    """Iterate a run's tool call records, in the order they started."""
    return tool_service_pb2.ListToolCallsRequest(parent=run, page_size=page_size)


# -- workspaces and members -----------------------------------------------------------------

_WORKSPACES = workspace_service_pb2_grpc.WorkspaceServiceStub


def _get_workspace(name: str) -> workspace_service_pb2.GetWorkspaceRequest:
    """Get a workspace the API key belongs to, "workspaces/{workspace}"."""
    return workspace_service_pb2.GetWorkspaceRequest(name=name)


def _list_workspaces(*, page_size: int = 0) -> workspace_service_pb2.ListWorkspacesRequest:
    """Iterate the caller's user's workspaces, with their role in each.

    A personal key lists every one; a delegated key (one an owner made for the user) only
    its own.
    """
    return workspace_service_pb2.ListWorkspacesRequest(page_size=page_size)


def _update_workspace(
    name: str,
    *,
    display_name: str | None = None,
    monthly_token_limit: int | None = None,
    monthly_cost_limit_micros: int | None = None,
) -> workspace_service_pb2.UpdateWorkspaceRequest:
    """Change the caller's workspace (owners only) and return it.

    A limit of the monthly budget changes only when given; 0 removes it. Costs are in
    millionths of a US dollar.
    """
    mask = _mask(
        display_name=display_name,
        monthly_token_limit=monthly_token_limit,
        monthly_cost_limit_micros=monthly_cost_limit_micros,
    )
    mask.paths[:] = [p if p == "display_name" else f"budget.{p}" for p in mask.paths]
    return workspace_service_pb2.UpdateWorkspaceRequest(
        workspace=workspace_pb2.Workspace(
            name=name,
            display_name=display_name or "",
            budget=workspace_pb2.Budget(
                monthly_token_limit=monthly_token_limit or 0,
                monthly_cost_limit_micros=monthly_cost_limit_micros or 0,
            ),
        ),
        update_mask=mask,
    )


def _create_member(
    role: str, *, user: str = "", display_name: str = ""
) -> workspace_service_pb2.CreateMemberRequest:
    """Create a new user named `display_name`, a member with `role`, and return the member.

    Someone with a user already joins by invitation instead (`create_invitation`); the
    server refuses a `user`, which is kept for compatibility only.
    """
    return workspace_service_pb2.CreateMemberRequest(
        member=workspace_pb2.Member(user=user, role=role, display_name=display_name)
    )


def _get_member(name: str) -> workspace_service_pb2.GetMemberRequest:
    """Get a member of the caller's workspace, "members/{user}"."""
    return workspace_service_pb2.GetMemberRequest(name=name)


def _list_members(*, page_size: int = 0) -> workspace_service_pb2.ListMembersRequest:
    """Iterate the members of the caller's workspace, oldest first."""
    return workspace_service_pb2.ListMembersRequest(page_size=page_size)


def _update_member(name: str, *, role: str) -> workspace_service_pb2.UpdateMemberRequest:
    """Change a member's role and return the member; the last owner stays (`LAST_OWNER`)."""
    return workspace_service_pb2.UpdateMemberRequest(
        member=workspace_pb2.Member(name=name, role=role),
        update_mask=field_mask_pb2.FieldMask(paths=["role"]),
    )


def _delete_member(name: str) -> workspace_service_pb2.DeleteMemberRequest:
    """Remove a member and revoke their API keys of this workspace at once."""
    return workspace_service_pb2.DeleteMemberRequest(name=name)


# -- usage ----------------------------------------------------------------------------------

_USAGE = usage_service_pb2_grpc.UsageServiceStub
_DIMENSIONS: Mapping[str, usage_service_pb2.UsageDimension.ValueType] = {
    "session": usage_service_pb2.SESSION,
    "api_key": usage_service_pb2.API_KEY,
    "model": usage_service_pb2.MODEL,
    "day": usage_service_pb2.DAY,
}


def _query_usage(
    *,
    start_time: dt.datetime | None = None,
    end_time: dt.datetime | None = None,
    group_by: Iterable[UsageDimension] = (),
    session: str = "",
    api_key: str = "",
    page_size: int = 0,
) -> usage_service_pb2.QueryUsageRequest:
    """Iterate what the workspace's runs that ended in a range consumed, grouped as asked.

    The range defaults to this month so far (UTC); `group_by` takes "session", "api_key",
    "model" and "day" (none: one total). `session` and `api_key` narrow it to one session's
    or one key's runs; by API key is for owners only.
    """
    unknown = [d for d in group_by if d not in _DIMENSIONS]
    if unknown:
        raise ValueError(f"group_by takes {', '.join(_DIMENSIONS)}; not {', '.join(unknown)}")
    request = usage_service_pb2.QueryUsageRequest(
        group_by=[_DIMENSIONS[d] for d in group_by],
        session=session,
        api_key=api_key,
        page_size=page_size,
    )
    if start_time is not None:
        request.start_time.FromDatetime(start_time)
    if end_time is not None:
        request.end_time.FromDatetime(end_time)
    return request


# -- invitations ----------------------------------------------------------------------------

_INVITATIONS = invitation_service_pb2_grpc.InvitationServiceStub


def _create_invitation(
    role: str,
    *,
    display_name: str = "",
    ttl: dt.timedelta | None = None,
    expire_time: dt.datetime | None = None,
) -> invitation_service_pb2.CreateInvitationRequest:
    """Invite someone to the caller's workspace with `role`; the response's `token` is shown once.

    `display_name` is a label for admins; the invitation works for `ttl` or until
    `expire_time` (at most 30 days; neither: 7 days). Never retried: a retry could not be
    answered with the first token, which is not stored.
    """
    invitation = invitation_pb2.Invitation(role=role, display_name=display_name)
    if ttl is not None and expire_time is not None:
        raise ValueError("give ttl or expire_time, not both")
    if ttl is not None:
        invitation.ttl.CopyFrom(_duration(ttl))
    if expire_time is not None:
        invitation.expire_time.FromDatetime(expire_time)
    return invitation_service_pb2.CreateInvitationRequest(invitation=invitation)


def _get_invitation(name: str) -> invitation_service_pb2.GetInvitationRequest:
    """Get an invitation that can still be accepted, "invitations/{invitation}"."""
    return invitation_service_pb2.GetInvitationRequest(name=name)


def _list_invitations(*, page_size: int = 0) -> invitation_service_pb2.ListInvitationsRequest:
    """Iterate the workspace's invitations that can still be accepted, newest first."""
    return invitation_service_pb2.ListInvitationsRequest(page_size=page_size)


def _delete_invitation(name: str) -> invitation_service_pb2.DeleteInvitationRequest:
    """Revoke an invitation; its token stops working at once."""
    return invitation_service_pb2.DeleteInvitationRequest(name=name)


def _accept_invitation(
    token: str, *, api_key_display_name: str = ""
) -> invitation_service_pb2.AcceptInvitationRequest:
    """Accept an invitation with the client's (personal) key; return the workspace and a new key.

    The caller's user joins the invitation's workspace; the response's `key`, a personal key
    that acts there, is shown this once. Never retried: the token works once.
    """
    return invitation_service_pb2.AcceptInvitationRequest(
        invitation_token=token, api_key_display_name=api_key_display_name
    )


# -- API keys and profiles ------------------------------------------------------------------

_API_KEYS = api_key_service_pb2_grpc.ApiKeyServiceStub
_PROFILES = profile_service_pb2_grpc.ProfileServiceStub


def _create_api_key(
    display_name: str, *, user: str = ""
) -> api_key_service_pb2.CreateApiKeyRequest:
    """Create an API key (owners only); the response's `key` is shown this once.

    `user` ("users/{user}") is the member it acts as; empty means the caller. Never retried:
    a retry could not be answered with the first key, which is not stored.
    """
    return api_key_service_pb2.CreateApiKeyRequest(
        api_key=api_key_pb2.ApiKey(display_name=display_name, user=user)
    )


def _list_api_keys(*, page_size: int = 0) -> api_key_service_pb2.ListApiKeysRequest:
    """Iterate the workspace's live API keys (never the keys themselves), newest first."""
    return api_key_service_pb2.ListApiKeysRequest(page_size=page_size)


def _update_api_key(
    name: str,
    *,
    monthly_token_limit: int | None = None,
    monthly_cost_limit_micros: int | None = None,
) -> api_key_service_pb2.UpdateApiKeyRequest:
    """Change an API key's monthly budget (owners only) and return the key.

    A limit changes only when given; 0 removes it. Costs are in millionths of a US dollar.
    """
    mask = _mask(
        monthly_token_limit=monthly_token_limit,
        monthly_cost_limit_micros=monthly_cost_limit_micros,
    )
    mask.paths[:] = [f"budget.{p}" for p in mask.paths]
    return api_key_service_pb2.UpdateApiKeyRequest(
        api_key=api_key_pb2.ApiKey(
            name=name,
            budget=workspace_pb2.Budget(
                monthly_token_limit=monthly_token_limit or 0,
                monthly_cost_limit_micros=monthly_cost_limit_micros or 0,
            ),
        ),
        update_mask=mask,
    )


def _delete_api_key(name: str) -> api_key_service_pb2.DeleteApiKeyRequest:
    """Revoke an API key, "apiKeys/{api_key}"; it is refused from the next call on."""
    return api_key_service_pb2.DeleteApiKeyRequest(name=name)


def _get_profile(name: str = "users/me/profile") -> profile_service_pb2.GetProfileRequest:
    """Get a profile; the default is the caller's own (name, workspace and role)."""
    return profile_service_pb2.GetProfileRequest(name=name)


def _update_profile(
    *, display_name: str | None = None, name: str = "users/me/profile"
) -> profile_service_pb2.UpdateProfileRequest:
    """Change the caller's own profile and return it (a personal key only)."""
    return profile_service_pb2.UpdateProfileRequest(
        profile=profile_pb2.Profile(name=name, display_name=display_name or ""),
        update_mask=_mask(display_name=display_name),
    )


# -- the vault's master key (owners) --------------------------------------------------------

_MASTER_KEYS = master_key_service_pb2_grpc.MasterKeyServiceStub


def _get_master_key_status() -> master_key_service_pb2.GetMasterKeyStatusRequest:
    """Get the vault's master-key versions and the progress of a re-wrap."""
    return master_key_service_pb2.GetMasterKeyStatusRequest()


def _rotate_master_key() -> master_key_service_pb2.RotateMasterKeyRequest:
    """Add a master-key version, make it active and start re-wrapping every data key."""
    return master_key_service_pb2.RotateMasterKeyRequest()


class Methods:
    """The calls of the public API, shared by `Client` and `AsyncClient`."""

    create_session = unary(
        rpc(_SESSIONS, lambda s: s.CreateSession, retryable=True),
        _create_session,
        returns=session_pb2.Session,
    )
    get_session = unary(
        rpc(_SESSIONS, lambda s: s.GetSession, retryable=True),
        _get_session,
        returns=session_pb2.Session,
    )
    list_sessions = paged(
        rpc(_SESSIONS, lambda s: s.ListSessions, retryable=True),
        _list_sessions,
        lambda p: p.sessions,
        of=session_pb2.Session,
    )
    update_session = unary(
        rpc(_SESSIONS, lambda s: s.UpdateSession, retryable=True),
        _update_session,
        returns=session_pb2.Session,
    )
    delete_session = deleting(
        rpc(_SESSIONS, lambda s: s.DeleteSession, retryable=False), _delete_session
    )
    list_messages = paged(
        rpc(_SESSIONS, lambda s: s.ListMessages, retryable=True),
        _list_messages,
        lambda page: page.messages,
        of=session_pb2.Message,
    )
    create_run = unary(
        rpc(_RUNS, lambda s: s.CreateRun, retryable=True), _create_run, returns=run_pb2.Run
    )
    get_run = unary(rpc(_RUNS, lambda s: s.GetRun, retryable=True), _get_run, returns=run_pb2.Run)
    list_runs = paged(
        rpc(_RUNS, lambda s: s.ListRuns, retryable=True),
        _list_runs,
        lambda p: p.runs,
        of=run_pb2.Run,
    )
    list_run_events = paged(
        rpc(_RUNS, lambda s: s.ListRunEvents, retryable=True),
        _list_run_events,
        lambda p: p.events,
        of=run_pb2.RunEvent,
    )
    cancel_run = unary(
        rpc(_RUNS, lambda s: s.CancelRun, retryable=True), _cancel_run, returns=run_pb2.Run
    )
    submit_tool_approvals = unary(
        rpc(_RUNS, lambda s: s.SubmitToolApprovals, retryable=True),
        _submit_tool_approvals,
        returns=run_pb2.Run,
    )
    stream_run_events = streamed(_stream_run_events)
    stream_session_events = streamed(_stream_session_events)
    get_secret = unary(
        rpc(_SECRETS, lambda s: s.GetSecret, retryable=True), _get_secret, returns=secret_pb2.Secret
    )
    list_secrets = paged(
        rpc(_SECRETS, lambda s: s.ListSecrets, retryable=True),
        _list_secrets,
        lambda p: p.secrets,
        of=secret_pb2.Secret,
    )
    put_secret = unary(
        rpc(_SECRETS, lambda s: s.PutSecret, retryable=True), _put_secret, returns=secret_pb2.Secret
    )
    delete_secret = deleting(
        rpc(_SECRETS, lambda s: s.DeleteSecret, retryable=False), _delete_secret
    )
    create_tool = unary(
        rpc(_TOOLS, lambda s: s.CreateTool, retryable=False), _create_tool, returns=tool_pb2.Tool
    )
    list_tools = paged(
        rpc(_TOOLS, lambda s: s.ListTools, retryable=True),
        _list_tools,
        lambda p: p.tools,
        of=tool_pb2.Tool,
    )
    get_tool = unary(
        rpc(_TOOLS, lambda s: s.GetTool, retryable=True), _get_tool, returns=tool_pb2.Tool
    )
    update_tool = unary(
        rpc(_TOOLS, lambda s: s.UpdateTool, retryable=True), _update_tool, returns=tool_pb2.Tool
    )
    delete_tool = deleting(rpc(_TOOLS, lambda s: s.DeleteTool, retryable=False), _delete_tool)
    create_mcp_server = unary(
        rpc(_TOOLS, lambda s: s.CreateMcpServer, retryable=False),
        _create_mcp_server,
        returns=tool_pb2.McpServer,
    )
    list_mcp_servers = paged(
        rpc(_TOOLS, lambda s: s.ListMcpServers, retryable=True),
        _list_mcp_servers,
        lambda p: p.mcp_servers,
        of=tool_pb2.McpServer,
    )
    update_mcp_server = unary(
        rpc(_TOOLS, lambda s: s.UpdateMcpServer, retryable=True),
        _update_mcp_server,
        returns=tool_pb2.McpServer,
    )
    delete_mcp_server = deleting(
        rpc(_TOOLS, lambda s: s.DeleteMcpServer, retryable=False), _delete_mcp_server
    )
    list_tool_calls = paged(
        rpc(_TOOLS, lambda s: s.ListToolCalls, retryable=True),
        _list_tool_calls,
        lambda p: p.tool_calls,
        of=tool_pb2.ToolCall,
    )
    get_workspace = unary(
        rpc(_WORKSPACES, lambda s: s.GetWorkspace, retryable=True),
        _get_workspace,
        returns=workspace_pb2.Workspace,
    )
    list_workspaces = paged(
        rpc(_WORKSPACES, lambda s: s.ListWorkspaces, retryable=True),
        _list_workspaces,
        lambda p: p.workspaces,
        of=workspace_pb2.Workspace,
    )
    update_workspace = unary(
        rpc(_WORKSPACES, lambda s: s.UpdateWorkspace, retryable=True),
        _update_workspace,
        returns=workspace_pb2.Workspace,
    )
    query_usage = paged(
        rpc(_USAGE, lambda s: s.QueryUsage, retryable=True),
        _query_usage,
        lambda p: p.groups,
        of=usage_service_pb2.UsageGroup,
    )
    create_member = unary(
        rpc(_WORKSPACES, lambda s: s.CreateMember, retryable=False),
        _create_member,
        returns=workspace_pb2.Member,
    )
    get_member = unary(
        rpc(_WORKSPACES, lambda s: s.GetMember, retryable=True),
        _get_member,
        returns=workspace_pb2.Member,
    )
    list_members = paged(
        rpc(_WORKSPACES, lambda s: s.ListMembers, retryable=True),
        _list_members,
        lambda p: p.members,
        of=workspace_pb2.Member,
    )
    update_member = unary(
        rpc(_WORKSPACES, lambda s: s.UpdateMember, retryable=True),
        _update_member,
        returns=workspace_pb2.Member,
    )
    delete_member = deleting(
        rpc(_WORKSPACES, lambda s: s.DeleteMember, retryable=False), _delete_member
    )
    create_invitation = unary(
        rpc(_INVITATIONS, lambda s: s.CreateInvitation, retryable=False),
        _create_invitation,
        returns=invitation_service_pb2.CreateInvitationResponse,
    )
    get_invitation = unary(
        rpc(_INVITATIONS, lambda s: s.GetInvitation, retryable=True),
        _get_invitation,
        returns=invitation_pb2.Invitation,
    )
    list_invitations = paged(
        rpc(_INVITATIONS, lambda s: s.ListInvitations, retryable=True),
        _list_invitations,
        lambda p: p.invitations,
        of=invitation_pb2.Invitation,
    )
    delete_invitation = deleting(
        rpc(_INVITATIONS, lambda s: s.DeleteInvitation, retryable=False), _delete_invitation
    )
    accept_invitation = unary(
        rpc(_INVITATIONS, lambda s: s.AcceptInvitation, retryable=False),
        _accept_invitation,
        returns=invitation_service_pb2.AcceptInvitationResponse,
    )
    create_api_key = unary(
        rpc(_API_KEYS, lambda s: s.CreateApiKey, retryable=False),
        _create_api_key,
        returns=api_key_service_pb2.CreateApiKeyResponse,
    )
    list_api_keys = paged(
        rpc(_API_KEYS, lambda s: s.ListApiKeys, retryable=True),
        _list_api_keys,
        lambda p: p.api_keys,
        of=api_key_pb2.ApiKey,
    )
    update_api_key = unary(
        rpc(_API_KEYS, lambda s: s.UpdateApiKey, retryable=True),
        _update_api_key,
        returns=api_key_pb2.ApiKey,
    )
    delete_api_key = deleting(
        rpc(_API_KEYS, lambda s: s.DeleteApiKey, retryable=False), _delete_api_key
    )
    get_profile = unary(
        rpc(_PROFILES, lambda s: s.GetProfile, retryable=True),
        _get_profile,
        returns=profile_pb2.Profile,
    )
    update_profile = unary(
        rpc(_PROFILES, lambda s: s.UpdateProfile, retryable=True),
        _update_profile,
        returns=profile_pb2.Profile,
    )
    get_master_key_status = unary(
        rpc(_MASTER_KEYS, lambda s: s.GetMasterKeyStatus, retryable=True),
        _get_master_key_status,
        returns=master_key_pb2.MasterKeyStatus,
    )
    rotate_master_key = unary(
        rpc(_MASTER_KEYS, lambda s: s.RotateMasterKey, retryable=False),
        _rotate_master_key,
        returns=master_key_pb2.MasterKeyStatus,
    )
