"""ListSessions' `filter`: a small AIP-160 subset, parsed into what the store matches.

    filter  = term { "AND" term }
    term    = "title" ":" STRING              title contains it (any case)
            | "metadata." KEY "=" STRING      that label has exactly this value
            | "metadata." KEY ":" "*"         that label is set
            | "latest_run_state" "=" STATE    the newest run is in it; NONE: no run yet
            | STRING                          title, a label key or a value contains it
    STRING  = a double-quoted string with \\" and \\\\ escapes, or a bare word

Anything else is INVALID_ARGUMENT naming `filter`, with what was expected where.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from services.rpc import validate
from services.rpc.errors import invalid_argument

MAX_FILTER_CHARS = 1000
LATEST_RUN_STATES = {
    "QUEUED": ("queued", "waiting"),
    "RUNNING": ("running",),
    "COMPLETED": ("completed",),
    "FAILED": ("failed",),
    "CANCELLED": ("cancelled",),
    "REQUIRES_ACTION": ("requires_action",),
    "NONE": ("none",),
}
_TOKEN = re.compile(
    r"""\s*(?:
      (?P<string>"(?:[^"\\]|\\.)*")
    | (?P<op>[:=])
    | (?P<star>\*)
    | (?P<word>[^\s:="*]+)
    )""",
    re.VERBOSE,
)
_KEY = re.compile(r"^[A-Za-z0-9_.\-/]{1,128}$")


@dataclass(frozen=True)
class SessionFilter:
    """What a session must match; empty fields match everything."""

    title_contains: list[str] = field(default_factory=list)
    text_contains: list[str] = field(default_factory=list)
    metadata_equals: dict[str, str] = field(default_factory=dict)
    metadata_has: list[str] = field(default_factory=list)
    latest_run_states: tuple[str, ...] | None = None


def _tokens(text: str) -> list[tuple[str, str]]:
    tokens = []
    pos = 0
    while pos < len(text):
        if not text[pos:].strip():
            break
        found = _TOKEN.match(text, pos)
        if found is None or found.end() == pos:
            raise invalid_argument("filter", f"filter: unexpected character at {pos + 1}.")
        kind = found.lastgroup or ""
        value = found.group(kind)
        if kind == "string":
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        tokens.append((kind, value))
        pos = found.end()
    return tokens


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = _tokens(text)
        self.i = 0
        self.found = SessionFilter()
        self.states: tuple[str, ...] | None = None

    def take(self, kinds: tuple[str, ...], what: str) -> str:
        if self.i >= len(self.tokens) or self.tokens[self.i][0] not in kinds:
            got = repr(self.tokens[self.i][1]) if self.i < len(self.tokens) else "the end"
            raise invalid_argument("filter", f"filter: expected {what}, got {got}.")
        self.i += 1
        return self.tokens[self.i - 1][1]

    def parse(self) -> SessionFilter:
        while self.i < len(self.tokens):
            if self.i and self.take(("word",), '"AND"') != "AND":
                raise invalid_argument("filter", "filter: terms are joined with AND.")
            self.term()
        found = self.found
        return SessionFilter(
            found.title_contains,
            found.text_contains,
            found.metadata_equals,
            found.metadata_has,
            self.states,
        )

    def term(self) -> None:
        kind, value = self.tokens[self.i]
        followed = self.i + 1 < len(self.tokens) and self.tokens[self.i + 1][0] == "op"
        if kind == "string" or (kind == "word" and not followed):
            self.i += 1
            if value:
                self.found.text_contains.append(value)
            return
        name = self.take(("word",), "a field name")
        op = self.take(("op",), '":" or "="')
        if name == "title" and op == ":":
            self.found.title_contains.append(self.take(("string", "word"), "a string"))
        elif name.startswith("metadata.") and _KEY.match(key := name.removeprefix("metadata.")):
            if op == ":":
                self.take(("star",), '"*" (has the label)')
                self.found.metadata_has.append(key)
            else:
                self.found.metadata_equals[key] = self.take(("string", "word"), "a string")
        elif name == "latest_run_state" and op == "=":
            self.latest_run_state(self.take(("word", "string"), "a run state").upper())
        else:
            raise invalid_argument(
                "filter",
                f"filter: cannot filter on {name}{op}; use title:, metadata.KEY=, "
                "metadata.KEY:*, latest_run_state= or a quoted string.",
            )

    def latest_run_state(self, state: str) -> None:
        if state not in LATEST_RUN_STATES:
            choices = ", ".join(LATEST_RUN_STATES)
            raise invalid_argument("filter", f"filter: latest_run_state is one of {choices}.")
        if self.states is not None and self.states != LATEST_RUN_STATES[state]:
            self.states = ()  # two different states: nothing matches
        else:
            self.states = LATEST_RUN_STATES[state]


def parse_session_filter(text: str) -> SessionFilter:
    """Parse a ListSessions filter; raise INVALID_ARGUMENT for one it cannot read."""
    return _Parser(validate.text_field("filter", text, max_chars=MAX_FILTER_CHARS)).parse()
