"""A budget crossed in the tool loop: the run stops after the model call that crossed it.

The first model call asks for a tool; its usage goes past what the budget had left, so the
worker ends the run with BUDGET_EXCEEDED instead of calling the tool and the model again.
Without a budget the same run calls the tool and completes, its usage the sum of both calls.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from agentplatform.v1 import (
    run_pb2,
    workspace_pb2,
    workspace_service_pb2,
    workspace_service_pb2_grpc,
)
from google.protobuf.field_mask_pb2 import FieldMask

from tests.conftest import clone_database
from tests.gateway.helpers import start_gateway_stack
from tests.integration.helpers import get_run, new_run, new_session

ITEM = {
    "type": "object",
    "properties": {"item": {"type": "string"}},
    "required": ["item"],
    "additionalProperties": False,
}
TEXT = 'Look it up [[tool=lookup args={"item": "one"}]] [[reasoning=0]]'


async def test_the_tool_loop_stops_at_the_budget(
    pg_admin_dsn: str, template_dsn: str, tmp_path: Path
) -> None:
    """Two model calls without a budget; with one crossed by the first, one call and no tool."""
    dsn = await clone_database(pg_admin_dsn, template_dsn)
    async with start_gateway_stack(dsn, tmp_path / "vault") as gw:
        owner = gw.owner
        await gw.add_http_tool(owner, "lookup", gw.tools.base + "/echo/{item}", parameters=ITEM)
        session = await new_session(owner)

        free = await new_run(owner, session.name, TEXT)
        events = await owner.stream(free.name)
        assert events[-1].type == "run.completed", events[-1]
        usage_events = [e.usage for e in events if e.WhichOneof("payload") == "usage"]
        assert len(usage_events) == 2  # the call that asked for the tool, and the answer
        summed: Counter[str] = Counter()
        for u in usage_events:
            summed.update(input=u.input_tokens, output=u.output_tokens)
        free_run = await get_run(owner, free.name)
        assert (free_run.usage.input_tokens, free_run.usage.output_tokens) == (
            summed["input"],
            summed["output"],
        )
        used = free_run.usage.input_tokens + free_run.usage.output_tokens

        # Whatever is left after the first run, the next run's first call goes past it.
        await workspace_service_pb2_grpc.WorkspaceServiceStub(owner.channel).UpdateWorkspace(
            workspace_service_pb2.UpdateWorkspaceRequest(
                workspace=workspace_pb2.Workspace(
                    name=owner.workspace, budget=workspace_pb2.Budget(monthly_token_limit=used + 1)
                ),
                update_mask=FieldMask(paths=["budget"]),
            ),
            metadata=owner.auth,
            timeout=10,
        )
        capped = await new_run(owner, session.name, TEXT)
        events = await owner.stream(capped.name)
        types = [e.type for e in events]
        assert types[-1] == "run.failed"
        assert events[-1].run_failed.reason == "BUDGET_EXCEEDED"
        assert types.count("usage") == 1
        assert not any(t.startswith("tool_call.") for t in types)
        run = await get_run(owner, capped.name)
        assert run.state == run_pb2.Run.FAILED and run.usage.input_tokens > 0
