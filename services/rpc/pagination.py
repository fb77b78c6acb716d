"""Opaque keyset page tokens (AIP-158) bound to the request they continue."""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from datetime import datetime
from typing import Any

from services.rpc.errors import invalid_argument


def clamp_page_size(page_size: int, *, default: int, maximum: int) -> int:
    """Apply AIP-158: 0 means the default, above the maximum is coerced, negative is refused."""
    if page_size < 0:
        raise invalid_argument("page_size", "page_size must not be negative.")
    if page_size == 0:
        return default
    return min(page_size, maximum)


def _binding(scope: str) -> str:
    return hashlib.sha256(scope.encode()).hexdigest()[:16]


def encode_page_token(scope: str, cursor: dict[str, Any]) -> str:
    """Encode a keyset cursor for the request identified by `scope`."""
    raw = json.dumps({"s": _binding(scope), "c": cursor}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_page_token(token: str, scope: str) -> dict[str, Any] | None:
    """Decode a page token; refuse one that is malformed or from another request."""
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
        if not isinstance(data, dict) or not isinstance(data.get("c"), dict):
            raise ValueError
    except ValueError:
        raise invalid_argument("page_token", "page_token is malformed.") from None
    if data.get("s") != _binding(scope):
        raise invalid_argument("page_token", "page_token belongs to a different request.")
    cursor: dict[str, Any] = data["c"]
    return cursor


def encode_keyset_token(scope: str, create_time: datetime, row_id: uuid.UUID) -> str:
    """Encode a (create_time, id) keyset cursor, for lists ordered newest first."""
    return encode_page_token(scope, {"t": create_time.isoformat(), "i": str(row_id)})


def decode_keyset_token(token: str, scope: str) -> tuple[datetime, uuid.UUID] | None:
    """Decode a (create_time, id) keyset cursor; None for the first page."""
    cursor = decode_page_token(token, scope)
    if cursor is None:
        return None
    try:
        return datetime.fromisoformat(cursor["t"]), uuid.UUID(cursor["i"])
    except (KeyError, TypeError, ValueError):
        raise invalid_argument("page_token", "page_token is malformed.") from None
