"""A worker given several control-plane replicas moves on when the one it uses dies."""

from __future__ import annotations

import json
import secrets
import signal

import pytest

from devtools.devmodel import DevModel
from devtools.processes import cluster
from tests.faults.helpers import SLOW, assert_invariants, owner_key, watch_new_run

pytestmark = pytest.mark.timeout(120)


async def test_killing_the_workers_replica_moves_its_run_and_its_claims_to_another(
    database: str, devmodel: DevModel
) -> None:
    """The run in flight finishes on its first attempt; later runs are claimed elsewhere."""
    key = await owner_key(database)
    async with cluster(database, secrets.token_urlsafe(16), devmodel.base_url) as c:
        cp_a = await c.control_plane("cp-a")
        cp_b = await c.control_plane("cp-b")
        worker = await c.worker(
            "w1", cp_a, AP_CONTROL_PLANE_ADDRESS=f"{cp_a.address}, {cp_b.address}"
        )
        watched = await watch_new_run(cp_b, key, f"fail over {SLOW}")
        cp_a.signal(signal.SIGKILL)
        events = await watched.finish()
        failover = json.loads(await worker.wait_for_line("control_plane_failover"))
        later = await watch_new_run(cp_b, key, "after the loss [[tokens=3]]")
        later_events = await later.finish()
    assert (failover["failed"], failover["now_using"]) == (cp_a.address, cp_b.address)
    assert events[-1].type == "run.completed", events[-1]
    assert "run.attempt_started" not in [e.type for e in events]
    assert events[-1].attempt == 1
    await assert_invariants(database, watched.run.name, events)
    assert later_events[-1].type == "run.completed", later_events[-1]
    await assert_invariants(database, later.run.name, later_events)
