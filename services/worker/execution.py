"""Execute one claimed run: stream the model, append events, heartbeat, finish.

Events are numbered here from the claim's last sequence and sent in batches: whatever
accumulated while the previous append was in flight goes in the next one, so a fast model
costs few round trips and a slow one adds no waiting.

    claim ─► produce (model stream ─► EventSink) ─► FinishRun(outcome)
               ▲ stopped by: cancel (heartbeat/append reply) → FinishRun(cancelled)
               │             lease lost (any fenced call)    → abandon, the new holder owns it
               │             deadline                        → FinishRun(failed RUN_TIMEOUT)
               └             drain (worker stopping)          → ReleaseRun, claimable at once
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import grpc
import structlog
from agentplatform.dispatch.v1 import dispatch_service_pb2 as pb
from agentplatform.v1 import run_pb2, tool_pb2

from services.rpc.errors import Reason
from services.worker.approvals import (
    REFUSED,
    UNKNOWN_OUTCOME,
    Replayed,
    Turn,
    denied_result,
    policy_of,
    refused_result,
    replay,
    tool_policies,
)
from services.worker.dispatch import RPC_TIMEOUT, ControlPlane, Lease, LeaseLostError
from services.worker.metrics import FirstOutputClock
from services.worker.model import (
    AssistantMessage,
    HostedModel,
    Message,
    ModelError,
    ModelRequest,
    ReasoningBlock,
    ReasoningDelta,
    TextDelta,
    ToolCallRequest,
    ToolResult,
    UsageReport,
)
from services.worker.model_calls import add_usage, call_with_retries, fit_context
from services.worker.prompt import conversation, system_prompt, tool_specs
from services.worker.tools import RunTools

log = structlog.get_logger(service="worker")


# -- how a run ends -------------------------------------------------------------------------


@dataclass(frozen=True)
class Completed:
    """The model gave its final answer."""

    text: str
    usage: run_pb2.Usage


@dataclass(frozen=True)
class Failed:
    """The run cannot produce an answer."""

    reason: Reason.ValueType
    message: str


@dataclass(frozen=True)
class Cancelled:
    """Someone cancelled the run."""

    reason: str


@dataclass(frozen=True)
class Suspended:
    """Tool calls wait for people: park the run with these approval requests."""

    requests: list[run_pb2.RunEvent]


Outcome = Completed | Failed | Cancelled | Suspended


def finish_request(
    claim: pb.RunClaim, events: list[run_pb2.RunEvent], outcome: Outcome
) -> pb.FinishRunRequest:
    """Build the FinishRun request that records `outcome` after the unsent `events`."""
    request = pb.FinishRunRequest(run=claim.run, fencing_token=claim.fencing_token, events=events)
    match outcome:
        case Completed(text=text, usage=usage):
            request.completed.text = text
            request.completed.usage.CopyFrom(usage)
        case Failed(reason=reason, message=message):
            request.failed.reason = Reason.Name(reason)
            request.failed.message = message
        case Cancelled(reason=reason):
            request.cancelled.reason = reason
        case Suspended():
            raise ValueError("a suspended run is parked with SuspendRun, not finished")
    return request


def budget_crossed(claim: pb.RunClaim, usage: run_pb2.Usage) -> Failed | None:
    """Say whether the run's usage has gone past what one of its budgets had left.

    The claim carries what was left of each (the workspace's, the creating key's) when the
    run was claimed; the usage is the run's, earlier attempts included.
    """
    tokens = usage.input_tokens + usage.output_tokens
    for left in claim.budgets_left:
        if left.HasField("tokens") and tokens > left.tokens:
            used, limit = f"{tokens} tokens", f"{left.tokens} tokens"
        elif left.HasField("cost_micros") and usage.cost_micros > left.cost_micros:
            used, limit = f"{usage.cost_micros} micro-USD", f"{left.cost_micros} micro-USD"
        else:
            continue
        return Failed(
            Reason.BUDGET_EXCEEDED,
            f"The run used {used}, past the {limit} left of the monthly budget of "
            f"{left.budget}; it stopped after its current model call.",
        )
    return None


@dataclass(frozen=True)
class ToolPolicies:
    """The run's approval policies: each tool's, and the session's overrides."""

    tools: dict[str, int]
    overrides: dict[str, int]

    def of(self, name: str) -> int:
        """Return the policy that applies to a call of `name`."""
        return policy_of(name, self.tools, self.overrides)


