"""Anthropic extended thinking across an approval: the signed thinking survives the wait.

The run thinks, calls an ALWAYS_ASK tool and is parked; a person approves; the next worker
claim rebuilds the turn from the run's events ("reasoning.state" among them). The dev model,
like Anthropic, refuses a follow-up whose tool-use turn lacks its signed thinking block, so
the run completing proves the block came back from durable state unchanged.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from agentplatform.v1 import tool_pb2

from tests.approvals.helpers import add_tool, approve, decide, events_until, pending_calls
from tests.approvals.helpers import start_run as create_run
from tests.conftest import clone_database
from tests.gateway.helpers import GatewayStack, start_gateway_stack

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(60)]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def thinking_stack(
    pg_admin_dsn: str, template_dsn: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[GatewayStack]:
    """A gateway stack whose worker speaks Messages with extended thinking on."""
    dsn = await clone_database(pg_admin_dsn, template_dsn)
    async with start_gateway_stack(
        dsn,
        Path(tmp_path_factory.mktemp("vault")),
        control_plane_settings={"poll_interval_seconds": 0.2},
        model_settings={"api": "messages", "thinking_budget_tokens": 2048},
    ) as running:
        yield running


async def test_signed_thinking_is_given_back_after_an_approval(
    thinking_stack: GatewayStack,
) -> None:
    """The resumed run sends the parked turn's thinking block, signature intact."""
    gw = thinking_stack
    await add_tool(gw, "ask_lookup", tool_pb2.ALWAYS_ASK)
    owner = gw.owner
    run = await create_run(owner, 'Look [[tool=ask_lookup args={"item": "one"}]] [[reasoning=2]]')
    waiting = await events_until(owner, run.name, 1, "tool_call.approval_requested")
    (asked,) = pending_calls(waiting)
    (state,) = [e.reasoning_state for e in waiting if e.type == "reasoning.state"]
    (block,) = state.blocks
    await decide(owner, run.name, approve(asked.call_id))
    events = await owner.stream(run.name)
    assert events[-1].type == "run.completed", events[-1]
    follow_up = gw.stack.devmodel.requests[-1]
    assert follow_up["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    turn = follow_up["messages"][-2]
    assert turn["role"] == "assistant" and turn["content"][-1]["type"] == "tool_use"
    assert turn["content"][0] == {
        "type": "thinking",
        "thinking": block.thinking,
        "signature": block.signature,
    }
