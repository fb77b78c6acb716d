"""Domain errors and their gRPC statuses.

Every error status carries one `google.rpc.ErrorInfo` whose reason is an `ErrorReason` name
from `agentplatform/v1/error_reason.proto`; bad input adds a `google.rpc.BadRequest`.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta

import asyncpg
import grpc
from agentplatform.v1 import error_reason_pb2
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

ERROR_DOMAIN = "agentplatform.dev"

Reason = error_reason_pb2.ErrorReason

# Failures of the connection to the database rather than of a statement: the server is
# restarting or unreachable, or the connection broke under the statement. Each is retryable
# (UNAVAILABLE / DATABASE_UNAVAILABLE), never INTERNAL; asyncpg aborts a connection that
# failed so, and the pool opens a fresh one for the next caller.
DATABASE_ERRORS: tuple[type[BaseException], ...] = (
    # Connect refused or reset, the socket closed mid-statement, and timeouts (connecting or
    # acquiring from the pool): TimeoutError and ConnectionError are OSErrors.
    OSError,
    # SQLSTATE class 08: the connection does not exist, failed, or was rejected.
    asyncpg.PostgresConnectionError,
    # Class 57P: the server is shutting down, restarting or starting up, or ended the session.
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.CannotConnectNowError,
    asyncpg.IdleSessionTimeoutError,
    asyncpg.IdleInTransactionSessionTimeoutError,
    asyncpg.TooManyConnectionsError,
    # The driver's view of a broken connection: "connection is closed", "pool is closing".
    asyncpg.InterfaceError,
    # A pooled connection whose server ended the session while it was idle: the driver's
    # protocol is left mid-error until the socket closes, and fails the next statement with
    # "cannot switch to state 12; another operation (2) is in progress".
    asyncpg.InternalClientError,
)


# SQLSTATE class 40: the database aborted the transaction to break a deadlock or a
# serialization conflict with a concurrent one. Nothing was applied; the call may be repeated.
TRANSACTION_CONFLICTS: tuple[type[BaseException], ...] = (asyncpg.TransactionRollbackError,)


class ApiError(Exception):
    """An error that reaches the client as a gRPC status with an ErrorInfo."""

    def __init__(
        self,
        code: grpc.StatusCode,
        reason: Reason.ValueType,
        message: str,
        *,
        metadata: Mapping[str, str] | None = None,
        field: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.metadata = dict(metadata or {})
        self.field = field
        self.retry_after = retry_after
        if field is not None:
            self.metadata.setdefault("field", field)

    @property
    def reason_name(self) -> str:
        """Return the stable reason string, e.g. ``RUN_ALREADY_ACTIVE``."""
        return Reason.Name(self.reason)

    def to_status(self) -> grpc.Status:
        """Build the rich gRPC status for this error."""
        info = any_pb2.Any()
        info.Pack(
            error_details_pb2.ErrorInfo(
                reason=self.reason_name, domain=ERROR_DOMAIN, metadata=self.metadata
            )
        )
        details = [info]
        if self.field is not None and self.code == grpc.StatusCode.INVALID_ARGUMENT:
            bad_request = any_pb2.Any()
            bad_request.Pack(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(
                            field=self.field, description=self.message
                        )
                    ]
                )
            )
            details.append(bad_request)
        if self.retry_after is not None:
            retry = any_pb2.Any()
            delay = duration_pb2.Duration()
            delay.FromTimedelta(timedelta(seconds=self.retry_after))
            retry.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
            details.append(retry)
        status = status_pb2.Status(
            code=getattr(code_pb2, self.code.name), message=self.message, details=details
        )
        return rpc_status.to_status(status)


def invalid_argument(field: str, message: str) -> ApiError:
    """Build an INVALID_ARGUMENT error naming the offending field."""
    return ApiError(grpc.StatusCode.INVALID_ARGUMENT, Reason.INVALID_ARGUMENT, message, field=field)


def limit_exceeded(field: str, limit: int, unit: str = "characters") -> ApiError:
    """Build an INVALID_ARGUMENT error for a value over its size limit."""
    return ApiError(
        grpc.StatusCode.INVALID_ARGUMENT,
        Reason.LIMIT_EXCEEDED,
        f"{field} exceeds its limit of {limit} {unit}.",
        field=field,
        metadata={"limit": str(limit)},
    )


def rate_limited(what: str, per_minute: int, retry_after: float) -> ApiError:
    """Build RESOURCE_EXHAUSTED for a caller over a rate limit, saying when to retry."""
    return ApiError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        Reason.RATE_LIMITED,
        f"Too many {what} with this API key (limit {per_minute} per minute); "
        f"retry in {retry_after:.1f} s.",
        metadata={"limit": str(per_minute)},
        retry_after=retry_after,
    )


def not_found(resource: str) -> ApiError:
    """Build a NOT_FOUND error; another workspace's resources read the same."""
    return ApiError(
        grpc.StatusCode.NOT_FOUND,
        Reason.NOT_FOUND,
        f"{resource} not found.",
        metadata={"resource": resource},
    )


