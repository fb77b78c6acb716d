"""Fixtures of the devtools tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.devtools import clones


@pytest.fixture
def private_clone() -> Iterator[clones.PrivateClone]:
    """Give a test a copy of the working tree in a fresh private (0700) directory."""
    with clones.private_clone() as clone:
        yield clone
