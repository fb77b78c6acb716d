"""Page: one page size rule, one token format, and malformed tokens refused as bad input."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import grpc
import pytest

from services.rpc.errors import ApiError
from services.rpc.pagination import KEYSET, NAME, POSITION, Page, encode_page_token


@dataclass
class Request:
    """A List request's paging fields."""

    page_size: int = 0
    page_token: str = ""


def test_pages_walk_a_list_to_its_end() -> None:
    """Each token continues after the last row shown; the last page has no token."""
    rows = list(range(1, 8))
    seen: list[int] = []
    token = ""
    while True:
        page = Page.of(Request(3, token), "items", POSITION, default=10, maximum=100)
        fetched = [r for r in rows if r > (page.after or 0)][: page.fetch]
        shown, token = page.cut(fetched, lambda r: r)
        seen += shown
        if not token:
            break
    assert seen == rows


def test_keyset_cursors_round_trip() -> None:
    """A (time, id) cursor reads back as it was written."""
    at, row_id = datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC), uuid.uuid4()
    first = Page.of(Request(1), "s", KEYSET, default=10, maximum=100)
    _, token = first.cut([(at, row_id), (at, uuid.uuid4())], lambda r: r)
    assert Page.of(Request(1, token), "s", KEYSET, default=10, maximum=100).after == (at, row_id)


@pytest.mark.parametrize(
    ("cursor", "codec"),
    [
        ({"p": "3"}, POSITION),
        ({"p": -1}, POSITION),
        ({"p": True}, POSITION),
        ({"n": 5}, NAME),
        ({"t": "yesterday", "i": "x"}, KEYSET),
        ({}, KEYSET),
    ],
)
def test_a_malformed_cursor_is_invalid_argument(cursor: dict[str, object], codec: object) -> None:
    """A token whose cursor does not fit the list is refused before any query sees it."""
    token = encode_page_token("scope", cursor)
    with pytest.raises(ApiError) as refused:
        Page.of(Request(0, token), "scope", codec, default=10, maximum=100)  # type: ignore[arg-type]
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.field == "page_token"


def test_a_token_of_another_list_is_refused() -> None:
    """A token is bound to the scope of the list that issued it."""
    token = encode_page_token("sessions:a", {"p": 1})
    with pytest.raises(ApiError, match="different request"):
        Page.of(Request(0, token), "sessions:b", POSITION, default=10, maximum=100)


def test_page_sizes_follow_aip_158() -> None:
    """0 is the default, a size above the maximum is coerced, a negative one refused."""
    assert Page.of(Request(0), "s", NAME, default=7, maximum=9).size == 7
    assert Page.of(Request(50), "s", NAME, default=7, maximum=9).size == 9
    with pytest.raises(ApiError):
        Page.of(Request(-1), "s", NAME, default=7, maximum=9)
