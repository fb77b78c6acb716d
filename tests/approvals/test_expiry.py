"""Expiry: an approval nobody gives in time ends as a denial, and the run goes on."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from agentplatform.v1 import tool_pb2

from tests.approvals.helpers import (
    add_tool,
    events_until,
    pending_calls,
    reply,
    start_run,
)
from tests.conftest import clone_database
from tests.gateway.helpers import GatewayStack, start_gateway_stack

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(60)]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def gw_stack(
    pg_admin_dsn: str, template_dsn: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[GatewayStack]:
    """A gateway stack whose approvals expire after two seconds, swept five times a second."""
    dsn = await clone_database(pg_admin_dsn, template_dsn)
    async with start_gateway_stack(
        dsn,
        tmp_path_factory.mktemp("vault"),
        control_plane_settings={
            "poll_interval_seconds": 0.2,
            "approval_timeout_seconds": 2.0,
        },
    ) as running:
        yield running


async def test_an_undecided_call_expires_as_denied_and_the_run_goes_on(
    gw_stack: GatewayStack,
) -> None:
    """Nobody decides: the sweep denies the call with APPROVAL_EXPIRED and the model answers."""
    await add_tool(gw_stack, "ask_expire", tool_pb2.ALWAYS_ASK)
    owner = gw_stack.owner
    run = await start_run(owner, 'Wait [[tool=ask_expire args={"item": "exp"}]]')
    (asked,) = pending_calls(await events_until(owner, run.name, 1, "tool_call.approval_requested"))
    events = await owner.stream(run.name)
    assert events[-1].type == "run.completed"
    denied = next(e.tool_call_denied for e in events if e.type == "tool_call.denied")
    assert denied.call_id == asked.call_id and denied.reason == "APPROVAL_EXPIRED"
    assert not denied.decided_by
    completed = next(e.tool_call_completed for e in events if e.type == "tool_call.completed")
    assert completed.error_code == "APPROVAL_EXPIRED" and "APPROVAL_EXPIRED" in reply(events)
    assert not any(r.get("item") == "exp" for r in gw_stack.tools.received)
