"""The cells of the authorization matrix, shared by the gRPC and the HTTP matrix.

Each cell is one call of an RPC: by a role or a bad key, naming our own or a foreign
workspace's resources, with the status the policy table implies (tests/tenancy/test_matrix.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
from google.protobuf import message

from services.control_plane import policy
from services.control_plane.policy import ROLES, at_least
from tests.tenancy.rpcs import Rpc, build_request, names_in
from tests.tenancy.world import Tenant, World

OK = grpc.StatusCode.OK
# What an allowed call in our own workspace answers when it is not OK, and why.
OWN_OUTCOME = {
    # The matrix's stack runs without a vault or gateway, so the forwarding services say so.
    "SecretService": grpc.StatusCode.UNIMPLEMENTED,
    "MasterKeyService": grpc.StatusCode.UNIMPLEMENTED,
    "ToolService": grpc.StatusCode.UNIMPLEMENTED,
    # Tool call records live in the control plane's own tables.
    "ToolService/ListToolCalls": OK,
    # The matrix has no real token to spend on every cell (tests/tenancy/test_invitations.py
    # accepts real ones); every caller the policy lets through is answered for the token.
    "InvitationService/AcceptInvitation": grpc.StatusCode.NOT_FOUND,
    # The matrix cannot build decisions for calls that wait (tests/integration/test_approvals.py
    # decides real ones); a foreign run is still NOT_FOUND.
    "RunService/SubmitToolApprovals": grpc.StatusCode.INVALID_ARGUMENT,
}
# Kinds whose names carry no workspace (it is the caller's), so "foreign" names read the same.
WORKSPACE_IMPLIED = {"secret", "tool", "mcp_server"}


@dataclass(frozen=True)
class Cell:
    """One call of the matrix and the status it must answer."""

    label: str
    request: message.Message
    authorization: str | None
    expected: grpc.StatusCode

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """Return the gRPC metadata of the cell's credentials."""
        return (("authorization", self.authorization),) if self.authorization else ()


def _expected_allowed(rpc: Rpc, names: list[str], foreign: Tenant | None) -> grpc.StatusCode:
    method = f"{rpc.service.name}/{rpc.method.name}"
    own = OWN_OUTCOME.get(method, OWN_OUTCOME.get(rpc.service.name, OK))
    if foreign is None:
        return own
    foreign_names = {v for k, v in foreign.names.items() if k not in WORKSPACE_IMPLIED}
    return grpc.StatusCode.NOT_FOUND if foreign_names & set(names) else own


async def _request(
    world: World, rpc: Rpc, target: Tenant, foreign: bool, role: str = "owner"
) -> message.Message:
    """Build the RPC's request naming resources of `target`, fresh ones (by `role`) for a change."""
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
            kinds[kind] = await world.fresh(target, kind, role)
    return build_request(rpc, kinds.__getitem__)


async def cells(world: World, served: set[str], rpc: Rpc) -> AsyncIterator[Cell]:
    """Yield the RPC's row: every role and bad key, in our own and the foreign workspace."""
    needed = policy.POLICY[rpc.path]
    bad_keys = {
        "no key": None,
        "malformed key": "Bearer not-a-key",
        "revoked key": f"Bearer {world.revoked_key}",
    }
    for place, target in (("own", world.own), ("foreign", world.foreign)):
        foreign = place == "foreign"
        for role in ROLES:
            request = await _request(world, rpc, target, foreign, role)
            if rpc.service.full_name not in served:
                expected = grpc.StatusCode.UNIMPLEMENTED
            elif not at_least(role, needed):
                expected = grpc.StatusCode.PERMISSION_DENIED
            else:
                expected = _expected_allowed(
                    rpc, names_in(request), world.foreign if foreign else None
                )
            key = world.own.clients[role].api_key
            yield Cell(f"{place} {role}", request, f"Bearer {key}", expected)
        for label, authorization in bad_keys.items():
            request = await _request(world, rpc, target, foreign)
            expected = (
                grpc.StatusCode.UNAUTHENTICATED
                if rpc.service.full_name in served
                else grpc.StatusCode.UNIMPLEMENTED
            )
            yield Cell(f"{place} {label}", request, authorization, expected)
