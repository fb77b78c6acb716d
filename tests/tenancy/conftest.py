"""Fixtures of the tenancy tests: the two workspaces, and what the control plane serves."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest_asyncio
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.harness import Stack
from tests.tenancy.world import World, build_world


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
