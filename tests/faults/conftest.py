"""Fixtures of the fault tests: the dev model, served from the test process."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from devtools.devmodel import DevModel


@pytest_asyncio.fixture(loop_scope="session")
async def devmodel() -> AsyncIterator[DevModel]:
    """Run the dev model in the test process; the services reach it over HTTP."""
    model = DevModel()
    await model.start()
    yield model
    await model.stop()
