"""The authorization matrix: every public RPC × every role × own or foreign workspace × bad keys.

RPCs come from the generated descriptors and the expected status of each cell from the
policy table plus three rules: a bad key is UNAUTHENTICATED, a role below the table's is
PERMISSION_DENIED, and an allowed call naming another workspace's resource is NOT_FOUND.
"""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import message

from services.control_plane import policy
from services.control_plane.policy import INTERNAL
from tests.harness import expect_error
from tests.tenancy.cells import OK, cells
from tests.tenancy.rpcs import Rpc, call, public_rpcs
from tests.tenancy.world import World

RPCS = public_rpcs()


async def _outcome(
    channel: grpc.aio.Channel,
    rpc: Rpc,
    request: message.Message,
    metadata: tuple[tuple[str, str], ...],
) -> tuple[grpc.StatusCode, str, object]:
    try:
        response = await call(channel, rpc, request, metadata)
    except grpc.aio.AioRpcError as err:
        return err.code(), err.details() or "", None
    return OK, "", response


def test_every_rpc_is_in_the_policy_table() -> None:
    """The table lists every public RPC, and lists nothing that does not exist."""
    public = {rpc.path for rpc in RPCS}
    assert public - policy.POLICY.keys() == set(), (
        "add these RPCs to services/control_plane/policy.py"
    )
    listed_public = {m for m, role in policy.POLICY.items() if role != INTERNAL}
    assert listed_public - public == set(), "the policy table lists RPCs that do not exist"


@pytest.mark.parametrize("rpc", RPCS, ids=lambda r: r.path.removeprefix("/agentplatform.v1."))
async def test_matrix(world: World, served: set[str], rpc: Rpc) -> None:
    """Each cell of the RPC's row answers exactly the status the policy implies."""
    failures: list[str] = []
    channel = world.own.clients["owner"].channel
    async for cell in cells(world, served, rpc):
        code, details, response = await _outcome(channel, rpc, cell.request, cell.metadata)
        if code != cell.expected:
            failures.append(f"{cell.label}: {code.name} ({details}), expected {cell.expected.name}")
        elif response is not None and world.foreign.workspace_id.hex in str(response).replace(
            "-", ""
        ):
            failures.append(f"{cell.label}: the answer mentions the foreign workspace")
    assert not failures, f"{rpc.path}:\n  " + "\n  ".join(failures)


async def test_denials_carry_the_reason_and_the_roles(world: World) -> None:
    """A role too weak gets PERMISSION_DENIED naming its role and the one needed."""
    viewer = world.own.clients["viewer"]
    rpc = next(r for r in RPCS if r.method.name == "CreateSession")
    info = await expect_error(
        call(viewer.channel, rpc, rpc.request_class()(), viewer.auth),
        grpc.StatusCode.PERMISSION_DENIED,
        "PERMISSION_DENIED",
    )
    assert dict(info.metadata) == {"role": "viewer", "required_role": "member"}


async def test_an_rpc_missing_from_the_table_is_refused(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fail closed: an RPC the table does not list is refused even to an owner."""
    rpc = next(r for r in RPCS if r.method.name == "ListSessions")
    monkeypatch.delitem(policy.POLICY, rpc.path)
    owner = world.own.clients["owner"]
    await expect_error(
        call(owner.channel, rpc, rpc.request_class()(), owner.auth),
        grpc.StatusCode.PERMISSION_DENIED,
        "PERMISSION_DENIED",
    )
