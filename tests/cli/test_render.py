"""Tests of the CLI's event renderer, fed with constructed RunEvent protos."""

from __future__ import annotations

import io
from typing import Any

import pytest
from agentplatform import is_terminal
from agentplatform.v1 import run_pb2

from ap_cli.render import EventRenderer, compact_json, shorten

RUN = "sessions/00000000-0000-0000-0000-000000000001/runs/00000000-0000-0000-0000-000000000002"


class Timeline:
    """Build a run's events with consecutive sequences, as the server stores them."""

    def __init__(self) -> None:
        """Start before sequence 1."""
        self.sequence = 0

    def event(self, type_: str, attempt: int = 1, **payload: Any) -> run_pb2.RunEvent:
        """Return the next event of `type_` with the given payload field set."""
        self.sequence += 1
        return run_pb2.RunEvent(
            name=f"{RUN}/events/{self.sequence}",
            sequence=self.sequence,
            type=type_,
            attempt=attempt,
            **payload,
        )

    def queued(self) -> run_pb2.RunEvent:
        """Return a "run.queued" event (stored before any attempt)."""
        return self.event("run.queued", attempt=0, run_queued=run_pb2.RunQueued())

    def started(self, attempt: int = 1) -> run_pb2.RunEvent:
        """Return a "run.started" event."""
        return self.event("run.started", attempt, run_started=run_pb2.RunStarted(model="dev"))

    def attempt_started(self, attempt: int, reason: str = "") -> run_pb2.RunEvent:
        """Return a "run.attempt_started" event."""
        return self.event(
            "run.attempt_started",
            attempt,
            run_attempt_started=run_pb2.RunAttemptStarted(attempt=attempt, reason=reason),
        )

    def text(self, text: str, attempt: int = 1) -> run_pb2.RunEvent:
        """Return an "output_text.delta" event."""
        return self.event(
            "output_text.delta", attempt, output_text_delta=run_pb2.TextDelta(text=text)
        )

    def reasoning(self, text: str, attempt: int = 1) -> run_pb2.RunEvent:
        """Return a "reasoning.summary.delta" event."""
        return self.event(
            "reasoning.summary.delta",
            attempt,
            reasoning_summary_delta=run_pb2.TextDelta(text=text),
        )

    def completed(self, attempt: int = 1) -> run_pb2.RunEvent:
        """Return a "run.completed" event."""
        return self.event(
            "run.completed",
            attempt,
            run_completed=run_pb2.RunCompleted(output_message="sessions/s/messages/m"),
        )


def render_all(events: list[run_pb2.RunEvent], **options: Any) -> tuple[EventRenderer, str]:
    """Render `events` into a fresh buffer and return the renderer and the text."""
    out = io.StringIO()
    renderer = EventRenderer(out, **options)
    for event in events:
        renderer.render(event)
    renderer.finish()
    return renderer, out.getvalue()


def test_every_event_type_is_rendered_in_verbose_mode() -> None:
    t = Timeline()
    events = [
        t.queued(),
        t.started(),
        t.attempt_started(1),
        t.reasoning("thinking it over"),
        t.text("Let me check. "),
        t.event(
            "tool_call.started",
            tool_call_started=run_pb2.ToolCallStarted(
                call_id="c1", tool="weather", arguments_json='{ "city": "Paris" }'
            ),
        ),
        t.event(
            "tool_call.progress",
            tool_call_progress=run_pb2.ToolCallProgress(call_id="c1", elapsed_ms=2500),
        ),
        t.event(
            "tool_call.completed",
            tool_call_completed=run_pb2.ToolCallCompleted(
                call_id="c1", result="sunny, 21°C", duration_ms=2600
            ),
        ),
        t.text("It is sunny."),
        t.event(
            "usage",
            usage=run_pb2.Usage(input_tokens=12, output_tokens=20, reasoning_tokens=3),
        ),
        t.completed(),
    ]

    renderer, text = render_all(events, verbose=True)

    assert text == (
        "[run queued]\n"
        "[run started on dev]\n"
        "(reasoning) thinking it over\n"
        "Let me check. \n"
        '[tool weather({"city":"Paris"})]\n'
        "[tool weather running, 2.5s]\n"
        "[tool weather returned (2.6s): sunny, 21°C]\n"
        "It is sunny.\n"
        "[usage: 12 input, 20 output (3 reasoning) tokens]\n"
        "[run completed]\n"
    )
    assert renderer.outcome == "completed"
    assert renderer.terminal
    assert renderer.output_text == "Let me check. It is sunny."
    assert renderer.reasoning_text == "thinking it over"
    assert renderer.output_message == "sessions/s/messages/m"
    assert renderer.usage.output_tokens == 20
    assert renderer.last_sequence == len(events)


def test_chat_mode_hides_lifecycle_and_usage_lines() -> None:
    t = Timeline()
    events = [
        t.queued(),
        t.started(),
        t.text("Hello"),
        t.text(", world"),
        t.event("usage", usage=run_pb2.Usage(input_tokens=1, output_tokens=2)),
        t.completed(),
    ]

    renderer, text = render_all(events)

    assert text == "Hello, world\n[run completed]\n"
    assert renderer.usage.input_tokens == 1


