"""Execute one claimed run: stream the model, append events, heartbeat, finish.

Events are numbered here from the claim's last sequence and sent in batches: whatever
accumulated while the previous append was in flight goes in the next one, so a fast model
costs few round trips and a slow one adds no waiting.

    claim ─► produce (model stream ─► EventSink) ─► FinishRun
               ▲ stopped by: cancel (heartbeat/append reply) → FinishRun(cancelled)
               │             lease lost (any fenced call)    → abandon, the new holder owns it
               │             deadline                        → FinishRun(failed RUN_TIMEOUT)
               └             drain (worker stopping)          → ReleaseRun, claimable at once
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias, TypeVar

import grpc
import structlog
from agentplatform.dispatch.v1 import dispatch_service_pb2 as pb
from agentplatform.dispatch.v1 import dispatch_service_pb2_grpc
from agentplatform.v1 import run_pb2

from services.rpc.errors import reason_of
from services.rpc.settings import HostedModelSettings
from services.worker.metrics import FirstOutputClock
from services.worker.model import (
    ChatCompletionsClient,
    ModelError,
    ReasoningDelta,
    TextDelta,
    ToolCallRequest,
    UsageReport,
)
from services.worker.prompt import function_tools, model_messages
from services.worker.tools import RunTools

log = structlog.get_logger(service="worker")

RPC_TIMEOUT = 10.0
_RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
T = TypeVar("T")

Stub: TypeAlias = "dispatch_service_pb2_grpc.DispatchServiceAsyncStub"
Metadata = tuple[tuple[str, str], ...]


class LeaseLostError(Exception):
    """The control plane refused a call: another worker holds the run now, or it was deleted."""


async def call_fenced(call: Callable[[], Awaitable[T]], *, give_up_after: float) -> T:
    """Make a fenced dispatch call, retrying while the control plane is unreachable.

    Retrying is safe: appends and finishes are idempotent per (run, fence, sequences).
    """
    deadline = time.monotonic() + give_up_after
    backoff = 0.05
    while True:
        try:
            return await call()
        except grpc.aio.AioRpcError as err:
            # NOT_FOUND: the run was deleted with its session; nobody may write to it any more.
            if reason_of(err) == "LEASE_LOST" or err.code() == grpc.StatusCode.NOT_FOUND:
                raise LeaseLostError() from None
            if err.code() not in _RETRYABLE or time.monotonic() + backoff > deadline:
                raise
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, 1.0)


class EventSink:
    """Number, batch and append a run's events under its fencing token."""

    def __init__(
        self,
        stub: Stub,
        claim: pb.RunClaim,
        metadata: Metadata,
        *,
        on_cancel: Callable[[], None],
        on_lease_lost: Callable[[], None],
        retry_for: float,
    ) -> None:
        self._stub = stub
        self._claim = claim
        self._metadata = metadata
        self._on_cancel = on_cancel
        self._on_lease_lost = on_lease_lost
        self._retry_for = retry_for
        self._next_sequence = claim.last_event_sequence + 1
        self._first_output = FirstOutputClock()
        self._pending: list[run_pb2.RunEvent] = []
        self._wake = asyncio.Event()
        self._closed = False
        self._task = asyncio.create_task(self._send_forever())

    def emit(self, event: run_pb2.RunEvent) -> None:
        """Queue an event for the next batch."""
        event.sequence = self._next_sequence
        event.attempt = self._claim.attempt
        self._next_sequence += 1
        self._first_output.saw(event)
        self._pending.append(event)
        self._wake.set()

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
                response = await call_fenced(
                    functools.partial(
                        self._stub.AppendRunEvents,
                        request,
                        metadata=self._metadata,
                        timeout=RPC_TIMEOUT,
                    ),
                    give_up_after=self._retry_for,
                )
            except LeaseLostError:
                self._on_lease_lost()
                return
            if response.cancel_requested:
                self._on_cancel()

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


