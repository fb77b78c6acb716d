"""The authorization matrix over HTTP: every public RPC through the edge, cell by cell.

The same cells as the gRPC matrix (tests/tenancy/cells.py), each sent to the edge as the
HTTP request its google.api.http annotation describes, must answer the same status: the
AIP-193 body names the gRPC code, and the HTTP status is that code's mapping.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import httpx
import pytest
import pytest_asyncio
from google.protobuf import json_format, message
from google.rpc import code_pb2

from services.control_plane.policy import POLICY
from services.web.app import Edge
from services.web.errors import HTTP_STATUS
from services.web.routes import Route, Router, public_services, routes_of
from services.web.streams import authorizer_of
from tests.harness import Stack
from tests.tenancy.cells import cells
from tests.tenancy.rpcs import Rpc, public_rpcs
from tests.tenancy.world import World
from tests.web.helpers import start_edge

RPCS = public_rpcs()
ROUTES = {route.grpc_path: route for route in Router(routes_of(public_services())).routes}


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def http(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    """Run an edge in front of the module's stack and give the matrix a client of it."""
    edge: Edge = await start_edge(stack.address)
    try:
        async with httpx.AsyncClient(base_url=edge.url, timeout=15) as client:
            yield client
    finally:
        await edge.stop()


def http_request(route: Route, request: message.Message) -> tuple[str, dict[str, Any]]:
    """Return the URL and httpx arguments that carry `request` as the route describes."""
    values = {}
    for path in route.path.variables:
        target: Any = request
        for part in path.split("."):
            target = getattr(target, part)
        values[path] = str(target)
    as_json = json_format.MessageToDict(request, preserving_proto_field_name=True)
    top_level_path = {p for p in route.path.variables if "." not in p}
    for name in top_level_path:
        as_json.pop(name, None)
    arguments: dict[str, Any] = {}
    if route.body == "*":
        arguments["json"] = as_json
    else:
        if route.body:
            arguments["json"] = as_json.pop(route.body, {})
            for nested in (p for p in route.path.variables if p.startswith(route.body + ".")):
                arguments["json"].pop(nested.split(".", 1)[1], None)
        arguments["params"] = {k: v for k, v in as_json.items() if not isinstance(v, dict)}
        assert len(arguments["params"]) == len(as_json), f"{route.grpc_path}: nested query"
    return route.path.expand(values), arguments


async def _outcome(
    http: httpx.AsyncClient, route: Route, cell_request: message.Message, authorization: str | None
) -> tuple[str, int, str]:
    url, arguments = http_request(route, cell_request)
    headers = {"authorization": authorization} if authorization else {}
    async with http.stream(route.http_method, url, headers=headers, **arguments) as response:
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            return "OK", response.status_code, ""  # the first bytes came: the stream is open
        body = await response.aread()
    if response.status_code == 200:
        return "OK", 200, body.decode()
    error = response.json()["error"]
    return error["status"], response.status_code, error["message"]


def test_every_public_rpc_has_an_http_route() -> None:
    """Each public RPC carries a google.api.http annotation, so the edge serves it."""
    missing = [rpc.path for rpc in RPCS if rpc.path not in ROUTES]
    assert not missing, f"annotate these RPCs with google.api.http: {missing}"


@pytest.mark.parametrize("rpc", RPCS, ids=lambda r: r.path.removeprefix("/agentplatform.v1."))
async def test_http_matrix(
    world: World, served: set[str], http: httpx.AsyncClient, rpc: Rpc
) -> None:
    """Each cell of the RPC's row answers over HTTP exactly what it answers over gRPC."""
    route = ROUTES[rpc.path]
    failures: list[str] = []
    async for cell in cells(world, served, rpc):
        status, http_status, text = await _outcome(http, route, cell.request, cell.authorization)
        expected_http = HTTP_STATUS[getattr(code_pb2, cell.expected.name)]
        if status != cell.expected.name or http_status != expected_http:
            failures.append(
                f"{cell.label}: {http_status} {status} ({text[:120]}), "
                f"expected {expected_http} {cell.expected.name}"
            )
        elif cell.expected == grpc.StatusCode.OK and world.foreign.workspace_id.hex in (
            text.replace("-", "")
        ):
            failures.append(f"{cell.label}: the answer mentions the foreign workspace")
    assert not failures, f"{route.http_method} {route.path.template}:\n  " + "\n  ".join(failures)


def test_a_shared_streams_joiners_are_checked_with_a_get_of_the_same_policy() -> None:
    """The Get that admits a joiner to a shared feed asks for the very role the stream does."""
    routes = list(ROUTES.values())
    shared = {r.grpc_path: authorizer_of(r, routes) for r in routes if r.streaming}
    assert all(shared.values()), f"streams with no authorizing Get (never shared): {shared}"
    for stream, get in shared.items():
        assert get is not None
        assert POLICY[stream] == POLICY[get.grpc_path], f"{stream} vs {get.grpc_path}"