def test_attempt_restart_drops_partial_output() -> None:
    t = Timeline()
    events = [
        t.queued(),
        t.started(),
        t.reasoning("first try"),
        t.text("The answer is fo"),
        t.attempt_started(2, reason="WORKER_LOST"),
        t.text("The answer is 42.", attempt=2),
        t.completed(attempt=2),
    ]

    renderer, text = render_all(events)

    assert text == (
        "(reasoning) first try\n"
        "The answer is fo\n"
        "[run restarted after WORKER_LOST: attempt 2; discarding the partial output above]\n"
        "The answer is 42.\n"
        "[run completed]\n"
    )
    assert renderer.output_text == "The answer is 42."
    assert renderer.reasoning_text == ""
    assert renderer.attempt == 2


def test_first_attempt_announcement_is_not_a_restart() -> None:
    t = Timeline()
    renderer, text = render_all([t.queued(), t.attempt_started(1), t.text("hi"), t.completed()])

    assert "restarted" not in text
    assert renderer.output_text == "hi"


def test_events_of_a_superseded_attempt_are_ignored() -> None:
    t = Timeline()
    events = [
        t.started(),
        t.attempt_started(2, reason="WORKER_LOST"),
        t.text("stale", attempt=1),
        t.text("fresh", attempt=2),
        t.completed(attempt=2),
    ]

    renderer, text = render_all(events)

    assert "stale" not in text
    assert renderer.output_text == "fresh"


def test_failure_shows_reason_and_message() -> None:
    t = Timeline()
    events = [
        t.started(),
        t.text("partial"),
        t.event(
            "run.failed",
            run_failed=run_pb2.RunFailed(
                reason="MODEL_TIMEOUT", message="the model went silent for 60s"
            ),
        ),
    ]

    renderer, text = render_all(events)

    assert text == "partial\n[run failed: the model went silent for 60s (MODEL_TIMEOUT)]\n"
    assert renderer.outcome == "failed"
    assert renderer.failure is not None
    assert renderer.failure.reason == "MODEL_TIMEOUT"


def test_cancellation_is_terminal() -> None:
    t = Timeline()
    started = t.started()
    event = t.event("run.cancelled", run_cancelled=run_pb2.RunCancelled(reason="user"))

    renderer, text = render_all([started, event])

    assert is_terminal(event)
    assert text == "[run cancelled: user]\n"
    assert renderer.outcome == "cancelled"


def test_failed_tool_call_is_marked() -> None:
    t = Timeline()
    events = [
        t.event(
            "tool_call.started",
            tool_call_started=run_pb2.ToolCallStarted(call_id="c", tool="fetch", arguments_json=""),
        ),
        t.event(
            "tool_call.completed",
            tool_call_completed=run_pb2.ToolCallCompleted(
                call_id="c", result="connection\nrefused", is_error=True, duration_ms=40
            ),
        ),
    ]

    _, text = render_all(events)

    assert text == "[tool fetch()]\n[tool fetch failed (40ms): connection refused]\n"


def test_repeated_sequences_after_a_reconnect_are_skipped() -> None:
    t = Timeline()
    hello = t.text("Hello")
    world = t.text(" world")

    renderer, text = render_all([hello, world, hello, world, t.completed()])

    assert text == "Hello world\n[run completed]\n"
    assert renderer.last_sequence == 3


def test_unknown_payload_is_skipped() -> None:
    t = Timeline()
    future = t.event("something.new")

    renderer, text = render_all([future, t.text("ok")])

    assert text == "ok\n"
    assert renderer.last_sequence == 2
    assert not renderer.terminal


def test_color_dims_reasoning_and_resets_every_chunk() -> None:
    t = Timeline()
    _, text = render_all([t.reasoning("a"), t.reasoning("b"), t.text("c")], color=True)

    assert text == "\x1b[2ma\x1b[0m\x1b[2mb\x1b[0m\nc\n"
    assert "(reasoning)" not in text


def test_no_ansi_without_color() -> None:
    t = Timeline()
    events = [
        t.reasoning("r"),
        t.event("run.failed", run_failed=run_pb2.RunFailed(reason="MODEL_ERROR", message="x")),
    ]

    _, text = render_all(events)

    assert "\x1b" not in text


def test_long_tool_arguments_are_shortened() -> None:
    t = Timeline()
    call = run_pb2.ToolCallStarted(
        call_id="c", tool="search", arguments_json='{"q": "' + "x" * 500 + '"}'
    )

    _, text = render_all([t.event("tool_call.started", tool_call_started=call)], max_field=40)

    assert text.startswith("[tool search(")
    assert len(text.splitlines()[0]) == len("[tool search()]") + 40


@pytest.mark.parametrize(
    ("text", "expected"),
    [('{ "a": 1 }', '{"a":1}'), ("not json", "not json"), ("", "")],
)
def test_compact_json(text: str, expected: str) -> None:
    assert compact_json(text) == expected


def test_shorten_flattens_whitespace() -> None:
    assert shorten("a\n b", 10) == "a b"
    assert shorten("abcdef", 4) == "abc…"
