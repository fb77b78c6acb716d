"""Typed exceptions for failed calls and failed runs, one class per family of reasons.

Every error status of the platform carries a `google.rpc.ErrorInfo` whose reason is an
`ErrorReason` name (`protos/agentplatform/v1/error_reason.proto`); the reason picks the class:

    APError                        .code .reason .metadata .message
     ├── InvalidArgument           INVALID_ARGUMENT, REQUEST_ID_REUSED, DESTINATION_BLOCKED
     │    └── LimitExceeded        LIMIT_EXCEEDED                         .limit
     ├── Unauthenticated           UNAUTHENTICATED, SERVICE_IDENTITY_REQUIRED
     ├── PermissionDenied          PERMISSION_DENIED, SERVICE_NOT_ALLOWED
     ├── NotFound                  NOT_FOUND                              .resource
     ├── AlreadyExists             ALREADY_EXISTS                         .resource
     ├── FailedPrecondition        LAST_OWNER, LEASE_LOST, SEQUENCE_MISMATCH, DECRYPTION_FAILED,
     │    │                        MASTER_KEYS_READ_ONLY
     │    │                        APPROVAL_EXPIRED (a denial's reason, not a call's)
     │    ├── RunAlreadyActive     RUN_ALREADY_ACTIVE                     .active_run
     │    ├── ToolCallNotPending   TOOL_CALL_NOT_PENDING                  .run .call_id
     │    └── HostedModelUnavailable  HOSTED_MODEL_UNAVAILABLE
     ├── VersionMismatch           VERSION_MISMATCH                       .current_version
     ├── RateLimited               RATE_LIMITED                           .retry_after
     ├── BudgetExceeded            BUDGET_EXCEEDED                        .budget
     ├── Unavailable               UNAVAILABLE without a reason, SERVER_SHUTTING_DOWN,
     │                             DATABASE_UNAVAILABLE, SERVICE_UNAVAILABLE, ...
     ├── ConcurrentUpdate          CONCURRENT_UPDATE (nothing applied; safe to repeat)
     ├── DeadlineExceeded          the call's timeout passed
     ├── Unimplemented             NOT_IMPLEMENTED
     ├── InternalError             INTERNAL_ERROR
     └── RunError                  a run ended without completing          .run
          ├── RunFailed            MODEL_ERROR, MODEL_TIMEOUT, WORKER_LOST, RUN_TIMEOUT, MAX_STEPS
          └── RunCancelled         RUN_CANCELLED

`REASON_ERRORS` is the table; `tests/ecosystem/test_sdk_errors.py` fails until a reason added
to the proto has a class. A reason this version does not know (a newer server) falls back to
the class of the status code, then to `APError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, cast

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from agentplatform.v1.error_reason_pb2 import ErrorReason

ERROR_DOMAIN = "agentplatform.dev"


class APError(Exception):
    """A call the platform refused or could not serve, or a run that did not complete.

    `reason` is the stable `ErrorInfo` reason (`NOT_FOUND`, `RUN_ALREADY_ACTIVE`…) or, for a
    call that never reached the platform, the status code's name (`UNAVAILABLE`); `metadata`
    holds the ErrorInfo's details; `code` is the gRPC status code (None for a run's outcome).
    `str()` gives `<message> (<REASON>)`.
    """

    def __init__(
        self,
        message: str,
        *,
        reason: str,
        code: grpc.StatusCode | None = None,
        metadata: Mapping[str, str] | None = None,
        retry_after: float | None = None,
    ) -> None:
        """Describe a failure; the subclass is normally chosen by `error_from_rpc`."""
        super().__init__(message)
        self.message = message
        self.reason = reason
        self.code = code
        self.metadata: Mapping[str, str] = MappingProxyType(dict(metadata or {}))
        self._retry_after = retry_after

    def __str__(self) -> str:
        """Format the failure as `<message> (<REASON>)`."""
        return f"{self.message} ({self.reason})"

    def __repr__(self) -> str:
        """Show the class, reason and message."""
        return f"{type(self).__name__}({self.message!r}, reason={self.reason!r})"


class InvalidArgument(APError):
    """A request field is missing, malformed or out of range; `field` names it."""

    @property
    def field(self) -> str | None:
        """Return the offending request field, if the server named one."""
        return self.metadata.get("field")


class LimitExceeded(InvalidArgument):
    """A request or field exceeds a size limit; `limit` is that limit."""

    @property
    def limit(self) -> int | None:
        """Return the limit the value exceeded, if the server said."""
        value = self.metadata.get("limit")
        return int(value) if value and value.isdigit() else None


class Unauthenticated(APError):
    """The call carries no API key, or one that is malformed, unknown or revoked."""


class PermissionDenied(APError):
    """The caller's role does not allow the call."""


