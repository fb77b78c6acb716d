"""Checks for request fields, answering INVALID_ARGUMENT with the field and limit named."""

from __future__ import annotations

from collections.abc import Mapping

from services.rpc.errors import invalid_argument, limit_exceeded

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
