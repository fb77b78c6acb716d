"""Execute one claimed run: stream the model, append events, heartbeat, finish.

Events are numbered here from the claim's last sequence and sent in batches: whatever
accumulated while the previous append was in flight goes in the next one, so a fast model
costs few round trips and a slow one adds no waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import grpc
import structlog
from agentplatform.dispatch.v1 import dispatch_service_pb2 as pb
from agentplatform.dispatch.v1 import dispatch_service_pb2_grpc
from agentplatform.v1 import run_pb2

from services.rpc.errors import reason_of
from services.rpc.settings import HostedModelSettings
from services.worker.model import (
    ChatCompletionsClient,
    ModelError,
    ReasoningDelta,
    TextDelta,
    UsageReport,
)
from services.worker.prompt import model_messages

log = structlog.get_logger().bind(service="worker")

RPC_TIMEOUT = 10.0


class LeaseLostError(Exception):
    """The control plane refused a call because another worker holds the run now."""


def _is_lease_lost(err: grpc.aio.AioRpcError) -> bool:
    return reason_of(err) == "LEASE_LOST"


class EventSink:
    """Number, batch and append a run's events under its fencing token."""

    def __init__(
        self,
        stub: dispatch_service_pb2_grpc.DispatchServiceAsyncStub,
        claim: pb.RunClaim,
        metadata: tuple[tuple[str, str], ...],
    ) -> None:
        self._stub = stub
        self._claim = claim
        self._metadata = metadata
        self._next_sequence = claim.last_event_sequence + 1
        self._pending: list[run_pb2.RunEvent] = []
        self._wake = asyncio.Event()
        self._closed = False
        self.cancel_requested = False
        self._task = asyncio.create_task(self._send_forever())

    def emit(self, event: run_pb2.RunEvent) -> None:
        """Queue an event for the next batch."""
        event.sequence = self._next_sequence
        event.attempt = self._claim.attempt
        self._next_sequence += 1
        self._pending.append(event)
        self._wake.set()

    async def _send_forever(self) -> None:
        while not self._closed or self._pending:
            if not self._pending:
                self._wake.clear()
                await self._wake.wait()
                continue
            batch, self._pending = self._pending, []
            try:
                response = await self._stub.AppendRunEvents(
                    pb.AppendRunEventsRequest(
                        run=self._claim.run,
                        fencing_token=self._claim.fencing_token,
                        events=batch,
                    ),
                    metadata=self._metadata,
                    timeout=RPC_TIMEOUT,
                )
            except grpc.aio.AioRpcError as err:
                if _is_lease_lost(err):
                    raise LeaseLostError(self._claim.run) from None
                raise
            self.cancel_requested = self.cancel_requested or response.cancel_requested

    async def drain(self) -> list[run_pb2.RunEvent]:
        """Stop sending and return the events not yet appended (they go with FinishRun)."""
        self._closed = True
        leftover_before = self._pending
        self._pending = []
        self._wake.set()
        await self._task
        return leftover_before

    @property
    def failed(self) -> BaseException | None:
        """Return the error that stopped the sender, if any."""
        if self._task.done() and not self._task.cancelled():
            return self._task.exception()
        return None

    async def abort(self) -> None:
        """Stop sending without flushing."""
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, LeaseLostError, grpc.aio.AioRpcError):
            await self._task


class RunExecution:
    """Carry one claimed run from its first event to FinishRun."""

    def __init__(
        self,
        stub: dispatch_service_pb2_grpc.DispatchServiceAsyncStub,
        claim: pb.RunClaim,
        model_settings: HostedModelSettings,
        model: ChatCompletionsClient,
        metadata: tuple[tuple[str, str], ...],
    ) -> None:
        self._stub = stub
        self._claim = claim
        self._model_settings = model_settings
        self._model = model
        self._metadata = metadata

    async def execute(self) -> None:
        """Run the model and record everything it does; never leave the run unfinished."""
        claim = self._claim
        with structlog.contextvars.bound_contextvars(
            run=claim.run, session=claim.run.rsplit("/runs/", 1)[0], attempt=claim.attempt
        ):
            sink = EventSink(self._stub, claim, self._metadata)
            heartbeat = asyncio.create_task(self._heartbeat_forever())
            try:
                outcome = await self._produce(sink)
                leftover = await sink.drain()
                await self._finish(leftover, outcome)
            except LeaseLostError:
                log.warning("lease_lost_run_abandoned")
            finally:
                heartbeat.cancel()
                await sink.abort()
                with contextlib.suppress(asyncio.CancelledError, LeaseLostError):
                    await heartbeat

    async def _produce(self, sink: EventSink) -> dict[str, Any]:
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
        reply: list[str] = []
        usage = run_pb2.Usage()
        try:
            async for item in self._model.stream(model_messages(self._claim)):
                if isinstance(item, TextDelta):
                    reply.append(item.text)
                    sink.emit(run_pb2.RunEvent(output_text_delta=run_pb2.TextDelta(text=item.text)))
                elif isinstance(item, ReasoningDelta):
                    sink.emit(
                        run_pb2.RunEvent(reasoning_summary_delta=run_pb2.TextDelta(text=item.text))
                    )
                elif isinstance(item, UsageReport):
                    usage = run_pb2.Usage(
                        input_tokens=item.input_tokens,
                        output_tokens=item.output_tokens,
                        reasoning_tokens=item.reasoning_tokens,
                    )
                    sink.emit(run_pb2.RunEvent(usage=usage))
                if sink.failed is not None:
                    raise sink.failed
        except ModelError as err:
            log.info("model_call_failed", reason=err.reason, error=err.message)
            return {"failed": pb.FinishRunRequest.Failed(reason=err.reason, message=err.message)}
        return {"completed": pb.FinishRunRequest.Completed(text="".join(reply), usage=usage)}

    async def _finish(self, leftover: list[run_pb2.RunEvent], outcome: dict[str, Any]) -> None:
        request = pb.FinishRunRequest(
            run=self._claim.run, fencing_token=self._claim.fencing_token, events=leftover, **outcome
        )
        try:
            await self._stub.FinishRun(request, metadata=self._metadata, timeout=RPC_TIMEOUT)
        except grpc.aio.AioRpcError as err:
            if _is_lease_lost(err):
                raise LeaseLostError(self._claim.run) from None
            raise

    async def _heartbeat_forever(self) -> None:
        interval = max(self._claim.heartbeat_interval.ToTimedelta().total_seconds(), 0.05)
        while True:
            await asyncio.sleep(interval)
            try:
                await self._stub.HeartbeatRun(
                    pb.HeartbeatRunRequest(
                        run=self._claim.run, fencing_token=self._claim.fencing_token
                    ),
                    metadata=self._metadata,
                    timeout=RPC_TIMEOUT,
                )
            except grpc.aio.AioRpcError as err:
                if _is_lease_lost(err):
                    log.warning("heartbeat_lease_lost")
                    return
                log.warning("heartbeat_failed", code=err.code().name)
