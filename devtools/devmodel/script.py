"""Decide what the dev model says: the directives, and the reply they call for.

Each wire format decodes its request into a conversation of neutral ``Turn``s;
``plan_reply`` reads the directives in the last user turn and returns a ``Plan``, which the
format then writes in its own shape. Nothing here knows a wire format.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

_CONTENT_WORDS = (
    "alpha",
    "bravo",
    "charlie",
    "delta",
    "echo",
    "foxtrot",
    "golf",
    "hotel",
    "india",
    "juliett",
    "kilo",
    "lima",
    "mike",
    "november",
    "oscar",
    "papa",
    "quebec",
    "romeo",
    "sierra",
    "tango",
    "uniform",
    "victor",
    "whiskey",
    "xray",
    "yankee",
    "zulu",
)
_REASONING_WORDS = ("Reading", "the", "message.")
_DEFAULT_REASONING_TOKENS = 3
_DEFAULT_RETRY_AFTER_MS = 1000
_TOOL_DIRECTIVE = re.compile(r"\[\[\s*tool\s*=\s*([A-Za-z0-9_-]+)(?:\s+args\s*=\s*(.*?))?\s*\]\]")
_DIRECTIVE = re.compile(r"\[\[\s*([A-Za-z_]+)\s*(?:=\s*([^\]]*?)\s*)?\]\]")
_WORD_TOKEN = re.compile(r"\S+\s*")
_INT_DIRECTIVES = frozenset(
    {
        "tokens",
        "delay_ms",
        "reasoning",
        "fail",
        "fail_after",
        "hang_after",
        "tool_steps",
        "cached",
        "rate_limit",
        "retry_after_ms",
    }
)
_FLAG_DIRECTIVES = frozenset({"hang", "malformed"})


Role = Literal["system", "user", "assistant", "tool"]


class BadRequestError(ValueError):
    """Report a request (body or directive) that the dev model answers with HTTP 400."""


@dataclass(frozen=True)
class Turn:
    """Hold one message of a conversation as every wire format means it."""

    role: Role
    text: str = ""
    # (call id, tool name) of each tool call an assistant turn makes.
    calls: tuple[tuple[str, str], ...] = ()
    # The call whose result a tool turn carries.
    call_id: str = ""


@dataclass(frozen=True)
class ToolCall:
    """Describe one tool call to make: the ``index``-th (from 1) of tool round ``round``."""

    round: int
    index: int
    name: str
    # A JSON object, as text.
    arguments: str

    def call_id(self, prefix: str) -> str:
        """Return the call's id with a format's prefix, e.g. ``call_1_2``."""
        return f"{prefix}_{self.round}_{self.index}"


@dataclass(frozen=True)
class Usage:
    """Count a reply's tokens by kind, independent of how a format names them."""

    prompt: int
    # None unless [[cached=N]] asked for it: Chat Completions then omits the field.
    cached: int | None
    content: int
    reasoning: int

    @property
    def output(self) -> int:
        """Return the generated tokens, content and reasoning alike."""
        return self.content + self.reasoning

    @property
    def total(self) -> int:
        """Return prompt plus output tokens."""
        return self.prompt + self.output


@dataclass(frozen=True)
class Plan:
    """Describe the reply a request's directives call for."""

    content: list[str]
    reasoning: list[str]
    usage: Usage
    delay_s: float = 0.0
    fail: int | None = None
    fail_after: int | None = None
    hang: bool = False
    hang_after: int | None = None
    malformed: bool = False
    rate_limit: int = 0
    retry_after_ms: int = _DEFAULT_RETRY_AFTER_MS
    tool_calls: tuple[ToolCall, ...] = ()


def parse_directives(text: str) -> tuple[str, dict[str, int | None]]:
    """Split ``text`` into the text without directives and the directives found in it."""
    directives: dict[str, int | None] = {}
    for match in _DIRECTIVE.finditer(text):
        name, raw = match.group(1).lower(), match.group(2)
        if name in _FLAG_DIRECTIVES:
            if raw is not None:
                raise BadRequestError(f"directive [[{name}]] takes no value")
            directives[name] = None
        elif name in _INT_DIRECTIVES:
            if raw is None or not raw.isdigit():
                raise BadRequestError(f"directive [[{name}=N]] needs a non-negative integer")
            directives[name] = int(raw)
        else:
            raise BadRequestError(f"unknown directive [[{match.group(1)}]]")
    stripped = " ".join(_DIRECTIVE.sub(" ", text).split())
    return stripped, directives


