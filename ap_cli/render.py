"""Render a run's event timeline as text, for a terminal or a pipe.

Pure: no network or clock, so the behaviour the protocol demands (attempt restarts, unknown
payloads, duplicates after a reconnect) is unit-testable with constructed events.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Literal, TextIO

from agentplatform.events import ATTEMPT_OUTPUT_PAYLOADS
from agentplatform.v1 import run_pb2

_DIM = "\x1b[2m"
_RED = "\x1b[31m"
_RESET = "\x1b[0m"

Outcome = Literal["completed", "failed", "cancelled"]


def shorten(text: str, limit: int) -> str:
    """Return `text` on one line, cut to at most `limit` characters with an ellipsis."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: max(limit - 1, 0)] + "…"


def compact_json(text: str) -> str:
    """Return JSON without insignificant whitespace, or the text itself when it is not JSON."""
    try:
        return json.dumps(json.loads(text), separators=(",", ":"), ensure_ascii=False)
    except ValueError:
        return text


class EventRenderer:
    """Write RunEvents to a text stream as a live transcript of one run.

    Reasoning is dimmed when `color` is set and prefixed otherwise; reply text is written
    inline as it arrives; tool calls, restarts and the outcome get bracketed lines. `verbose`
    adds the lifecycle and usage lines a chat prompt would find noisy.
    """

    def __init__(
        self, out: TextIO, *, color: bool = False, verbose: bool = False, max_field: int = 200
    ) -> None:
        """Render onto `out`; `max_field` caps tool arguments and results shown per line."""
        self._out = out
        self._color = color
        self._verbose = verbose
        self._max_field = max_field
        self._mode: Literal["reasoning", "output"] | None = None
        self._at_line_start = True
        self._tools: dict[str, str] = {}
        # Calls waiting for a person's decision, by call id (the CLI asks about these).
        self.pending_approvals: dict[str, run_pb2.ToolCallApprovalRequested] = {}
        self.last_sequence = 0
        self.attempt = 0
        self.output_text = ""
        self.reasoning_text = ""
        self.usage = run_pb2.Usage()
        self.outcome: Outcome | None = None
        self.failure: run_pb2.RunFailed | None = None
        self.output_message = ""
        self._handlers: dict[str, Callable[[run_pb2.RunEvent], None]] = {
            "run_queued": self._run_queued,
            "run_started": self._run_started,
            "run_attempt_started": self._attempt_started,
            "model_retry": self._model_retry,
            "transcript_compacted": self._compacted,
            "reasoning_summary_delta": self._reasoning,
            "output_text_delta": self._output,
            "tool_call_started": self._tool_started,
            "tool_call_progress": self._tool_progress,
            "tool_call_completed": self._tool_completed,
            "tool_call_approval_requested": self._approval_requested,
            "tool_call_approved": self._approved,
            "tool_call_denied": self._denied,
            "run_cancel_requested": self._cancel_requested,
            "usage": self._add_usage,
            # Opaque: for the worker to give back to the model; the reasoning text it
            # carries has streamed already as reasoning.summary.delta.
            "reasoning_state": lambda _event: None,
            "run_completed": self._run_completed,
            "run_failed": self._run_failed,
            "run_cancelled": self._run_cancelled,
        }

    @property
    def rendered_payloads(self) -> frozenset[str]:
        """Return the payload fields this renderer writes; others are skipped."""
        return frozenset(self._handlers)

    @property
    def terminal(self) -> bool:
        """Say whether the terminal event has been rendered."""
        return self.outcome is not None

    def render(self, event: run_pb2.RunEvent) -> None:
        """Write one event; repeats of an already rendered sequence are ignored."""
        if event.sequence and event.sequence <= self.last_sequence:
            return
        self.last_sequence = max(self.last_sequence, event.sequence)
        kind = event.WhichOneof("payload")
        if kind is None:
            # The protocol lets servers add payload kinds; older clients skip them.
            return
        # A superseded attempt's stragglers must not mix into the reply.
        if kind in ATTEMPT_OUTPUT_PAYLOADS and 0 < event.attempt < self.attempt:
            return
        handler = self._handlers.get(kind)
        if handler is not None:
            handler(event)
            self._out.flush()

    def finish(self) -> None:
        """End the current line so whatever is printed next starts on its own."""
        self._break_line()
        self._mode = None
        self._out.flush()

    def _run_queued(self, event: run_pb2.RunEvent) -> None:
        """Note that the run was stored."""
        if self._verbose:
            self._line("[run queued]", dim=True)

    def _run_started(self, event: run_pb2.RunEvent) -> None:
        """Note that a worker began the run."""
        self.attempt = max(self.attempt, event.attempt)
        if self._verbose:
            model = event.run_started.model
            self._line(f"[run started{f' on {model}' if model else ''}]", dim=True)

    def _attempt_started(self, event: run_pb2.RunEvent) -> None:
        """Forget the earlier attempt's partial output and say the run restarted."""
        started = event.run_attempt_started
        attempt = started.attempt or event.attempt
        had_output = bool(self.output_text or self.reasoning_text or self._tools)
        self.attempt = max(self.attempt, attempt)
        self.output_text = ""
        self.reasoning_text = ""
        self.usage = run_pb2.Usage()
        self._tools.clear()
        # The first attempt announcing itself is not a restart; anything later is.
        if attempt > 1 or had_output:
            why = f" after {started.reason}" if started.reason else ""
            self._line(
                f"[run restarted{why}: attempt {attempt}; discarding the partial output above]",
                dim=True,
            )

    def _model_retry(self, event: run_pb2.RunEvent) -> None:
        """Say why the run is waiting: a model call failed before its first token."""
        retry = event.model_retry
        self._line(
            f"[model call failed, retry {retry.retry} in {format_ms(retry.delay_ms)}: "
            f"{shorten(retry.message, self._max_field)}]",
            dim=True,
        )

    def _compacted(self, event: run_pb2.RunEvent) -> None:
        """Say that the oldest messages were left out to fit the model's context window."""
        compacted = event.transcript_compacted
        if self._verbose:
            self._line(
                f"[transcript compacted: {compacted.omitted_messages} oldest messages left out "
                f"to fit the {compacted.context_window}-token context window]",
                dim=True,
            )

    def _reasoning(self, event: run_pb2.RunEvent) -> None:
        """Append reasoning text, dimmed on a terminal or marked on a pipe."""
        text = event.reasoning_summary_delta.text
        self.reasoning_text += text
        if self._mode != "reasoning":
            self._break_line()
            self._mode = "reasoning"
            if not self._color:
                self._write("(reasoning) ")
        if self._color:
            # Reset after every chunk so an interrupted run cannot leave the terminal dim.
            self._write(f"{_DIM}{text}{_RESET}")
        else:
            self._write(text)

    def _output(self, event: run_pb2.RunEvent) -> None:
        """Append reply text inline."""
        text = event.output_text_delta.text
        self.output_text += text
        if self._mode != "output":
            self._break_line()
            self._mode = "output"
        self._write(text)

    def _tool_started(self, event: run_pb2.RunEvent) -> None:
        """Write the tool call line `[tool NAME(args)]`."""
        call = event.tool_call_started
        self._tools[call.call_id] = call.tool
        args = shorten(compact_json(call.arguments_json), self._max_field)
        self._line(f"[tool {call.tool}({args})]")

    def _tool_progress(self, event: run_pb2.RunEvent) -> None:
        """Note that a tool call is still running."""
        progress = event.tool_call_progress
        tool = self._tools.get(progress.call_id, progress.call_id)
        self._line(f"[tool {tool} running, {format_ms(progress.elapsed_ms)}]", dim=True)

    def _tool_completed(self, event: run_pb2.RunEvent) -> None:
        """Write a tool call's result line."""
        done = event.tool_call_completed
        tool = self._tools.get(done.call_id, done.call_id)
        took = f" ({format_ms(done.duration_ms)})" if done.duration_ms else ""
        result = shorten(done.result, self._max_field)
        if done.is_error:
            self._line(f"[tool {tool} failed{took}: {result}]", red=True)
        else:
            self._line(f"[tool {tool} returned{took}: {result}]")

    def _approval_requested(self, event: run_pb2.RunEvent) -> None:
        """Write the call that waits for approval, with its id for `ap runs approve`."""
        asked = event.tool_call_approval_requested
        self._tools[asked.call_id] = asked.tool
        self.pending_approvals[asked.call_id] = asked
        args = shorten(compact_json(asked.arguments_json), self._max_field)
        self._line(f"[approval needed: {asked.tool}({args}) — call {asked.call_id}]")

    def _approved(self, event: run_pb2.RunEvent) -> None:
        """Note who approved a call."""
        decided = event.tool_call_approved
        self.pending_approvals.pop(decided.call_id, None)
        tool = self._tools.get(decided.call_id, decided.call_id)
        by = f" by {decided.decided_by}" if decided.decided_by else ""
        self._line(f"[tool {tool} approved{by}]", dim=True)

    def _denied(self, event: run_pb2.RunEvent) -> None:
        """Note who denied a call, or that it expired."""
        decided = event.tool_call_denied
        self.pending_approvals.pop(decided.call_id, None)
        tool = self._tools.get(decided.call_id, decided.call_id)
        if decided.reason == "APPROVAL_EXPIRED":
            self._line(f"[tool {tool} denied: the approval expired]", red=True)
            return
        by = f" by {decided.decided_by}" if decided.decided_by else ""
        note = f": {decided.message}" if decided.message else ""
        self._line(f"[tool {tool} denied{by}{note}]", red=True)

    def _cancel_requested(self, event: run_pb2.RunEvent) -> None:
        """Note that a cancel was asked for; run.cancelled follows when it took effect."""
        asked = event.run_cancel_requested
        by = f" by {asked.requested_by}" if asked.requested_by else ""
        self._line(f"[cancel requested{by}]", dim=True)

    def _add_usage(self, event: run_pb2.RunEvent) -> None:
        """Add one model call's token counts to the attempt's total."""
        usage = event.usage
        self.usage.input_tokens += usage.input_tokens
        self.usage.output_tokens += usage.output_tokens
        self.usage.reasoning_tokens += usage.reasoning_tokens
        if self._verbose:
            self._line(f"[usage: {format_usage(usage)}]", dim=True)

    def _run_completed(self, event: run_pb2.RunEvent) -> None:
        """Note that the run completed."""
        self.outcome = "completed"
        self.output_message = event.run_completed.output_message
        self._line("[run completed]", dim=True)

    def _run_failed(self, event: run_pb2.RunEvent) -> None:
        """Say that the run failed, with its reason and message."""
        self.outcome = "failed"
        self.failure = failed = event.run_failed
        detail = failed.message or "no details"
        self._line(f"[run failed: {detail} ({failed.reason or 'UNKNOWN'})]", red=True)

    def _run_cancelled(self, event: run_pb2.RunEvent) -> None:
        """Say that the run was cancelled, and by whom if known."""
        self.outcome = "cancelled"
        why = event.run_cancelled.reason
        self._line(f"[run cancelled{f': {why}' if why else ''}]", dim=True)

    def _line(self, text: str, *, dim: bool = False, red: bool = False) -> None:
        """Write a status line of its own."""
        self._break_line()
        self._mode = None
        if self._color and (dim or red):
            text = f"{_RED if red else _DIM}{text}{_RESET}"
        self._write(text + "\n")

    def _break_line(self) -> None:
        """Start a new line unless the cursor is already at the start of one."""
        if not self._at_line_start:
            self._write("\n")

    def _write(self, text: str) -> None:
        """Write text and remember whether it left the cursor at a line start."""
        if not text:
            return
        self._out.write(text)
        self._at_line_start = text.endswith("\n") or text.endswith(f"\n{_RESET}")


def format_ms(ms: int) -> str:
    """Format milliseconds as `850ms` or `3.2s`."""
    return f"{ms}ms" if ms < 1000 else f"{ms / 1000:.1f}s"


def format_usage(usage: run_pb2.Usage) -> str:
    """Format token counts as `12 input, 20 output (3 reasoning) tokens`."""
    return (
        f"{usage.input_tokens} input, {usage.output_tokens} output "
        f"({usage.reasoning_tokens} reasoning) tokens"
    )