class NotFound(APError):
    """The resource does not exist in the caller's workspace (or another workspace owns it)."""

    @property
    def resource(self) -> str | None:
        """Return the name that was looked up."""
        return self.metadata.get("resource")


class AlreadyExists(APError):
    """A resource with that name already exists."""

    @property
    def resource(self) -> str | None:
        """Return the name that is taken."""
        return self.metadata.get("resource")


class FailedPrecondition(APError):
    """The resource is not in a state that allows the call."""


class RunAlreadyActive(FailedPrecondition):
    """The session already has an active run; `active_run` names it.

    Create the run with `concurrency_policy="enqueue"` to queue it after the active one, or
    `"interrupt"` to cancel that one first.
    """

    @property
    def active_run(self) -> str | None:
        """Return the active run's name, "sessions/{session}/runs/{run}"."""
        return self.metadata.get("active_run")


class ToolCallNotPending(FailedPrecondition):
    """The tool call is not waiting for approval: decided, expired, unknown, or its run is not
    in REQUIRES_ACTION; `run` and `call_id` name it."""

    @property
    def run(self) -> str | None:
        """Return the run's name."""
        return self.metadata.get("run")

    @property
    def call_id(self) -> str | None:
        """Return the call's id."""
        return self.metadata.get("call_id")


class HostedModelUnavailable(FailedPrecondition):
    """No hosted model is configured, or the session asked for one the platform does not offer."""


class VersionMismatch(APError):
    """A check-and-set write named a version that is no longer the newest."""

    @property
    def current_version(self) -> int | None:
        """Return the newest version (0 when the resource does not exist)."""
        value = self.metadata.get("current_version")
        return int(value) if value and value.isdigit() else None


class RateLimited(APError):
    """Too many calls of this kind with one API key; retry after `retry_after` seconds."""

    @property
    def retry_after(self) -> float | None:
        """Return the delay the server asked for, from its `google.rpc.RetryInfo`."""
        return self._retry_after


class BudgetExceeded(APError):
    """The workspace has used its monthly budget; no run starts until it is raised or renews.

    `budget` names it ("workspaces/{workspace}"); `metadata` says which limit ("limit":
    "tokens" or "cost_micros"), its value, what was used and when the month began.
    """

    @property
    def budget(self) -> str:
        """Return the budget that was used up."""
        return self.metadata.get("budget", "")


class Unavailable(APError):
    """The platform, or a service it depends on, cannot be reached right now; retry later.

    Idempotent calls (reads, cancels, creates with a request_id) were already retried with
    backoff before this was raised.
    """


class ConcurrentUpdate(APError):
    """A concurrent change conflicted with the call and nothing was applied; repeat it.

    Idempotent calls were already retried with backoff before this was raised.
    """


class DeadlineExceeded(APError):
    """The call did not finish within its timeout."""


class Unimplemented(APError):
    """The call is not served by this deployment (e.g. no vault or gateway configured)."""


class InternalError(APError):
    """An unexpected server-side failure; the server logs hold the details."""


class RunError(APError):
    """A run ended without completing; `run` names it and `reason` says why."""

    def __init__(self, message: str, *, run: str = "", **details: Any) -> None:
        """Describe how the run `run` ended; `details` are `APError`'s."""
        super().__init__(message, **details)
        self.run = run


class RunFailed(RunError):
    """A run failed (`reason`: MODEL_ERROR, MODEL_TIMEOUT, WORKER_LOST, RUN_TIMEOUT…)."""


class RunCancelled(RunError):
    """A run was cancelled before it completed."""


