"""Run a model's tool calls through the gateway, reporting each as tool_call.* events.

    tool_call.started (all calls of the step, in the model's order)
      └─ CallTool, in parallel ─► tool_call.progress every few seconds ─► tool_call.completed

A call that cannot complete because the run stops (cancel, deadline, drain) still gets its
tool_call.completed (`CANCELLED`), so no record is left without an outcome; the cancel
reaches the gateway as the cancellation of the CallTool RPC.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, TypeAlias

import grpc
import structlog
from agentplatform.dispatch.v1 import dispatch_service_pb2 as pb
from agentplatform.gateway.v1 import gateway_service_pb2 as gw
from agentplatform.gateway.v1 import gateway_service_pb2_grpc
from agentplatform.v1 import run_pb2

from services.worker.metrics import record_tool_call
from services.worker.model import ToolCallRequest, ToolResult

if TYPE_CHECKING:
    from services.worker.execution import EventSink

log = structlog.get_logger(service="worker")

GatewayStub: TypeAlias = "gateway_service_pb2_grpc.GatewayServiceAsyncStub"
Metadata = tuple[tuple[str, str], ...]
_LIST_TIMEOUT_S = 10.0
_CACHED_LISTS = 1024  # workspaces whose current tool list a worker keeps
UNKNOWN_TOOL = "(unknown)"


def _remaining(claim: pb.RunClaim) -> float:
    return max(claim.deadline.ToDatetime().timestamp() - time.time(), 0.1)


class RunTools:
    """The gateway as a run sees it: the tools it is offered, and the calls it makes."""

    def __init__(self, stub: GatewayStub, metadata: Metadata, *, progress_seconds: float) -> None:
        self._stub = stub
        self._metadata = metadata
        self._progress_seconds = progress_seconds
        self._lists: OrderedDict[tuple[str, int], list[gw.Tool]] = OrderedDict()

    async def offered(self, claim: pb.RunClaim) -> Sequence[gw.Tool]:
        """List the tools of the run's workspace; none when the gateway cannot be reached.

        The claim carries the version of the workspace's registry, so a list fetched for the
        same version is reused and a workspace that never registered a tool costs no call.
        """
        if claim.tools_version == 0:
            return []
        key = (claim.workspace, claim.tools_version)
        cached = self._lists.get(key)
        if cached is not None:
            self._lists.move_to_end(key)
            return cached
        try:
            response = await self._stub.ListRunTools(
                gw.ListRunToolsRequest(run=claim.run, workspace=claim.workspace),
                metadata=self._metadata,
                timeout=min(_LIST_TIMEOUT_S, _remaining(claim)),
            )
        except grpc.aio.AioRpcError as err:
            # A run without tools still answers; the model is told none are available.
            log.warning("tool_list_failed", code=err.code().name)
            return []
        self._lists[key] = list(response.tools)
        while len(self._lists) > _CACHED_LISTS:
            self._lists.popitem(last=False)
        return self._lists[key]

    async def run(
        self,
        sink: EventSink,
        claim: pb.RunClaim,
        calls: Sequence[ToolCallRequest],
        offered: Collection[str],
    ) -> list[ToolResult]:
        """Make the calls in parallel; return their results, in the calls' order.

        `offered` names the tools the model was given; a call of any other name is still
        made (the gateway answers it) but is counted as an unknown tool.
        """
        for call in calls:
            sink.emit(
                run_pb2.RunEvent(
                    tool_call_started=run_pb2.ToolCallStarted(
                        call_id=call.call_id, tool=call.name, arguments_json=call.arguments_json
                    )
                )
            )
        return list(
            await asyncio.gather(*(self._one(sink, claim, call, offered) for call in calls))
        )

    async def _one(
        self,
        sink: EventSink,
        claim: pb.RunClaim,
        call: ToolCallRequest,
        offered: Collection[str],
    ) -> ToolResult:
        # The model chooses the names: only offered ones become metric labels.
        tool = call.name if call.name in offered else UNKNOWN_TOOL
        started = time.monotonic()
        task = asyncio.ensure_future(
            self._stub.CallTool(
                gw.CallToolRequest(
                    run=claim.run,
                    workspace=claim.workspace,
                    tool=call.name,
                    arguments_json=call.arguments_json,
                    call_id=call.call_id,
                ),
                metadata=self._metadata,
                timeout=_remaining(claim),
            )
        )
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=self._progress_seconds)
                if done:
                    break
                sink.emit(
                    run_pb2.RunEvent(
                        tool_call_progress=run_pb2.ToolCallProgress(
                            call_id=call.call_id,
                            elapsed_ms=int((time.monotonic() - started) * 1000),
                        )
                    )
                )
        except asyncio.CancelledError:
            task.cancel()
            record_tool_call(tool, "cancelled", claim.workspace)
            self._completed(
                sink,
                call,
                started,
                "The run stopped before the tool answered.",
                error_code="CANCELLED",
            )
            raise
        try:
            response = task.result()
        except grpc.aio.AioRpcError as err:
            log.warning("tool_call_failed", tool=call.name, code=err.code().name)
            timed_out = err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            record_tool_call(tool, "timeout" if timed_out else "error", claim.workspace)
            text = f"Error GATEWAY_ERROR: the tool gateway failed ({err.code().name})."
            self._completed(sink, call, started, text, error_code="GATEWAY_ERROR")
            return ToolResult(call.call_id, call.name, text, is_error=True)
        if not response.is_error:
            outcome = "ok"
        elif response.error_code == "TOOL_TIMEOUT":
            outcome = "timeout"
        else:
            outcome = "error"
        record_tool_call(tool, outcome, claim.workspace)
        self._completed(
            sink,
            call,
            started,
            response.result,
            error_code=response.error_code if response.is_error else "",
            is_error=response.is_error,
            truncated=response.truncated,
        )
        return ToolResult(call.call_id, call.name, response.result, is_error=response.is_error)

    @staticmethod
    def _completed(
        sink: EventSink,
        call: ToolCallRequest,
        started: float,
        result: str,
        *,
        error_code: str,
        is_error: bool = True,
        truncated: bool = False,
    ) -> None:
        sink.emit(
            run_pb2.RunEvent(
                tool_call_completed=run_pb2.ToolCallCompleted(
                    call_id=call.call_id,
                    result=result,
                    is_error=is_error,
                    duration_ms=int((time.monotonic() - started) * 1000),
                    error_code=error_code,
                    truncated=truncated,
                )
            )
        )
