"""Random and boundary inputs to every public RPC: no INTERNAL or UNKNOWN, nothing changes.

Requests are drawn from each RPC's descriptor (so a new RPC or field is fuzzed with no edit)
and sent with an owner's key, which reaches the most code. Names are random text, boundary
strings, or names of real resources: the foreign workspace's always, our own only for reads,
so that no change an RPC is *allowed* to make is mistaken for damage.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import grpc
import pytest
import pytest_asyncio
from google.protobuf import descriptor, message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.harness import Stack
from tests.tenancy.rpcs import Rpc, call, public_rpcs
from tests.tenancy.world import World, build_world

RPCS = public_rpcs()
FORBIDDEN = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DEADLINE_EXCEEDED}
BOUNDARY_TEXT = [
    "",
    " ",
    "\x00",
    "é" * 40_000,
    "x" * 70_000,
    "users/me/profile",
    "sessions/",
    "sessions/00000000-0000-0000-0000-000000000000",
    "members/00000000-0000-0000-0000-000000000000",
    "apiKeys/00000000-0000-0000-0000-000000000000",
    "workspaces/00000000-0000-0000-0000-000000000000",
    "owner",
    "viewer",
    "\u202e\ud7ff",
]
INT_BOUNDS = {
    descriptor.FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    descriptor.FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    descriptor.FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    descriptor.FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
}


def _scalar(field: descriptor.FieldDescriptor, names: list[str]) -> st.SearchStrategy[Any]:
    if field.type == field.TYPE_STRING:
        return st.one_of(st.text(max_size=80), st.sampled_from(BOUNDARY_TEXT + names))
    if field.type == field.TYPE_BYTES:
        return st.one_of(st.binary(max_size=64), st.just(b"v" * 70_000))
    if field.type == field.TYPE_BOOL:
        return st.booleans()
    if field.type == field.TYPE_ENUM:
        return st.integers(-3, 10)  # proto3 enums are open: unknown numbers must be refused
    if field.type in (field.TYPE_DOUBLE, field.TYPE_FLOAT):
        return st.floats(allow_nan=True, allow_infinity=True, width=32)
    low, high = INT_BOUNDS.get(field.type, (-(2**31), 2**31 - 1))
    return st.one_of(st.integers(low, high), st.sampled_from([low, -1, 0, 1, high]))


def message_strategy(
    desc: descriptor.Descriptor, names: list[str], depth: int = 0
) -> st.SearchStrategy[dict[str, Any]]:
    """Draw a dict of field values for a message type, nested messages included."""
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for field in desc.fields:
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value = _scalar(field.message_type.fields_by_name["value"], [])
            fields[field.name] = st.dictionaries(st.text(max_size=80), value, max_size=40)
        elif field.message_type is not None:
            if depth >= 2:
                continue
            inner = message_strategy(field.message_type, names, depth + 1)
            repeated = field.is_repeated
            fields[field.name] = st.lists(inner, max_size=2) if repeated else inner
        elif field.is_repeated:
            fields[field.name] = st.lists(_scalar(field, names), max_size=3)
        else:
            fields[field.name] = _scalar(field, names)
    return st.fixed_dictionaries({}, optional=fields)


def fill(msg: message.Message, values: dict[str, Any]) -> None:
    """Set drawn values on a message; values the message type cannot hold are skipped."""
    for name, value in values.items():
        field = msg.DESCRIPTOR.fields_by_name[name]
        try:
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                getattr(msg, name).update(value)
            elif field.message_type is not None and field.is_repeated:
                for item in value:
                    fill(getattr(msg, name).add(), item)
            elif field.message_type is not None:
                fill(getattr(msg, name), value)
            elif field.is_repeated:
                getattr(msg, name).extend(value)
            else:
                setattr(msg, name, value)
        except (ValueError, TypeError):
            continue  # e.g. a Duration out of its range: the client library refuses to send it


async def snapshot(stack: Stack, caller: uuid.UUID) -> set[str]:
    """Return every row of the control plane's tables, as JSON, without last-use times.

    The caller's own profile is left out: a drawn `users/me/profile` update is the caller's
    right (and changes its update_time), not a row the fuzzing broke.
    """
    conn = await asyncpg.connect(stack.admin_dsn)
    try:
        tables = await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'control_plane'"
        )
        rows: set[str] = set()
        for table in tables:
            name = table["tablename"]
            own = " WHERE t.user_id <> $1" if name == "profiles" else ""
            args = [caller] if own else []
            for row in await conn.fetch(
                f"SELECT to_jsonb(t) - 'last_used_time' AS j FROM control_plane.{name} t{own}",
                *args,
            ):
                rows.add(f"{name}:{json.dumps(json.loads(row['j']), sort_keys=True)}")
        return rows
    finally:
        await conn.close()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def world(stack: Stack) -> AsyncIterator[World]:
    """Build the two workspaces once for the module."""
    yield await build_world(stack)


def _names(world: World, rpc: Rpc) -> list[str]:
    foreign = [v for v in world.foreign.names.values()]
    if rpc.reads and not rpc.streaming:
        return foreign + list(world.own.names.values())
    return foreign


@pytest.mark.timeout(120)
async def test_random_inputs_never_break_the_server(world: World) -> None:
    """Every public RPC survives random and boundary requests and stored rows stay as they were."""
    caller = world.own.user_ids["owner"]
    before = await snapshot(world.stack, caller)
    loop = asyncio.get_running_loop()
    owner = world.own.clients["owner"]
    failures: list[str] = []

    def fuzz(rpc: Rpc) -> None:
        @settings(
            max_examples=25,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(values=message_strategy(rpc.method.input_type, _names(world, rpc)))
        def one(values: dict[str, Any]) -> None:
            request = rpc.request_class()()
            fill(request, values)
            future = asyncio.run_coroutine_threadsafe(
                call(owner.channel, rpc, request, owner.auth, timeout=5), loop
            )
            try:
                future.result(timeout=15)
            except grpc.aio.AioRpcError as err:
                if err.code() in FORBIDDEN:
                    failures.append(f"{rpc.path} {err.code().name} {err.details()}: {request}")
            except AssertionError:
                pass  # a stream that ended at once without a message

        one()

    for rpc in RPCS:
        await asyncio.to_thread(fuzz, rpc)
    assert not failures, "\n".join(failures[:10])
    health = health_pb2_grpc.HealthStub(owner.channel)
    answer = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert answer.status == health_pb2.HealthCheckResponse.SERVING
    after = await snapshot(world.stack, caller)
    assert before - after == set(), "rows that existed before the fuzzing changed or vanished"
