"""/metrics after a tool loop: `ap_tool_calls_total` counts calls by tool, outcome, workspace."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
from agentplatform.v1 import run_service_pb2, session_pb2, session_service_pb2
from prometheus_client.parser import text_string_to_metric_families

from services.rpc.metrics import MetricsServer
from tests.gateway.helpers import GatewayStack

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(60)]

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
async def metrics_url() -> AsyncIterator[str]:
    """Serve this process's registry (the in-process worker's metrics) on a free port."""
    server = MetricsServer("127.0.0.1", 0)
    await server.start()
    yield server.url
    await server.stop()


async def tool_calls(url: str) -> Samples:
    """Scrape the `ap_tool_calls_total` samples."""
    async with httpx.AsyncClient(trust_env=False, timeout=5) as http:
        reply = await http.get(url)
    reply.raise_for_status()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(reply.text)
        for s in family.samples
        if s.name == "ap_tool_calls_total"
    }


async def test_each_tool_call_is_counted_by_tool_outcome_and_workspace(
    gw_stack: GatewayStack, metrics_url: str
) -> None:
    """An answered call, a timed-out one, an unknown tool and one cut off by a cancel."""
    owner = gw_stack.owner
    await gw_stack.add_http_tool(owner, "fetch", gw_stack.tools.base + "/echo")
    await gw_stack.add_http_tool(owner, "dawdle", gw_stack.tools.base + "/wait", timeout_ms=300)
    await gw_stack.add_http_tool(owner, "hold", gw_stack.tools.base + "/wait", timeout_ms=9000)
    before = await tool_calls(metrics_url)
    _, events = await gw_stack.run(owner, "Go [[tool=fetch]] [[tool=dawdle]] [[tool=made_up]]")
    assert events[-1].type == "run.completed"

    # A call in flight when the run is cancelled.
    session = await owner.sessions.CreateSession(
        session_service_pb2.CreateSessionRequest(session=session_pb2.Session(title="t")),
        metadata=owner.auth,
        timeout=10,
    )
    run = await owner.runs.CreateRun(
        run_service_pb2.CreateRunRequest(parent=session.name, input_text="Wait [[tool=hold]]"),
        metadata=owner.auth,
        timeout=10,
    )
    stream = owner.runs.StreamRunEvents(
        run_service_pb2.StreamRunEventsRequest(name=run.name), metadata=owner.auth, timeout=30
    )
    types = []
    async for response in stream:
        types.append(response.event.type)
        if response.event.type == "tool_call.started":
            await owner.runs.CancelRun(
                run_service_pb2.CancelRunRequest(name=run.name), metadata=owner.auth, timeout=10
            )
    assert types[-1] == "run.cancelled"
    await asyncio.wait_for(gw_stack.tools.abandoned.wait(), 10)

    after = await tool_calls(metrics_url)

    def counted(tool: str, outcome: str) -> float:
        key = (
            "ap_tool_calls_total",
            frozenset({"tool": tool, "outcome": outcome, "workspace": owner.workspace}.items()),
        )
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert counted("fetch", "ok") == 1
    assert counted("dawdle", "timeout") == 1
    assert counted("(unknown)", "error") == 1  # the model's own name is never a label
    assert counted("hold", "cancelled") == 1
    moved = {key for key in after if after[key] != before.get(key, 0.0)}
    assert len(moved) == 4, moved
