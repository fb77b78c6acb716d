"""Tool approval as the worker sees it: which calls need a person, and resuming from the log.

    the model's calls ─► policy (the tool's, tightened by the session's overrides)
        ALWAYS_ALLOW ─► run now
        NEVER        ─► refused: tool_call.started + tool_call.completed (TOOL_REFUSED)
        ALWAYS_ASK   ─► tool_call.approval_requested; the run is parked (SuspendRun)

A parked run's next claim carries its events. `replay` rebuilds from them what the model
was told and said (the turns already recorded are never asked of the model again, their
signed reasoning, "reasoning.state", given back with their calls) and the
open turn whose calls were decided: approved calls that have not run are run, denied and
expired ones become error results, and a call that started but never reported (its worker
died) is answered as of unknown outcome rather than run twice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from agentplatform.gateway.v1 import gateway_service_pb2 as gw
from agentplatform.v1 import run_pb2, tool_pb2

from services.worker.model import (
    AssistantMessage,
    Message,
    ReasoningBlock,
    ToolCallRequest,
    ToolResult,
)

REFUSED = "TOOL_REFUSED"


def policy_of(
    name: str, tools: Mapping[str, int], overrides: Mapping[str, int]
) -> tool_pb2.ApprovalPolicy.ValueType:
    """Return the policy of a call: the strictest of the tool's and the session's overrides.

    The enum is ordered by strictness (ALWAYS_ALLOW < ALWAYS_ASK < NEVER), so a session's
    override can only tighten. A tool not on offer is allowed (the gateway refuses it).
    """
    found = max(
        tools.get(name, tool_pb2.ALWAYS_ALLOW) or tool_pb2.ALWAYS_ALLOW,
        overrides.get(name, 0),
        overrides.get("*", 0),
    )
    return tool_pb2.ApprovalPolicy.ValueType(found)


def tool_policies(offered: Sequence[gw.Tool]) -> dict[str, int]:
    """Map each offered tool's model-facing name to its approval policy."""
    return {tool.name.rsplit("/", 1)[-1]: tool.approval_policy for tool in offered}


def refused_result(call: ToolCallRequest) -> str:
    """Return what the model reads for a call its tool's policy refuses."""
    return (
        f"Error {REFUSED}: the tool {call.name} may not be called (its approval policy is NEVER)."
    )


def denied_result(denied: run_pb2.ToolCallDenied) -> tuple[str, str]:
    """Return (error code, result text) of a denied or expired call, as the model reads it."""
    if denied.reason == "APPROVAL_EXPIRED":
        text = "Error APPROVAL_EXPIRED: nobody approved this call in time, so it did not run."
        return "APPROVAL_EXPIRED", text
    text = "Error DENIED: a person denied this call, so it did not run."
    if denied.message:
        text += f" Their message: {denied.message}"
    return "DENIED", text


UNKNOWN_OUTCOME = (
    "Error WORKER_LOST: the worker running this call stopped before it reported, so whether "
    "it took effect is unknown."
)


@dataclass
class Turn:
    """One model call of a run as its events recorded it: text, calls, their outcomes."""

    text: list[str] = field(default_factory=list)
    calls: dict[str, ToolCallRequest] = field(default_factory=dict)
    started: set[str] = field(default_factory=set)
    asked: set[str] = field(default_factory=set)
    results: dict[str, ToolResult] = field(default_factory=dict)
    approved: set[str] = field(default_factory=set)
    denied: dict[str, run_pb2.ToolCallDenied] = field(default_factory=dict)
    reasoning: tuple[ReasoningBlock, ...] = ()

    def closed(self) -> bool:
        """Say whether every call of the turn has a result."""
        return bool(self.calls) and all(c in self.results for c in self.calls)

    def messages(self) -> list[Message]:
        """Return the turn as the model's conversation holds it (results in the calls' order)."""
        out: list[Message] = [
            AssistantMessage("".join(self.text), tuple(self.calls.values()), self.reasoning)
        ]
        return out + [self.results[c] for c in self.calls if c in self.results]


@dataclass
class Replayed:
    """What a resumed run already holds: finished turns, the open one, usage so far."""

    turns: list[Turn]
    open: Turn | None
    usage: run_pb2.Usage


_USAGE_FIELDS = tuple(f.name for f in run_pb2.Usage.DESCRIPTOR.fields)


def _add_usage(total: run_pb2.Usage, call: run_pb2.Usage) -> None:
    """Add one usage event (one model call's counts) to the run's total."""
    for name in _USAGE_FIELDS:
        setattr(total, name, getattr(total, name) + getattr(call, name))


def _record_call(turn: Turn, event: run_pb2.RunEvent) -> None:
    """Add what a tool call event says to the turn (other events say nothing of calls)."""
    kind = event.WhichOneof("payload")
    if kind == "tool_call_started":
        s = event.tool_call_started
        turn.calls.setdefault(s.call_id, ToolCallRequest(s.call_id, s.tool, s.arguments_json))
        turn.started.add(s.call_id)
    elif kind == "tool_call_approval_requested":
        a = event.tool_call_approval_requested
        turn.calls.setdefault(a.call_id, ToolCallRequest(a.call_id, a.tool, a.arguments_json))
        turn.asked.add(a.call_id)
    elif kind == "tool_call_completed":
        c = event.tool_call_completed
        call = turn.calls.get(c.call_id)
        if call is not None:
            turn.results[c.call_id] = ToolResult(
                c.call_id, call.name, c.result, is_error=c.is_error
            )
    elif kind == "tool_call_approved":
        turn.approved.add(event.tool_call_approved.call_id)
    elif kind == "tool_call_denied":
        turn.denied[event.tool_call_denied.call_id] = event.tool_call_denied


def replay(events: Sequence[run_pb2.RunEvent]) -> Replayed:
    """Rebuild a run's turns from its events, in order.

    A turn that a lost worker left half done (no result for every call, and no approval asked
    in it) is dropped at the next "run.attempt_started", as the new attempt redoes it; a turn
    that asked for approval is kept, as its calls were decided by people.
    """
    turns: list[Turn] = []
    current = Turn()
    usage = run_pb2.Usage()
    for event in events:
        kind = event.WhichOneof("payload")
        if kind in ("output_text_delta", "reasoning_state") and current.calls:
            # The model speaks (or reasons) again after its calls: the next turn.
            turns.append(current)
            current = Turn()
        if kind == "output_text_delta":
            current.text.append(event.output_text_delta.text)
        elif kind == "reasoning_state":
            current.reasoning = tuple(
                ReasoningBlock(b.thinking, b.signature, b.redacted_data)
                for b in event.reasoning_state.blocks
            )
        elif kind == "usage":
            _add_usage(usage, event.usage)
        elif kind == "run_attempt_started" and not (current.asked or current.closed()):
            current = Turn()
        else:
            _record_call(current, event)
    if current.closed():
        turns.append(current)
        return Replayed(turns, None, usage)
    return Replayed(turns, current if current.calls else None, usage)