_R = ErrorReason
# Every reason of error_reason.proto, by its number; a test keeps this complete.
REASON_ERRORS: Mapping[int, type[APError]] = {
    _R.INVALID_ARGUMENT: InvalidArgument,
    _R.REQUEST_ID_REUSED: InvalidArgument,
    _R.DESTINATION_BLOCKED: InvalidArgument,
    _R.LIMIT_EXCEEDED: LimitExceeded,
    _R.UNAUTHENTICATED: Unauthenticated,
    _R.SERVICE_IDENTITY_REQUIRED: Unauthenticated,
    _R.PERMISSION_DENIED: PermissionDenied,
    _R.SERVICE_NOT_ALLOWED: PermissionDenied,
    _R.NOT_FOUND: NotFound,
    _R.ALREADY_EXISTS: AlreadyExists,
    _R.LAST_OWNER: FailedPrecondition,
    _R.LEASE_LOST: FailedPrecondition,
    _R.SEQUENCE_MISMATCH: FailedPrecondition,
    _R.DECRYPTION_FAILED: FailedPrecondition,
    _R.MASTER_KEYS_READ_ONLY: FailedPrecondition,
    _R.RUN_ALREADY_ACTIVE: RunAlreadyActive,
    _R.TOOL_CALL_NOT_PENDING: ToolCallNotPending,
    _R.APPROVAL_EXPIRED: FailedPrecondition,
    _R.HOSTED_MODEL_UNAVAILABLE: HostedModelUnavailable,
    _R.VERSION_MISMATCH: VersionMismatch,
    _R.RATE_LIMITED: RateLimited,
    _R.BUDGET_EXCEEDED: BudgetExceeded,
    _R.SERVER_SHUTTING_DOWN: Unavailable,
    _R.DATABASE_UNAVAILABLE: Unavailable,
    _R.SERVICE_UNAVAILABLE: Unavailable,
    _R.MASTER_KEY_UNAVAILABLE: Unavailable,
    _R.AUDIT_UNAVAILABLE: Unavailable,
    _R.CREDENTIAL_UNAVAILABLE: Unavailable,
    _R.TOOL_SERVER_UNAVAILABLE: Unavailable,
    _R.CONCURRENT_UPDATE: ConcurrentUpdate,
    _R.NOT_IMPLEMENTED: Unimplemented,
    _R.INTERNAL_ERROR: InternalError,
    _R.MODEL_ERROR: RunFailed,
    _R.MODEL_TIMEOUT: RunFailed,
    _R.WORKER_LOST: RunFailed,
    _R.RUN_TIMEOUT: RunFailed,
    _R.MAX_STEPS: RunFailed,
    _R.RUN_CANCELLED: RunCancelled,
}

# For calls without an ErrorInfo (they never reached the platform) or with a reason that is
# newer than this SDK.
CODE_ERRORS: Mapping[grpc.StatusCode, type[APError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.RESOURCE_EXHAUSTED: RateLimited,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.UNIMPLEMENTED: Unimplemented,
    grpc.StatusCode.INTERNAL: InternalError,
}


def error_class(reason: str, code: grpc.StatusCode | None) -> type[APError]:
    """Return the exception class for a reason, else for a status code, else `APError`."""
    number = ErrorReason.DESCRIPTOR.values_by_name.get(reason)
    found = REASON_ERRORS.get(number.number) if number is not None else None
    if found is None and code is not None:
        found = CODE_ERRORS.get(code)
    return found or APError


def error_from_rpc(err: grpc.RpcError) -> APError:
    """Return the typed exception for a failed gRPC call.

    Calls that never reached the platform (connection refused, deadline) carry no ErrorInfo;
    their status code name stands in for the reason, so every error has one.
    """
    if not isinstance(err, grpc.Call | grpc.aio.AioRpcError):
        return APError(str(err), reason="UNKNOWN", code=grpc.StatusCode.UNKNOWN)
    code = err.code()
    message = err.details() or code.name
    reason, metadata, retry_after = _details(err)
    reason = reason or code.name
    return error_class(reason, code)(
        message, reason=reason, code=code, metadata=metadata, retry_after=retry_after
    )


def run_error(run: str, event_reason: str, message: str, *, cancelled: bool) -> RunError:
    """Return the exception for a run that ended with run.failed or run.cancelled."""
    if cancelled:
        return RunCancelled(message or "the run was cancelled", reason="RUN_CANCELLED", run=run)
    reason = event_reason or "UNKNOWN"
    return RunFailed(message or "the run failed", reason=reason, run=run)


def reason_of(err: grpc.Call | grpc.aio.AioRpcError) -> str:
    """Return the `ErrorInfo` reason of a failed call, "" when it carries none."""
    return _details(err)[0]


def _details(err: grpc.Call | grpc.aio.AioRpcError) -> tuple[str, dict[str, str], float | None]:
    """Return the reason and metadata of the call's ErrorInfo, and its RetryInfo delay."""
    try:
        # AioRpcError offers the same synchronous accessors as a finished grpc.Call.
        status = rpc_status.from_call(cast(grpc.Call, err))
    except ValueError:
        # A status whose code disagrees with its rich status is still worth reporting by code.
        return "", {}, None
    reason, metadata, retry_after = "", {}, None
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR) and not reason:
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = str(info.reason)
            metadata = {str(k): str(v) for k, v in info.metadata.items()}
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            retry_after = retry.retry_delay.ToTimedelta().total_seconds()
    return reason, metadata, retry_after