class StopReason(enum.Enum):
    """Why a run stops producing before the model has finished."""

    CANCELLED = "cancelled"  # finish it as cancelled
    LEASE_LOST = "lease_lost"  # another worker holds it: abandon it
    RELEASED = "released"  # this worker is draining: hand it back


def reasoning_state_event(blocks: tuple[ReasoningBlock, ...]) -> run_pb2.RunEvent:
    """Record a turn's signed reasoning, which the model must be given back with its calls."""
    state = run_pb2.ReasoningState(
        blocks=[
            run_pb2.ReasoningBlock(
                thinking=b.thinking, signature=b.signature, redacted_data=b.redacted_data
            )
            for b in blocks
        ]
    )
    return run_pb2.RunEvent(reasoning_state=state)


HOSTED_MODEL_UNAVAILABLE = Failed(
    Reason.HOSTED_MODEL_UNAVAILABLE,
    "No hosted model is configured for this platform; the operator must set "
    "AP_MODEL_BASE_URL and AP_MODEL_NAME (or AP_MODELS). Integration secrets do not affect this.",
)


def choose_model(models: Mapping[str, HostedModel], claim: pb.RunClaim) -> HostedModel | Failed:
    """Return the session's model among those this worker offers (the default if it names none)."""
    if not models:
        return HOSTED_MODEL_UNAVAILABLE
    if not claim.model:
        return next(iter(models.values()))
    model = models.get(claim.model)
    if model is None:
        return Failed(
            Reason.HOSTED_MODEL_UNAVAILABLE,
            f"The session's model {claim.model!r} is not offered by this platform any more "
            f"(offered: {', '.join(models)}); start a new session.",
        )
    return model


class EventSink:
    """Number, batch and append a run's events under its fencing token."""

    def __init__(
        self,
        control_plane: ControlPlane,
        claim: pb.RunClaim,
        lease: Lease,
        *,
        on_cancel: Callable[[str], None],
        on_lease_lost: Callable[[], None],
    ) -> None:
        self._control_plane = control_plane
        self._claim = claim
        self._lease = lease
        self._on_cancel = on_cancel
        self._on_lease_lost = on_lease_lost
        self._next_sequence = claim.last_event_sequence + 1
        self._first_output = FirstOutputClock()
        self._pending: list[run_pb2.RunEvent] = []
        self._wake = asyncio.Event()
        self._closed = False
        self._task = asyncio.create_task(self._send_forever())

    def emit(self, event: run_pb2.RunEvent) -> None:
        """Queue an event for the next batch."""
        self.number(event)
        self._first_output.saw(event)
        self._pending.append(event)
        self._wake.set()

    def number(self, event: run_pb2.RunEvent) -> run_pb2.RunEvent:
        """Give an event the next position without queueing it (it goes with SuspendRun or
        FinishRun, after `drain`)."""
        event.sequence = self._next_sequence
        event.attempt = self._claim.attempt
        self._next_sequence += 1
        return event

    async def _send_forever(self) -> None:
        while not self._closed:
            if not self._pending:
                self._wake.clear()
                await self._wake.wait()
                continue
            batch, self._pending = self._pending, []
            request = pb.AppendRunEventsRequest(
                run=self._claim.run, fencing_token=self._claim.fencing_token, events=batch
            )
            try:
                response = await self._control_plane.append(request, self._lease)
            except LeaseLostError:
                self._on_lease_lost()
                return
            if response.cancel_requested:
                self._on_cancel(response.cancel_requested_by)

    async def drain(self) -> list[run_pb2.RunEvent]:
        """Wait for the append in flight; return the events not yet sent (for FinishRun)."""
        self._closed = True
        self._wake.set()
        await self._task
        leftover, self._pending = self._pending, []
        return leftover

    async def abort(self) -> None:
        """Stop sending without flushing."""
        self._closed = True
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
            await self._task


class Compaction:
    """Fit each model call to the context window; say so when more is left out than before."""

    def __init__(self, sink: EventSink, context_window: int | None) -> None:
        self._sink = sink
        self._window = context_window
        self._omitted = 0

    def fit(self, request: ModelRequest) -> ModelRequest:
        """Return the request without its oldest turns if it does not fit."""
        fitted = fit_context(request, self._window)
        if fitted.omitted > self._omitted:
            self._omitted = fitted.omitted
            compacted = run_pb2.TranscriptCompacted(
                omitted_messages=fitted.omitted,
                kept_messages=len(fitted.request.messages),
                estimated_tokens=fitted.estimated_tokens,
                context_window=self._window or 0,
            )
            self._sink.emit(run_pb2.RunEvent(transcript_compacted=compacted))
        return fitted.request


