"""Turn gRPC failures into the platform's reason codes and one-line messages."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import cast

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

ERROR_DOMAIN = "agentplatform.dev"


@dataclass(frozen=True)
class RpcFailure:
    """What a failed call reported: status code, message, ErrorInfo reason and metadata."""

    code: grpc.StatusCode
    message: str
    reason: str
    metadata: Mapping[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        """Format the failure as `<message> (<REASON>)`."""
        return f"{self.message} ({self.reason})"


def describe_rpc_error(err: grpc.RpcError) -> RpcFailure:
    """Decode a failed call's status and its `google.rpc.ErrorInfo`, if it carries one.

    Calls that never reached the platform (connection refused, deadline) carry no ErrorInfo;
    their status code name stands in for the reason so every error line has one.
    """
    if not isinstance(err, grpc.aio.AioRpcError | grpc.Call):
        return RpcFailure(code=grpc.StatusCode.UNKNOWN, message=str(err), reason="UNKNOWN")
    code = err.code()
    message = err.details() or code.name
    reason, metadata = _error_info(err) or (code.name, {})
    return RpcFailure(code=code, message=message, reason=reason or code.name, metadata=metadata)


def _error_info(err: grpc.aio.AioRpcError | grpc.Call) -> tuple[str, dict[str, str]] | None:
    """Return the reason and metadata of the call's first ErrorInfo detail, if any."""
    try:
        # AioRpcError offers the same synchronous accessors as a finished grpc.Call.
        status = rpc_status.from_call(cast(grpc.Call, err))
    except ValueError:
        # A status whose code disagrees with its rich status is still worth reporting by code.
        return None
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return str(info.reason), {str(k): str(v) for k, v in info.metadata.items()}
    return None


def is_reconnectable(failure: RpcFailure) -> bool:
    """Say whether a call failed only because the server was unreachable or shutting down."""
    return failure.code == grpc.StatusCode.UNAVAILABLE or failure.reason == "SERVER_SHUTTING_DOWN"


class ClientError(Exception):
    """A failure the client detected itself, reported like a server error."""

    def __init__(self, failure: RpcFailure) -> None:
        """Wrap `failure`; `str()` gives its one-line message."""
        super().__init__(str(failure))
        self.failure = failure
