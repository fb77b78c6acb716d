"""The run event vocabulary: each payload's dotted `type` and the kind of event it is.

Every part of the platform reads these facts from here: the control plane stamps `type`
with `event_type` when it stores an event, streams and clients end on `is_terminal`, the CLI
drops a superseded attempt's `ATTEMPT_OUTPUT_PAYLOADS`, the worker times its first
`TEXT_PAYLOADS` event. A new payload is added to the proto and to `KINDS` below;
`tests/ecosystem/test_event_vocabulary.py` fails until every payload has a kind and a
renderer in `ap_cli/render.py`.

    category    payload field              type
    lifecycle   run_queued                 run.queued
                run_started                run.started
                run_attempt_started        run.attempt_started
                run_cancel_requested       run.cancel_requested
                model_retry                model.retry
                transcript_compacted       transcript.compacted
    text        reasoning_summary_delta    reasoning.summary.delta
                output_text_delta          output_text.delta
    tool        tool_call_started          tool_call.started
                tool_call_progress         tool_call.progress
                tool_call_completed        tool_call.completed
                tool_call_approval_requested  tool_call.approval_requested
                tool_call_approved         tool_call.approved
                tool_call_denied           tool_call.denied
    usage       usage                      usage
    state       reasoning_state            reasoning.state
    terminal    run_completed              run.completed
                run_failed                 run.failed
                run_cancelled              run.cancelled
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

from agentplatform.v1 import run_pb2


class Category(enum.Enum):
    """What an event says about its run."""

    LIFECYCLE = "lifecycle"  # the run was stored, claimed, restarted, or asked to stop
    TEXT = "text"  # model output: reply or reasoning text
    TOOL = "tool"  # a tool call's progress, approval request or decision
    USAGE = "usage"  # one model call's token counts
    STATE = "state"  # what the model must be given back (signed reasoning); clients skip it
    TERMINAL = "terminal"  # the run ended; exactly one per run, always the last


@dataclass(frozen=True)
class EventKind:
    """One payload of the RunEvent oneof: its field name, dotted type and category."""

    payload: str
    type: str
    category: Category


KINDS: Mapping[str, EventKind] = {
    kind.payload: kind
    for kind in (
        EventKind("run_queued", "run.queued", Category.LIFECYCLE),
        EventKind("run_started", "run.started", Category.LIFECYCLE),
        EventKind("run_attempt_started", "run.attempt_started", Category.LIFECYCLE),
        EventKind("run_cancel_requested", "run.cancel_requested", Category.LIFECYCLE),
        EventKind("model_retry", "model.retry", Category.LIFECYCLE),
        EventKind("transcript_compacted", "transcript.compacted", Category.LIFECYCLE),
        EventKind("reasoning_summary_delta", "reasoning.summary.delta", Category.TEXT),
        EventKind("output_text_delta", "output_text.delta", Category.TEXT),
        EventKind("tool_call_started", "tool_call.started", Category.TOOL),
        EventKind("tool_call_progress", "tool_call.progress", Category.TOOL),
        EventKind("tool_call_completed", "tool_call.completed", Category.TOOL),
        EventKind("tool_call_approval_requested", "tool_call.approval_requested", Category.TOOL),
        EventKind("tool_call_approved", "tool_call.approved", Category.TOOL),
        EventKind("tool_call_denied", "tool_call.denied", Category.TOOL),
        EventKind("usage", "usage", Category.USAGE),
        EventKind("reasoning_state", "reasoning.state", Category.STATE),
        EventKind("run_completed", "run.completed", Category.TERMINAL),
        EventKind("run_failed", "run.failed", Category.TERMINAL),
        EventKind("run_cancelled", "run.cancelled", Category.TERMINAL),
    )
}


def _payloads(*categories: Category) -> frozenset[str]:
    return frozenset(k.payload for k in KINDS.values() if k.category in categories)


TERMINAL_PAYLOADS = _payloads(Category.TERMINAL)
TERMINAL_TYPES = frozenset(KINDS[p].type for p in TERMINAL_PAYLOADS)
TEXT_PAYLOADS = _payloads(Category.TEXT)
TOOL_PAYLOADS = _payloads(Category.TOOL)
# What an attempt produces; a client drops a superseded attempt's stragglers of these.
ATTEMPT_OUTPUT_PAYLOADS = _payloads(Category.TEXT, Category.TOOL, Category.USAGE)


def event_kind(event: run_pb2.RunEvent) -> EventKind | None:
    """Return the kind of the event's payload; None without one or for a payload unknown here.

    A newer server may send payloads this version does not know; callers skip those.
    """
    payload = event.WhichOneof("payload")
    return None if payload is None else KINDS.get(payload)


def event_type(event: run_pb2.RunEvent) -> str:
    """Return the dotted type of the event's payload; ValueError without a known payload."""
    kind = event_kind(event)
    if kind is None:
        raise ValueError(f"event has no known payload: {event.WhichOneof('payload')!r}")
    return kind.type


def is_terminal(event: run_pb2.RunEvent) -> bool:
    """Say whether the event ends the run's timeline."""
    return event.WhichOneof("payload") in TERMINAL_PAYLOADS or event.type in TERMINAL_TYPES
