"""At scale: 1,000 runs waiting for approval hold no lease, worker slot or model request."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest
import pytest_asyncio
from agentplatform.v1 import tool_pb2

from devtools.processes import eventually
from services.rpc.db import role_dsn
from tests.approvals.helpers import (
    add_tool,
    approve,
    decide,
    events_until,
    pending_calls,
    start_run,
)
from tests.conftest import clone_database
from tests.gateway.helpers import GatewayStack, start_gateway_stack

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(300)]

WAITING = 1000


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def gw_stack(
    pg_admin_dsn: str, template_dsn: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[GatewayStack]:
    """A gateway stack that lets one key create a thousand runs at once."""
    dsn = await clone_database(pg_admin_dsn, template_dsn)
    async with start_gateway_stack(
        dsn,
        tmp_path_factory.mktemp("vault"),
        control_plane_settings={"run_rate_burst": 10 * WAITING},
    ) as running:
        yield running


async def _count(gw: GatewayStack, sql: str) -> int:
    conn = await asyncpg.connect(role_dsn(gw.stack.admin_dsn, "ap_control_plane"))
    try:
        count: int = await conn.fetchval(sql)
    finally:
        await conn.close()
    return count


async def test_a_thousand_waiting_runs_hold_no_lease_slot_or_model_connection(
    gw_stack: GatewayStack,
) -> None:
    """1,000 runs wait for approval: no run is leased, no worker slot is taken, no model
    request is open; one of them still resumes when approved."""
    await add_tool(gw_stack, "ask_many", tool_pb2.ALWAYS_ASK)
    owner = gw_stack.owner
    text = 'Many [[tool=ask_many args={"item": "many"}]] [[reasoning=0]]'
    runs = []
    for _batch in range(WAITING // 50):
        runs += await asyncio.gather(*(start_run(owner, text) for _ in range(50)))

    async def all_waiting() -> bool:
        return (
            await _count(gw_stack, "SELECT count(*) FROM runs WHERE state = 'requires_action'")
            == WAITING
        )

    await eventually(all_waiting, timeout=240)
    assert (
        await _count(
            gw_stack,
            "SELECT count(*) FROM runs"
            " WHERE lease_owner IS NOT NULL OR lease_expire_time IS NOT NULL",
        )
        == 0
    )
    assert (
        await _count(gw_stack, "SELECT count(*) FROM tool_approvals WHERE state = 'pending'")
        == WAITING
    )
    assert gw_stack.stack.worker is not None and gw_stack.stack.worker.runs_in_flight == 0
    assert gw_stack.stack.devmodel.open_requests == 0
    asked = pending_calls(
        await events_until(owner, runs[0].name, 1, "tool_call.approval_requested")
    )
    await decide(owner, runs[0].name, approve(asked[0].call_id))
    assert (await owner.stream(runs[0].name))[-1].type == "run.completed"