def unauthenticated(message: str) -> ApiError:
    """Build an UNAUTHENTICATED error."""
    return ApiError(grpc.StatusCode.UNAUTHENTICATED, Reason.UNAUTHENTICATED, message)


def database_unavailable() -> ApiError:
    """Build the retryable error for a database that cannot be reached right now."""
    return ApiError(
        grpc.StatusCode.UNAVAILABLE,
        Reason.DATABASE_UNAVAILABLE,
        "The database is unavailable right now; retry the call.",
    )


def concurrent_update() -> ApiError:
    """Build the ABORTED error of a transaction the database aborted for a concurrent one."""
    return ApiError(
        grpc.StatusCode.ABORTED,
        Reason.CONCURRENT_UPDATE,
        "A concurrent change conflicted with this one and nothing was applied; try again.",
    )


def internal_error() -> ApiError:
    """Build the INTERNAL error that hides an unexpected failure's details."""
    return ApiError(grpc.StatusCode.INTERNAL, Reason.INTERNAL_ERROR, "Internal error.")


def has_reason(err: grpc.aio.AioRpcError, reason: Reason.ValueType) -> bool:
    """Tell whether a failed call carried this ErrorInfo reason."""
    return reason_of(err) == Reason.Name(reason)


def reason_of(err: grpc.aio.AioRpcError) -> str | None:
    """Return the ErrorInfo reason a failed call carried, if any."""
    try:
        status = rpc_status.from_call(err)  # type: ignore[arg-type]
    except ValueError:
        return None
    if status is None:
        return None
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return str(info.reason)
    return None


def service_unavailable(service: str) -> ApiError:
    """Build the retryable error for a platform service that cannot be reached right now."""
    return ApiError(
        grpc.StatusCode.UNAVAILABLE,
        Reason.SERVICE_UNAVAILABLE,
        f"The {service} is unavailable right now; retry the call.",
        metadata={"service": service},
    )


def forwarded_error(err: grpc.aio.AioRpcError, service: str) -> ApiError:
    """Rebuild the error a platform service answered, for our own caller.

    The peer's code, reason, message and field pass through; a peer that could not be
    reached becomes SERVICE_UNAVAILABLE. A peer refusing *our* identity is our
    misconfiguration, not the caller's fault, so it becomes INTERNAL.
    """
    try:
        status = rpc_status.from_call(err)  # type: ignore[arg-type]
    except ValueError:
        status = None
    info, field = None, None
    for detail in status.details if status is not None else ():
        unpacked = error_details_pb2.ErrorInfo()
        if detail.Unpack(unpacked):
            info = unpacked
        bad_request = error_details_pb2.BadRequest()
        if detail.Unpack(bad_request) and bad_request.field_violations:
            field = bad_request.field_violations[0].field
    if info is None or info.reason not in Reason.DESCRIPTOR.values_by_name:
        if err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            return service_unavailable(service)
        return internal_error()
    reason = Reason.Value(info.reason)
    if reason in (Reason.SERVICE_IDENTITY_REQUIRED, Reason.SERVICE_NOT_ALLOWED):
        return internal_error()
    return ApiError(err.code(), reason, err.details() or "", metadata=info.metadata, field=field)
