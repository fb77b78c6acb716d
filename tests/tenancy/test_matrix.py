"""The authorization matrix: every public RPC × every role × own or foreign workspace × bad keys.

RPCs come from the generated descriptors and the expected status of each cell from the
policy table plus three rules: a bad key is UNAUTHENTICATED, a role below the table's is
PERMISSION_DENIED, and an allowed call naming another workspace's resource is NOT_FOUND.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
import pytest_asyncio
from google.protobuf import message
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services.control_plane import policy
from services.control_plane.policy import INTERNAL, ROLES, at_least
from tests.harness import Stack, expect_error
from tests.tenancy.rpcs import Rpc, build_request, call, names_in, public_rpcs
from tests.tenancy.world import Tenant, World, build_world

RPCS = public_rpcs()
OK = grpc.StatusCode.OK
# What an allowed call in our own workspace answers when it is not OK, and why.
OWN_OUTCOME = {
    # The matrix's stack runs without a vault or gateway, so the forwarding services say so.
    "SecretService": grpc.StatusCode.UNIMPLEMENTED,
    "MasterKeyService": grpc.StatusCode.UNIMPLEMENTED,
    "ToolService": grpc.StatusCode.UNIMPLEMENTED,
    # Tool call records live in the control plane's own tables.
    "ToolService/ListToolCalls": OK,
}
# Kinds whose names carry no workspace (it is the caller's), so "foreign" names read the same.
WORKSPACE_IMPLIED = {"secret", "tool", "mcp_server"}
BAD_KEYS = {
    "no key": (),
    "malformed key": (("authorization", "Bearer not-a-key"),),
    "revoked key": None,  # filled from the world
}


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def world(stack: Stack) -> AsyncIterator[World]:
    """Build the two workspaces once for the module."""
    yield await build_world(stack)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def served(stack: Stack) -> set[str]:
    """Return the services the control plane serves, from its reflection service."""
    channel = grpc.aio.insecure_channel(stack.address)
    try:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        async for response in responses:
            return {s.name for s in response.list_services_response.service}
    finally:
        await channel.close(None)
    raise AssertionError("reflection answered nothing")


def _expected_allowed(rpc: Rpc, names: list[str], foreign: Tenant | None) -> grpc.StatusCode:
    method = f"{rpc.service.name}/{rpc.method.name}"
    own = OWN_OUTCOME.get(method, OWN_OUTCOME.get(rpc.service.name, OK))
    if foreign is None or own != OK:
        return own
    foreign_names = {v for k, v in foreign.names.items() if k not in WORKSPACE_IMPLIED}
    return grpc.StatusCode.NOT_FOUND if foreign_names & set(names) else OK


async def _request(world: World, rpc: Rpc, target: Tenant, foreign: bool) -> message.Message:
    """Build the RPC's request naming resources of `target`, fresh ones for a change."""
    kinds: dict[str, str] = {}

    def remember(kind: str) -> str:
        kinds[kind] = ""
        return kind

    build_request(rpc, remember)
    for kind in kinds:
        if foreign and kind == "profile":
            kinds[kind] = target.names["owner_profile"]
        elif rpc.reads or foreign:
            kinds[kind] = target.names[kind]
        else:
            kinds[kind] = await world.fresh(target, kind)
    return build_request(rpc, kinds.__getitem__)


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
    needed = policy.POLICY[rpc.path]
    failures: list[str] = []
    channel = world.own.clients["owner"].channel
    for place, target in (("own", world.own), ("foreign", world.foreign)):
        foreign = place == "foreign"
        for role in ROLES:
            request = await _request(world, rpc, target, foreign)
            client = world.own.clients[role]
            if rpc.service.full_name not in served:
                expected = grpc.StatusCode.UNIMPLEMENTED
            elif not at_least(role, needed):
                expected = grpc.StatusCode.PERMISSION_DENIED
            else:
                expected = _expected_allowed(
                    rpc,
                    names_in(request),
                    world.foreign if foreign else None,
                )
            code, details, response = await _outcome(channel, rpc, request, client.auth)
            if code != expected:
                failures.append(
                    f"{place} {role}: {code.name} ({details}), expected {expected.name}"
                )
            elif response is not None and world.foreign.workspace_id.hex in str(response).replace(
                "-", ""
            ):
                failures.append(f"{place} {role}: the answer mentions the foreign workspace")
        for label, metadata in BAD_KEYS.items():
            key_metadata = (
                (("authorization", f"Bearer {world.revoked_key}"),)
                if metadata is None
                else metadata
            )
            request = await _request(world, rpc, target, foreign)
            expected = (
                grpc.StatusCode.UNAUTHENTICATED
                if rpc.service.full_name in served
                else grpc.StatusCode.UNIMPLEMENTED
            )
            code, details, _ = await _outcome(channel, rpc, request, key_metadata)
            if code != expected:
                failures.append(
                    f"{place} {label}: {code.name} ({details}), expected {expected.name}"
                )
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
