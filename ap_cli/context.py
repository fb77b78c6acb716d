"""Carry what every command needs: the event loop, the client and the output streams."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Protocol, TextIO, TypeVar

from agentplatform import Client, ReconnectHook, RpcFailure

T = TypeVar("T")
ItemT = TypeVar("ItemT")


class Page(Protocol):
    """A List response: some items and the token of the next page."""

    @property
    def next_page_token(self) -> str: ...


PageT = TypeVar("PageT", bound=Page)


async def _await(awaitable: Awaitable[T]) -> T:
    return await awaitable


async def all_pages(
    fetch: Callable[[str], Awaitable[PageT]], items: Callable[[PageT], Iterable[ItemT]]
) -> list[ItemT]:
    """Follow a List RPC's page tokens to the end and return every item."""
    found: list[ItemT] = []
    token = ""
    while True:
        page = await fetch(token)
        found.extend(items(page))
        token = page.next_page_token
        if not token:
            return found


def wants_color(stream: TextIO) -> bool:
    """Say whether ANSI styling suits the stream: a terminal, and NO_COLOR not set."""
    isatty = getattr(stream, "isatty", None)
    return (
        bool(isatty and isatty())
        and not os.environ.get("NO_COLOR")
        and os.environ.get("TERM") != "dumb"
    )


@dataclass
class Context:
    """One CLI invocation's loop, client and streams."""

    runner: asyncio.Runner
    client: Client
    out: TextIO
    err: TextIO

    @property
    def color(self) -> bool:
        """Say whether stdout gets ANSI styling."""
        return wants_color(self.out)

    def run(self, awaitable: Awaitable[T]) -> T:
        """Run a coroutine or a gRPC call on the invocation's loop; Ctrl-C cancels it."""
        return self.runner.run(_await(awaitable))

    def say(self, text: str = "") -> None:
        """Write a line to stdout."""
        print(text, file=self.out, flush=True)

    def note(self, text: str) -> None:
        """Write a diagnostic line to stderr."""
        print(text, file=self.err, flush=True)

    def error(self, failure: RpcFailure | str) -> None:
        """Write `error: <message> (<REASON>)` to stderr."""
        self.note(f"error: {failure}")

    def reconnect_notices(self, before: Callable[[], None]) -> ReconnectHook:
        """Return a stream's reconnect hook that says once per interruption that it resumes.

        The stream retries with backoff for as long as the server is away (a restart takes
        a dozen attempts); another line is worth printing only after events came through
        again. `before` runs first, e.g. to end a half-printed line.
        """
        noticed_after: int | None = None

        def notice(failure: RpcFailure | None, last_sequence: int) -> None:
            nonlocal noticed_after
            if last_sequence == noticed_after:
                return
            noticed_after = last_sequence
            before()
            why = f" ({failure.reason}: {failure.message})" if failure else ""
            self.note(f"[stream interrupted{why}; resuming after event {last_sequence}]")

        return notice
