"""Fixtures of the approval tests: a gateway stack whose approvals expire quickly on request."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from tests.conftest import clone_database
from tests.gateway.helpers import GatewayStack, start_gateway_stack


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def gw_stack(
    pg_admin_dsn: str, template_dsn: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[GatewayStack]:
    """Run tool servers, a vault, a gateway and a control plane with a worker for one module."""
    dsn = await clone_database(pg_admin_dsn, template_dsn)
    async with start_gateway_stack(
        dsn,
        tmp_path_factory.mktemp("vault"),
        control_plane_settings={"poll_interval_seconds": 0.2},
    ) as running:
        yield running