class RunExecution:
    """Carry one claimed run from its first event to FinishRun (or hand it back)."""

    def __init__(
        self,
        control_plane: ControlPlane,
        claim: pb.RunClaim,
        models: Mapping[str, HostedModel],
        *,
        tools: RunTools | None = None,
        max_steps: int = 8,
    ) -> None:
        self._control_plane = control_plane
        self._claim = claim
        self._models = models
        self._tools = tools
        self._max_steps = max_steps
        self._lease = Lease(claim.lease_expire_time)
        self._produce: asyncio.Task[Outcome] | None = None
        self._stop_reason: StopReason | None = None
        self._cancelled_by = ""
        self._heartbeat_seconds = max(claim.heartbeat_interval.ToTimedelta().total_seconds(), 0.01)
        # Time spent waiting on model streams, reported with FinishRun.
        self._model_seconds = 0.0

    @property
    def run(self) -> str:
        """Return the run's name."""
        return self._claim.run

    def stop(self, reason: StopReason, cancelled_by: str = "") -> None:
        """Stop producing; the first reason wins."""
        if self._stop_reason is None:
            self._stop_reason = reason
            self._cancelled_by = cancelled_by
        if self._produce is not None:
            self._produce.cancel()

    async def execute(self) -> None:
        """Run the model and record everything it does; never leave the run half-finished."""
        claim = self._claim
        with structlog.contextvars.bound_contextvars(
            run=claim.run, session=claim.run.rsplit("/runs/", 1)[0], attempt=claim.attempt
        ):
            sink = EventSink(
                self._control_plane,
                claim,
                self._lease,
                on_cancel=lambda by: self.stop(StopReason.CANCELLED, by),
                on_lease_lost=lambda: self.stop(StopReason.LEASE_LOST),
            )
            self._produce = asyncio.create_task(self._produce_events(sink))
            heartbeat = asyncio.create_task(self._heartbeat_forever())
            try:
                outcome = await self._outcome(self._produce)
                if outcome is None:
                    await self._hand_back()
                    return
                leftover = await sink.drain()
                if self._stop_reason is StopReason.LEASE_LOST:
                    log.warning("lease_lost_run_abandoned")
                    return
                if isinstance(outcome, Suspended):
                    await self._suspend(leftover + [sink.number(e) for e in outcome.requests])
                    return
                if isinstance(outcome, Cancelled):
                    # The command is logged first, then its effect: exactly one run.cancelled.
                    leftover.append(
                        sink.number(
                            run_pb2.RunEvent(
                                run_cancel_requested=run_pb2.RunCancelRequested(
                                    requested_by=self._cancelled_by, reason=outcome.reason
                                )
                            )
                        )
                    )
                request = finish_request(claim, leftover, outcome)
                request.model_latency.FromNanoseconds(round(self._model_seconds * 1e9))
                await self._control_plane.finish(request, self._lease)
            except LeaseLostError:
                log.warning("lease_lost_run_abandoned")
            finally:
                heartbeat.cancel()
                await sink.abort()
                if not self._produce.done():
                    self._produce.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await heartbeat
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._produce

    async def _outcome(self, produce: asyncio.Task[Outcome]) -> Outcome | None:
        """Wait for the model to finish, the deadline, or a stop; None means do not finish."""
        remaining = self._claim.deadline.ToDatetime().timestamp() - time.time()
        done, _ = await asyncio.wait({produce}, timeout=max(remaining, 0.0))
        if not done:
            produce.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await produce
            if self._stop_reason is None:
                return Failed(Reason.RUN_TIMEOUT, "The run exceeded its maximum duration.")
        if self._stop_reason is StopReason.CANCELLED:
            return Cancelled("cancelled on request")
        if self._stop_reason is not None:
            return None
        return produce.result()

    async def _suspend(self, events: list[run_pb2.RunEvent]) -> None:
        """Park the run until people decide its calls; the lease (and this slot) end here."""
        await self._control_plane.suspend(
            pb.SuspendRunRequest(
                run=self._claim.run, fencing_token=self._claim.fencing_token, events=events
            ),
            self._lease,
        )
        log.info("run_suspended_for_approval", calls=len(events))

    async def _hand_back(self) -> None:
        if self._stop_reason is not StopReason.RELEASED:
            log.warning("lease_lost_run_abandoned")
            return
        with contextlib.suppress(LeaseLostError):
            await self._control_plane.release(
                pb.ReleaseRunRequest(run=self._claim.run, fencing_token=self._claim.fencing_token),
                self._lease,
            )
            log.info("run_released")

    async def _produce_events(self, sink: EventSink) -> Outcome:
        model = choose_model(self._models, self._claim)
        if isinstance(model, Failed):
            return model
        resumed = replay(self._claim.events) if self._claim.events else None
        if resumed is None:
            sink.emit(run_pb2.RunEvent(run_started=run_pb2.RunStarted(model=model.config.id)))
        registered = await self._tools.offered(self._claim) if self._tools else []
        offered = tool_specs(registered)
        offered_names = [tool.name for tool in offered]
        policies = ToolPolicies(
            tool_policies(registered), dict(self._claim.tool_approval_overrides)
        )
        system = system_prompt(self._claim, offered_names)
        messages: list[Message] = conversation(self._claim)
        reply: list[str] = []
        usage = run_pb2.Usage()
        # What the run's stored usage events add up to: earlier attempts' calls and, for a
        # resumed run, the calls before it waited. Budgets are checked against the whole.
        usage.CopyFrom(self._claim.usage)
        steps_done = 0
        if resumed is not None:
            steps_done = await self._resume(sink, resumed, offered_names, messages, reply)
        compaction = Compaction(sink, model.config.context_window)
        try:
            for _step in range(steps_done, self._max_steps):
                request = compaction.fit(
                    ModelRequest(system, tuple(messages), model.settings, offered)
                )
                called = time.monotonic()
                step_text, calls, reasoning = await self._model_step(model, request, sink, usage)
                self._model_seconds += time.monotonic() - called
                if (over := budget_crossed(self._claim, usage)) is not None:
                    return over
                reply += step_text
                if not calls:
                    return Completed("".join(reply), usage)
                if self._tools is None:
                    raise ModelError(
                        Reason.MODEL_ERROR, "The model called a tool, but none is offered."
                    )
                if reasoning:
                    # Recorded so that a run resumed after an approval can give it back too.
                    sink.emit(reasoning_state_event(reasoning))
                messages.append(AssistantMessage("".join(step_text), tuple(calls), reasoning))
                results = await self._tool_step(sink, calls, offered_names, policies)
                if isinstance(results, Suspended):
                    return results
                messages += results
        except ModelError as err:
            log.info("model_call_failed", reason=Reason.Name(err.reason), error=err.message)
            return Failed(err.reason, err.message)
        return Failed(
            Reason.MAX_STEPS,
            f"The run reached its limit of {self._max_steps} model calls in the tool loop "
            "without a final answer.",
        )

    @staticmethod
    async def _model_step(
        model: HostedModel, request: ModelRequest, sink: EventSink, usage: run_pb2.Usage
    ) -> tuple[list[str], list[ToolCallRequest], tuple[ReasoningBlock, ...]]:
        """Stream one model call into events; return its text, the tool calls it asked for and
        the reasoning to give back with them."""
        step_text: list[str] = []
        calls: list[ToolCallRequest] = []
        reasoning: list[ReasoningBlock] = []

        def retrying(retry: run_pb2.ModelRetry) -> None:
            log.info("model_call_retry", retry=retry.retry, delay_ms=retry.delay_ms)
            sink.emit(run_pb2.RunEvent(model_retry=retry))

        async for item in call_with_retries(model, request, retrying):
            match item:
                case TextDelta(text=text):
                    step_text.append(text)
                    sink.emit(run_pb2.RunEvent(output_text_delta=run_pb2.TextDelta(text=text)))
                case ReasoningDelta(text=text):
                    sink.emit(
                        run_pb2.RunEvent(reasoning_summary_delta=run_pb2.TextDelta(text=text))
                    )
                case UsageReport():
                    # The event carries this call's counts and cost (the control plane adds
                    # them to the run's row); the run's total goes on for the budget check.
                    call_usage = run_pb2.Usage()
                    add_usage(call_usage, item, model.config.prices)
                    add_usage(usage, item, model.config.prices)
                    sink.emit(run_pb2.RunEvent(usage=call_usage))
                case ToolCallRequest():
                    calls.append(item)
                case ReasoningBlock():
                    reasoning.append(item)
        return step_text, calls, tuple(reasoning)

    async def _resume(
        self,
        sink: EventSink,
        resumed: Replayed,
        offered_names: list[str],
        messages: list[Message],
        reply: list[str],
    ) -> int:
        """Add the recorded turns to the conversation and finish the decided one; count them.

        The turns already recorded are not asked of the model again.
        """
        for turn in resumed.turns:
            messages += turn.messages()
            reply += turn.text
        if resumed.open is None:
            return len(resumed.turns)
        reply += resumed.open.text
        messages += await self._finish_turn(sink, resumed.open, offered_names)
        return len(resumed.turns) + 1

    async def _tool_step(
        self,
        sink: EventSink,
        calls: list[ToolCallRequest],
        offered_names: list[str],
        policies: ToolPolicies,
    ) -> list[ToolResult] | Suspended:
        """Make one turn's calls as their policies say; Suspended if any waits for a person.

        Allowed calls run at once (also in a turn that then waits), refused ones are answered
        with an error, and the rest are asked for: the run is parked and resumes from the log.
        """
        assert self._tools is not None
        results: dict[str, ToolResult] = {}
        allowed: list[ToolCallRequest] = []
        asked: list[ToolCallRequest] = []
        for call in calls:
            policy = policies.of(call.name)
            if policy == tool_pb2.NEVER:
                results[call.call_id] = self._answer(
                    sink, call, refused_result(call), REFUSED, started=True
                )
            elif policy == tool_pb2.ALWAYS_ASK:
                asked.append(call)
            else:
                allowed.append(call)
        if allowed:
            for result in await self._tools.run(sink, self._claim, allowed, offered_names):
                results[result.call_id] = result
        if asked:
            return Suspended(
                [
                    run_pb2.RunEvent(
                        tool_call_approval_requested=run_pb2.ToolCallApprovalRequested(
                            call_id=call.call_id, tool=call.name, arguments_json=call.arguments_json
                        )
                    )
                    for call in asked
                ]
            )
        return [results[call.call_id] for call in calls]

    async def _finish_turn(
        self, sink: EventSink, turn: Turn, offered_names: list[str]
    ) -> list[Message]:
        """Give every call of a decided turn its result: run the approved, answer the rest."""
        to_run = [
            call
            for call_id, call in turn.calls.items()
            if call_id not in turn.results
            and call_id in turn.approved
            and call_id not in turn.started
        ]
        for call_id, call in turn.calls.items():
            if call_id in turn.results or call in to_run:
                continue
            denied = turn.denied.get(call_id)
            if denied is not None:
                code, text = denied_result(denied)
            else:  # it started and its worker was lost before it reported
                code, text = "WORKER_LOST", UNKNOWN_OUTCOME
            turn.results[call_id] = self._answer(sink, call, text, code, started=False)
        if to_run and self._tools is not None:
            for result in await self._tools.run(sink, self._claim, to_run, offered_names):
                turn.results[result.call_id] = result
        for call in to_run:
            if call.call_id not in turn.results:
                text = "Error GATEWAY_ERROR: this worker has no tool gateway."
                turn.results[call.call_id] = self._answer(
                    sink, call, text, "GATEWAY_ERROR", started=True
                )
        return turn.messages()

    @staticmethod
    def _answer(
        sink: EventSink, call: ToolCallRequest, text: str, code: str, *, started: bool
    ) -> ToolResult:
        """Record an error result for a call that does not run (and its start, if asked)."""
        if started:
            sink.emit(
                run_pb2.RunEvent(
                    tool_call_started=run_pb2.ToolCallStarted(
                        call_id=call.call_id, tool=call.name, arguments_json=call.arguments_json
                    )
                )
            )
        sink.emit(
            run_pb2.RunEvent(
                tool_call_completed=run_pb2.ToolCallCompleted(
                    call_id=call.call_id, result=text, is_error=True, error_code=code
                )
            )
        )
        return ToolResult(call.call_id, call.name, text, is_error=True)

    async def _heartbeat_forever(self) -> None:
        request = pb.HeartbeatRunRequest(
            run=self._claim.run, fencing_token=self._claim.fencing_token
        )
        # A replica that does not answer within a few heartbeats is given up for the next.
        timeout = min(max(3 * self._heartbeat_seconds, 1.0), RPC_TIMEOUT)
        while True:
            await asyncio.sleep(self._heartbeat_seconds)
            try:
                response = await self._control_plane.heartbeat(request, timeout=timeout)
            except LeaseLostError:
                self.stop(StopReason.LEASE_LOST)
                return
            except grpc.aio.AioRpcError as err:
                log.warning("heartbeat_failed", code=err.code().name)
                continue
            self._lease.extend(response.lease_expire_time)
            if response.cancel_requested:
                self.stop(StopReason.CANCELLED, response.cancel_requested_by)