def numbered_tokens(count: int, words: tuple[str, ...] | list[str]) -> list[str]:
    """Return ``count`` tokens cycling through ``words``, each but the last ending in a space."""
    tokens = [f"{word} " for word in itertools.islice(itertools.cycle(words), count)]
    if tokens:
        tokens[-1] = tokens[-1].rstrip()
    return tokens


def tool_directives(text: str) -> tuple[str, list[tuple[str, str]]]:
    """Split ``text`` into the text without tool directives and the (name, arguments) found."""
    calls = []
    for match in _TOOL_DIRECTIVE.finditer(text):
        raw = match.group(2) or "{}"
        try:
            arguments = json.loads(raw)
        except ValueError:
            raise BadRequestError(f"[[tool=...]] has arguments that are not JSON: {raw}") from None
        if not isinstance(arguments, dict):
            raise BadRequestError("[[tool=... args=...]] needs a JSON object")
        calls.append((match.group(1), json.dumps(arguments)))
    return _TOOL_DIRECTIVE.sub(" ", text), calls


def _tool_round(turns: Sequence[Turn]) -> tuple[int, list[str]]:
    """Count the tool rounds in ``turns``, and describe the last round's results."""
    rounds = 0
    names: dict[str, str] = {}
    results: list[str] = []
    for turn in turns:
        if turn.role == "assistant" and turn.calls:
            rounds += 1
            results = []
            names.update(turn.calls)
        elif turn.role == "tool":
            results.append(f"Tool {names.get(turn.call_id, '?')} returned: {turn.text}")
    return rounds, results


def plan_reply(conversation: Sequence[Turn]) -> Plan:
    """Work out the reply to a conversation from the directives in its last user turn."""
    last_index, last_user = next(
        ((i, turn) for i, turn in reversed(list(enumerate(conversation))) if turn.role == "user"),
        (len(conversation), Turn("user")),
    )
    text, calls = tool_directives(last_user.text)
    text, directives = parse_directives(text)
    rounds, results = _tool_round(conversation[last_index + 1 :])
    steps = directives.get("tool_steps")
    tool_calls: tuple[ToolCall, ...] = ()
    if calls and rounds < (1 if steps is None else steps):
        tool_calls = tuple(
            ToolCall(rounds + 1, i + 1, name, arguments)
            for i, (name, arguments) in enumerate(calls)
        )
    token_count = directives.get("tokens")
    if tool_calls:
        content: list[str] = []
    elif results:
        content = _WORD_TOKEN.findall(" ".join(results))
    elif token_count is None:
        content = _WORD_TOKEN.findall(f"You said: {text}")
    else:
        content = numbered_tokens(token_count, _CONTENT_WORDS)
    reasoning = numbered_tokens(
        directives.get("reasoning", _DEFAULT_REASONING_TOKENS) or 0, _REASONING_WORDS
    )
    fail = directives.get("fail")
    if fail is not None and not 400 <= fail <= 599:
        raise BadRequestError("directive [[fail=CODE]] needs an HTTP error code (400-599)")
    if "hang_after" in directives and "fail_after" in directives:
        raise BadRequestError("directives [[hang_after=N]] and [[fail_after=N]] exclude each other")
    prompt = sum(len(turn.text.split()) for turn in conversation)
    cached = directives.get("cached")
    if cached is not None and cached > prompt:
        raise BadRequestError(f"directive [[cached={cached}]] exceeds the {prompt} prompt tokens")
    retry_after_ms = directives.get("retry_after_ms")
    return Plan(
        content=content,
        reasoning=reasoning,
        usage=Usage(prompt, cached, len(content), len(reasoning)),
        delay_s=(directives.get("delay_ms") or 0) / 1000,
        fail=fail,
        fail_after=directives.get("fail_after"),
        hang="hang" in directives,
        hang_after=directives.get("hang_after"),
        malformed="malformed" in directives,
        rate_limit=directives.get("rate_limit") or 0,
        retry_after_ms=_DEFAULT_RETRY_AFTER_MS if retry_after_ms is None else retry_after_ms,
        tool_calls=tool_calls,
    )
