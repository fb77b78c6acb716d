"""gRPC statuses as AIP-193 HTTP errors.

    {"error": {"code": 404, "message": "...", "status": "NOT_FOUND",
               "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", ...}]}}

The HTTP status comes from the gRPC code (google.rpc.Code's mapping); the details are the
status's own, as canonical JSON. The control plane's errors pass through unchanged; the
edge's own (a malformed body, a failed CSRF check) are built with the same `ApiError`.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import grpc
import structlog
from google.protobuf import json_format
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from starlette.responses import Response

from services.rpc.errors import ApiError, Reason, service_unavailable

log = structlog.get_logger(service="web")

HTTP_STATUS: dict[int, int] = {
    code_pb2.OK: 200,
    code_pb2.CANCELLED: 499,
    code_pb2.UNKNOWN: 500,
    code_pb2.INVALID_ARGUMENT: 400,
    code_pb2.DEADLINE_EXCEEDED: 504,
    code_pb2.NOT_FOUND: 404,
    code_pb2.ALREADY_EXISTS: 409,
    code_pb2.PERMISSION_DENIED: 403,
    code_pb2.UNAUTHENTICATED: 401,
    code_pb2.RESOURCE_EXHAUSTED: 429,
    code_pb2.FAILED_PRECONDITION: 400,
    code_pb2.ABORTED: 409,
    code_pb2.OUT_OF_RANGE: 400,
    code_pb2.UNIMPLEMENTED: 501,
    code_pb2.INTERNAL: 500,
    code_pb2.UNAVAILABLE: 503,
    code_pb2.DATA_LOSS: 500,
}


def status_of_error(error: ApiError) -> status_pb2.Status:
    """Return the rich status an ApiError stands for."""
    for key, value in error.to_status().trailing_metadata:
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            return status_pb2.Status.FromString(value)
    raise AssertionError("ApiError.to_status carries no details")  # pragma: no cover


def status_of_rpc_error(err: grpc.aio.AioRpcError) -> status_pb2.Status:
    """Return the status a failed call carried; one without details gets an ErrorInfo."""
    try:
        status = rpc_status.from_call(err)  # type: ignore[arg-type]
    except ValueError:
        status = None
    if status is not None:
        return status
    if err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        # The control plane was not reached, or did not answer in time: retryable.
        status = status_of_error(service_unavailable("control plane"))
        status.code = getattr(code_pb2, err.code().name)
        return status
    log.error("upstream_error_without_status", code=err.code().name, details=err.details())
    return status_of_error(
        ApiError(grpc.StatusCode.INTERNAL, Reason.INTERNAL_ERROR, "Internal error.")
    )


def error_body(status: status_pb2.Status, http_status: int | None = None) -> dict[str, Any]:
    """Return the AIP-193 body of a status (`code`: the HTTP status it is answered with)."""
    details = []
    for detail in status.details:
        try:
            details.append(json_format.MessageToDict(detail))
        except (TypeError, KeyError):  # a detail type this process does not know
            log.warning("error_detail_dropped", type_url=detail.type_url)
    return {
        "error": {
            "code": http_status or HTTP_STATUS.get(status.code, 500),
            "message": status.message,
            "status": code_pb2.Code.Name(status.code)
            if status.code in code_pb2.Code.values()
            else "UNKNOWN",
            "details": details,
        }
    }


def _retry_after(status: status_pb2.Status) -> str | None:
    for detail in status.details:
        retry = error_details_pb2.RetryInfo()
        if detail.Unpack(retry):
            delay: timedelta = retry.retry_delay.ToTimedelta()
            return str(max(1, round(delay.total_seconds() + 0.5)))
    return None


def error_response(status: status_pb2.Status, http_status: int | None = None) -> Response:
    """Return the HTTP response of a status (Retry-After when it carries a RetryInfo)."""
    headers = {}
    if (retry_after := _retry_after(status)) is not None:
        headers["Retry-After"] = retry_after
    http_status = http_status or HTTP_STATUS.get(status.code, 500)
    return Response(
        json.dumps(error_body(status, http_status), separators=(",", ":")),
        status_code=http_status,
        media_type="application/json",
        headers=headers,
    )


def api_error_response(error: ApiError, http_status: int | None = None) -> Response:
    """Return the HTTP response of one of the edge's own errors."""
    return error_response(status_of_error(error), http_status)
