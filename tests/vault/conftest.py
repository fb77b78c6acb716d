"""Fixtures of the vault tests: a development PKI, and vault stacks in both identity modes."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from devtools.pki import issue_dev_pki
from tests.conftest import clone_database
from tests.vault.helpers import (
    SERVICES,
    Identities,
    VaultStack,
    start_vault_stack,
    token_identities,
    write_key_file,
)


@pytest.fixture(scope="session")
def mtls(tmp_path_factory: pytest.TempPathFactory) -> Identities:
    """Issue a development CA with a certificate per service, and a rogue CA with its own."""
    pki = issue_dev_pki(tmp_path_factory.mktemp("pki"), SERVICES)
    rogue = issue_dev_pki(tmp_path_factory.mktemp("rogue-pki"), SERVICES)
    return Identities(pki, rogue, {})


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def vault_stack(
    pg_admin_dsn: str, template_dsn: str, mtls: Identities, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[VaultStack]:
    """Run a vault (mTLS) and a control plane on a fresh database for one module."""
    dsn = await clone_database(pg_admin_dsn, template_dsn)
    key_file = write_key_file(tmp_path_factory.mktemp("vault"))
    async with start_vault_stack(
        dsn, mtls, key_file, internal_token=secrets.token_urlsafe(24)
    ) as running:
        yield running


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def token_vault_stack(
    pg_admin_dsn: str, template_dsn: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[VaultStack]:
    """Run a vault that identifies callers by token (no TLS) and a control plane."""
    dsn = await clone_database(pg_admin_dsn, template_dsn)
    key_file = write_key_file(tmp_path_factory.mktemp("vault"))
    worker_token = secrets.token_urlsafe(24)
    async with start_vault_stack(
        dsn, token_identities(worker_token), key_file, internal_token=worker_token
    ) as running:
        yield running


@pytest.fixture
def key_dir(tmp_path: Path) -> Path:
    """Give one test a folder for its key file."""
    return tmp_path