def _assistant_turn(text: str, calls: list[ToolCallRequest]) -> dict[str, Any]:
    """Return the assistant message that asked for these tool calls, for the next model call."""
    return {
        "role": "assistant",
        "content": text or None,
        "tool_calls": [
            {
                "id": call.call_id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments_json},
            }
            for call in calls
        ],
    }


class RunExecution:
    """Carry one claimed run from its first event to FinishRun (or hand it back)."""

    def __init__(
        self,
        stub: Stub,
        claim: pb.RunClaim,
        model_settings: HostedModelSettings,
        model: ChatCompletionsClient,
        metadata: Metadata,
        *,
        tools: RunTools | None = None,
        max_steps: int = 8,
    ) -> None:
        self._stub = stub
        self._tools = tools
        self._max_steps = max_steps
        self._claim = claim
        self._model_settings = model_settings
        self._model = model
        self._metadata = metadata
        self._produce: asyncio.Task[dict[str, Any]] | None = None
        self._stop_reason: str | None = None
        self._heartbeat_seconds = max(claim.heartbeat_interval.ToTimedelta().total_seconds(), 0.01)
        # Keep retrying an unreachable control plane for about a lease (ten heartbeats by
        # default): past that the run has been rescued and belongs to someone else anyway.
        self._retry_for = max(10 * self._heartbeat_seconds, 1.0)

    @property
    def run(self) -> str:
        """Return the run's name."""
        return self._claim.run

    def stop(self, reason: str) -> None:
        """Stop producing: "cancelled", "lease_lost" or "released"; the first reason wins."""
        if self._stop_reason is None:
            self._stop_reason = reason
        if self._produce is not None:
            self._produce.cancel()

    async def execute(self) -> None:
        """Run the model and record everything it does; never leave the run half-finished."""
        claim = self._claim
        with structlog.contextvars.bound_contextvars(
            run=claim.run, session=claim.run.rsplit("/runs/", 1)[0], attempt=claim.attempt
        ):
            sink = EventSink(
                self._stub,
                claim,
                self._metadata,
                on_cancel=lambda: self.stop("cancelled"),
                on_lease_lost=lambda: self.stop("lease_lost"),
                retry_for=self._retry_for,
            )
            self._produce = asyncio.create_task(self._produce_events(sink))
            heartbeat = asyncio.create_task(self._heartbeat_forever())
            try:
                outcome = await self._outcome(self._produce)
                if outcome is None:
                    await self._hand_back()
                    return
                leftover = await sink.drain()
                if self._stop_reason == "lease_lost":
                    log.warning("lease_lost_run_abandoned")
                    return
                await self._finish(leftover, outcome)
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

    async def _outcome(self, produce: asyncio.Task[dict[str, Any]]) -> dict[str, Any] | None:
        """Wait for the model to finish, the deadline, or a stop; None means do not finish."""
        remaining = self._claim.deadline.ToDatetime().timestamp() - time.time()
        done, _ = await asyncio.wait({produce}, timeout=max(remaining, 0.0))
        if not done:
            produce.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await produce
            if self._stop_reason is None:
                return {
                    "failed": pb.FinishRunRequest.Failed(
                        reason="RUN_TIMEOUT", message="The run exceeded its maximum duration."
                    )
                }
        if self._stop_reason == "cancelled":
            return {"cancelled": pb.FinishRunRequest.Cancelled(reason="cancelled on request")}
        if self._stop_reason is not None:
            return None
        return produce.result()

    async def _hand_back(self) -> None:
        if self._stop_reason != "released":
            log.warning("lease_lost_run_abandoned")
            return
        with contextlib.suppress(LeaseLostError):
            await call_fenced(
                lambda: self._stub.ReleaseRun(
                    pb.ReleaseRunRequest(
                        run=self._claim.run, fencing_token=self._claim.fencing_token
                    ),
                    metadata=self._metadata,
                    timeout=RPC_TIMEOUT,
                ),
                give_up_after=self._retry_for,
            )
            log.info("run_released")

    async def _produce_events(self, sink: EventSink) -> dict[str, Any]:
        if not self._model_settings.configured:
            return {
                "failed": pb.FinishRunRequest.Failed(
                    reason="HOSTED_MODEL_UNAVAILABLE",
                    message="No hosted model is configured for this platform; the operator "
                    "must set AP_MODEL_BASE_URL and AP_MODEL_NAME. Integration secrets do "
                    "not affect this.",
                )
            }
        sink.emit(
            run_pb2.RunEvent(run_started=run_pb2.RunStarted(model=self._model_settings.name or ""))
        )
        offered = function_tools(await self._tools.offered(self._claim)) if self._tools else []
        messages = model_messages(self._claim, [t["function"]["name"] for t in offered])
        reply: list[str] = []
        usage = run_pb2.Usage()
        try:
            for _step in range(self._max_steps):
                step_text: list[str] = []
                calls: list[ToolCallRequest] = []
                async for item in self._model.stream(messages, offered):
                    if isinstance(item, TextDelta):
                        step_text.append(item.text)
                        sink.emit(
                            run_pb2.RunEvent(output_text_delta=run_pb2.TextDelta(text=item.text))
                        )
                    elif isinstance(item, ReasoningDelta):
                        sink.emit(
                            run_pb2.RunEvent(
                                reasoning_summary_delta=run_pb2.TextDelta(text=item.text)
                            )
                        )
                    elif isinstance(item, UsageReport):
                        usage.input_tokens += item.input_tokens
                        usage.output_tokens += item.output_tokens
                        usage.reasoning_tokens += item.reasoning_tokens
                        sink.emit(run_pb2.RunEvent(usage=usage))
                    else:
                        calls.append(item)
                reply += step_text
                if not calls:
                    return {
                        "completed": pb.FinishRunRequest.Completed(text="".join(reply), usage=usage)
                    }
                if self._tools is None:
                    raise ModelError("MODEL_ERROR", "The model called a tool, but none is offered.")
                messages.append(_assistant_turn("".join(step_text), calls))
                results = await self._tools.run(sink, self._claim, calls)
                messages += [
                    {"role": "tool", "tool_call_id": call.call_id, "content": result}
                    for call, result in zip(calls, results, strict=True)
                ]
        except ModelError as err:
            log.info("model_call_failed", reason=err.reason, error=err.message)
            return {"failed": pb.FinishRunRequest.Failed(reason=err.reason, message=err.message)}
        return {
            "failed": pb.FinishRunRequest.Failed(
                reason="MAX_STEPS",
                message=f"The run reached its limit of {self._max_steps} model calls in the "
                "tool loop without a final answer.",
            )
        }

    async def _finish(self, leftover: list[run_pb2.RunEvent], outcome: dict[str, Any]) -> None:
        request = pb.FinishRunRequest(
            run=self._claim.run, fencing_token=self._claim.fencing_token, events=leftover, **outcome
        )
        await call_fenced(
            lambda: self._stub.FinishRun(request, metadata=self._metadata, timeout=RPC_TIMEOUT),
            give_up_after=self._retry_for,
        )

    async def _heartbeat_forever(self) -> None:
        request = pb.HeartbeatRunRequest(
            run=self._claim.run, fencing_token=self._claim.fencing_token
        )
        while True:
            await asyncio.sleep(self._heartbeat_seconds)
            try:
                response = await self._stub.HeartbeatRun(
                    request, metadata=self._metadata, timeout=RPC_TIMEOUT
                )
            except grpc.aio.AioRpcError as err:
                if reason_of(err) == "LEASE_LOST":
                    self.stop("lease_lost")
                    return
                log.warning("heartbeat_failed", code=err.code().name)
                continue
            if response.cancel_requested:
                self.stop("cancelled")
