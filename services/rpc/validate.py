"""Checks for request fields, answering INVALID_ARGUMENT with the field and limit named."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import UTC, datetime

import grpc
from google.protobuf import field_mask_pb2, message, timestamp_pb2

from services.rpc.errors import ApiError, Reason, invalid_argument, limit_exceeded

REQUEST_ID_MAX = 128


def text_field(
    field: str, value: str, *, max_chars: int, required: bool = False, max_bytes: int | None = None
) -> str:
    """Check a text field's presence, size and content; return it unchanged."""
    if required and not value.strip():
        raise invalid_argument(field, f"{field} is required and must not be blank.")
    if len(value) > max_chars:
        raise limit_exceeded(field, max_chars)
    if max_bytes is not None and len(value.encode()) > max_bytes:
        raise limit_exceeded(field, max_bytes, "bytes")
    if "\x00" in value:
        raise invalid_argument(field, f"{field} must not contain NUL characters.")
    return value


def request_id(value: str) -> str | None:
    """Check an idempotency key; return None when absent."""
    if not value:
        return None
    return text_field("request_id", value, max_chars=REQUEST_ID_MAX)


def metadata_map(
    field: str, value: Mapping[str, str], *, max_keys: int, max_key_chars: int, max_value_chars: int
) -> dict[str, str]:
    """Check a string map's key count and sizes."""
    if len(value) > max_keys:
        raise limit_exceeded(field, max_keys, "keys")
    for key, item in value.items():
        if not key:
            raise invalid_argument(field, f"{field} keys must not be empty.")
        text_field(f"{field} key", key, max_chars=max_key_chars)
        text_field(f"{field}[{key!r}]", item, max_chars=max_value_chars)
    return dict(value)


def update_paths(
    mask: field_mask_pb2.FieldMask, resource: message.Message, *, updatable: Collection[str]
) -> frozenset[str]:
    """Resolve an update request's mask (AIP-134) into the fields to change.

    "*" names every updatable field; an empty mask names the updatable fields set in
    `resource` (non-empty), so clearing a field takes its path. A path that is no field of
    the resource, or one that cannot change (output only, immutable), is INVALID_ARGUMENT
    naming it in the message and in the metadata ("path").
    """
    paths = list(mask.paths)
    if not paths:
        return frozenset(f.name for f, _ in resource.ListFields() if f.name in updatable)
    if "*" in paths:
        if len(paths) > 1:
            raise _bad_path("*", '"*" must be the only path of update_mask.')
        return frozenset(updatable)
    kind = resource.DESCRIPTOR.name
    can = ", ".join(updatable)
    for path in paths:
        if path in updatable:
            continue
        if path in resource.DESCRIPTOR.fields_by_name:
            raise _bad_path(path, f"{kind}.{path} cannot be changed; update_mask may name {can}.")
        raise _bad_path(path, f"{path!r} is not a field of {kind}; update_mask may name {can}.")
    return frozenset(paths)


def _bad_path(path: str, message: str) -> ApiError:
    return ApiError(
        grpc.StatusCode.INVALID_ARGUMENT,
        Reason.INVALID_ARGUMENT,
        message,
        field="update_mask",
        metadata={"path": path},
    )


# google.protobuf.Timestamp's range: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999999Z.
_TIMESTAMP_SECONDS = (-62_135_596_800, 253_402_300_799)


def timestamp(value: timestamp_pb2.Timestamp, field: str) -> datetime:
    """Return a request's Timestamp as an aware datetime, refusing one out of its range."""
    low, high = _TIMESTAMP_SECONDS
    if not low <= value.seconds <= high or not 0 <= value.nanos < 1_000_000_000:
        raise invalid_argument(field, f"{field} must be a time between years 1 and 9999.")
    return value.ToDatetime(UTC)
