"""Keyset pagination for List calls (AIP-158): page sizes, opaque tokens, the next page.

    page = Page.of(request, f"sessions:{workspace_id}", KEYSET, default=50, maximum=1000)
    rows = await store.session_list(conn, workspace_id, before=page.after, limit=page.fetch)
    rows, token = page.cut(rows, lambda r: (r["create_time"], r["id"]))

A token carries the cursor (the last row's position in the list's order) and a hash of the
request's scope, so a token is refused by any other list; a malformed one is
INVALID_ARGUMENT, never an error of the query it would have fed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, Protocol, TypeVar

from services.rpc.errors import invalid_argument

C = TypeVar("C")
R = TypeVar("R")


class ListRequest(Protocol):
    """What every List request has."""

    @property
    def page_size(self) -> int: ...

    @property
    def page_token(self) -> str: ...


@dataclass(frozen=True)
class CursorCodec(Generic[C]):
    """How one kind of cursor is written into a token and read back."""

    encode: Callable[[C], dict[str, Any]]
    # Raises KeyError, TypeError or ValueError for a cursor it cannot read.
    decode: Callable[[dict[str, Any]], C]


def _position(cursor: dict[str, Any]) -> int:
    position = cursor["p"]
    if not isinstance(position, int) or isinstance(position, bool) or position < 0:
        raise ValueError(position)
    return position


def _name(cursor: dict[str, Any]) -> str:
    name = cursor["n"]
    if not isinstance(name, str):
        raise TypeError(name)
    return name


# (create_time, id) of the last row, for lists ordered by time.
KEYSET: CursorCodec[tuple[datetime, uuid.UUID]] = CursorCodec(
    lambda c: {"t": c[0].isoformat(), "i": str(c[1])},
    lambda c: (datetime.fromisoformat(c["t"]), uuid.UUID(c["i"])),
)
# A non-negative sequence or position, for logs and transcripts.
POSITION: CursorCodec[int] = CursorCodec(lambda p: {"p": p}, _position)
# A name or id, for lists ordered by it.
NAME: CursorCodec[str] = CursorCodec(lambda n: {"n": n}, _name)


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


@dataclass(frozen=True)
class Page(Generic[C]):
    """One List call's page: its size, the cursor it continues after, and its scope."""

    scope: str
    size: int
    after: C | None  # None on the first page
    codec: CursorCodec[C]

    @classmethod
    def of(
        cls,
        request: ListRequest,
        scope: str,
        codec: CursorCodec[C],
        *,
        default: int,
        maximum: int,
    ) -> Page[C]:
        """Read the page size and token of a List request whose results `scope` names."""
        size = clamp_page_size(request.page_size, default=default, maximum=maximum)
        cursor = decode_page_token(request.page_token, scope)
        after = None
        if cursor is not None:
            try:
                after = codec.decode(cursor)
            except (KeyError, TypeError, ValueError):
                raise invalid_argument("page_token", "page_token is malformed.") from None
        return cls(scope, size, after, codec)

    @property
    def fetch(self) -> int:
        """Return how many rows to read: one more than the page shows says whether more follow."""
        return self.size + 1

    def cut(self, rows: list[R], cursor_of: Callable[[R], C]) -> tuple[list[R], str]:
        """Return the rows to show and the token of the page after them ("" at the end)."""
        if len(rows) <= self.size:
            return rows, ""
        shown = rows[: self.size]
        return shown, encode_page_token(self.scope, self.codec.encode(cursor_of(shown[-1])))
