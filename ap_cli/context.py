"""Carry what every command needs: the client, the output streams and how `ap` was invoked."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TextIO

from agentplatform import APError, Client, ReconnectHook
from google.protobuf import json_format
from google.protobuf.message import Message


def wants_color(stream: TextIO) -> bool:
    """Say whether ANSI styling suits the stream: a terminal, and NO_COLOR not set."""
    isatty = getattr(stream, "isatty", None)
    return (
        bool(isatty and isatty())
        and not os.environ.get("NO_COLOR")
        and os.environ.get("TERM") != "dumb"
    )


def invoked_as(argv0: str | None = None) -> str:
    """Return how to run `ap` again from where the user stands, for next-step hints.

    `ap` when the PATH finds this same program; otherwise the path it was started by,
    relative to the working folder when it lies below it (`.venv/bin/ap`).
    """
    argv0 = argv0 if argv0 is not None else sys.argv[0]
    name = os.path.basename(argv0)
    if not argv0 or name.endswith(".py") or name.startswith("-"):
        # `python -m ap_cli.main`, or an embedding (tests): the entry point's name is right.
        return "ap"
    found = shutil.which(name)
    if found and os.path.exists(argv0) and os.path.samefile(found, argv0):
        return name
    if os.sep not in argv0:
        return argv0
    absolute = os.path.abspath(argv0)
    relative = os.path.relpath(absolute)
    if relative.startswith(".."):
        return absolute
    return relative if os.sep in relative else f".{os.sep}{relative}"


def message_json(message: Message) -> str:
    """Return a message as one line of canonical proto3 JSON."""
    return json_format.MessageToJson(message, indent=None)


def message_dict(message: Message) -> dict[str, object]:
    """Return a message as the dict of its canonical proto3 JSON."""
    return json_format.MessageToDict(message)


@dataclass
class Context:
    """One CLI invocation's client, streams, output format and name."""

    client: Client
    out: TextIO
    err: TextIO
    json: bool = False
    ap: str = "ap"

    @property
    def color(self) -> bool:
        """Say whether stdout gets ANSI styling."""
        return not self.json and wants_color(self.out)

    def say(self, text: str = "") -> None:
        """Write a line to stdout."""
        print(text, file=self.out, flush=True)

    def note(self, text: str) -> None:
        """Write a diagnostic line to stderr."""
        print(text, file=self.err, flush=True)

    def error(self, failure: APError | str) -> None:
        """Write `error: <message> (<REASON>)` to stderr."""
        self.note(f"error: {failure}")

    def emit(self, message: Message) -> None:
        """Write one message as a line of JSON (`--json`)."""
        self.say(message_json(message))

    def emit_all(self, messages: Iterable[Message]) -> int:
        """Write each message as a line of JSON; return how many there were."""
        count = 0
        for message in messages:
            self.emit(message)
            count += 1
        return count

    def emit_object(self, fields: Mapping[str, object]) -> None:
        """Write an object whose values are messages, lists of them, or JSON values."""
        self.say(json.dumps({key: _jsonable(value) for key, value in fields.items()}))

    def reconnect_notices(self, before: Callable[[], None] | None = None) -> ReconnectHook:
        """Return a stream's reconnect hook that says once per interruption that it resumes.

        The stream retries with backoff for as long as the server is away (a restart takes
        a dozen attempts); another line is worth printing only after events came through
        again. `before` runs first, e.g. to end a half-printed line.
        """
        noticed_after: int | None = None

        def notice(failure: APError | None, last_sequence: int) -> None:
            nonlocal noticed_after
            if last_sequence == noticed_after:
                return
            noticed_after = last_sequence
            if before is not None:
                before()
            why = f" ({failure.reason}: {failure.message})" if failure else ""
            self.note(f"[stream interrupted{why}; resuming after event {last_sequence}]")

        return notice


def _jsonable(value: object) -> object:
    if isinstance(value, Message):
        return message_dict(value)
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    return value


def json_option() -> argparse.ArgumentParser:
    """Return the parent parser that gives a read command its `--json` flag."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--json",
        action="store_true",
        help="print canonical proto3 JSON, one object per line (pipe into jq)",
    )
    return parent
