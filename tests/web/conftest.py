"""Fixtures of the HTTP edge tests: a stack, an edge in front of it, an HTTP client."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest_asyncio

from services.web.app import Edge
from tests.harness import Stack
from tests.web.helpers import start_edge


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def edge(stack: Stack) -> AsyncIterator[Edge]:
    """Run one edge in front of the module's stack."""
    running = await start_edge(stack.address)
    try:
        yield running
    finally:
        await running.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def http(edge: Edge) -> AsyncIterator[httpx.AsyncClient]:
    """Give a test an HTTP client of the edge."""
    async with httpx.AsyncClient(base_url=edge.url, timeout=15) as client:
        yield client
