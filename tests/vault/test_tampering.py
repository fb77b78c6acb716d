"""Stored secrets altered or moved in the database fail closed, clearly, and audited."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable

import asyncpg
import grpc
import pytest
import pytest_asyncio
from agentplatform.v1 import secret_pb2

from services.rpc.db import role_dsn
from tests.harness import Client, expect_error
from tests.vault.helpers import VaultStack

Mutation = Callable[[asyncpg.Record], dict[str, object]]


def flip(data: bytes, index: int) -> bytes:
    """Flip the lowest bit of one byte."""
    out = bytearray(data)
    out[index] ^= 1
    return bytes(out)


@pytest_asyncio.fixture(loop_scope="session")
async def vault_db(vault_stack: VaultStack) -> AsyncIterator[asyncpg.Connection]:
    """Connect as the vault's own role, as an attacker with the database would."""
    conn = await asyncpg.connect(role_dsn(vault_stack.admin_dsn, "ap_vault"))
    try:
        yield conn
    finally:
        await conn.close()


async def version_row(conn: asyncpg.Connection, secret: secret_pb2.Secret) -> asyncpg.Record:
    """Read a secret's newest stored version."""
    row = await conn.fetchrow(
        "SELECT * FROM secret_versions WHERE secret_id = $1 AND version = $2",
        uuid.UUID(secret.uid),
        secret.version,
    )
    assert row is not None
    return row


async def overwrite(conn: asyncpg.Connection, row: asyncpg.Record, **columns: object) -> None:
    """Overwrite some columns of a stored version."""
    assignments = ", ".join(f"{name} = ${i + 3}" for i, name in enumerate(columns))
    await conn.execute(
        f"UPDATE secret_versions SET {assignments} WHERE secret_id = $1 AND version = $2",
        row["secret_id"],
        row["version"],
        *columns.values(),
    )


async def expect_refused(
    vault_stack: VaultStack, client: Client, secret: str, reason: str, cause: str | None
) -> None:
    """Resolve must fail closed with this reason and leave an audit record saying so."""
    code = (
        grpc.StatusCode.DATA_LOSS
        if reason == "DECRYPTION_FAILED"
        else grpc.StatusCode.FAILED_PRECONDITION
    )
    info = await expect_error(vault_stack.resolve(client, secret), code, reason)
    if cause is not None:
        assert info.metadata["cause"] == cause
    audit = await vault_stack.audit(operation="resolve", secret_name=secret)
    assert audit[-1]["outcome"] == ("decrypt_failed" if cause else "key_unavailable")
    assert audit[-1]["reason"] == reason


FIELD_FLIPS: dict[str, tuple[Mutation, str, str | None]] = {
    "format": (lambda r: {"format": r["format"] ^ 1}, "DECRYPTION_FAILED", "unknown_format"),
    "nonce": (
        lambda r: {"nonce": flip(r["nonce"], 0)},
        "DECRYPTION_FAILED",
        "authentication_failed",
    ),
    "ciphertext body": (
        lambda r: {"ciphertext": flip(r["ciphertext"], 0)},
        "DECRYPTION_FAILED",
        "authentication_failed",
    ),
    "ciphertext tag": (
        lambda r: {"ciphertext": flip(r["ciphertext"], -1)},
        "DECRYPTION_FAILED",
        "authentication_failed",
    ),
    "wrapped key nonce": (
        lambda r: {"wrapped_key": flip(r["wrapped_key"], 0)},
        "DECRYPTION_FAILED",
        "authentication_failed",
    ),
    "wrapped key body": (
        lambda r: {"wrapped_key": flip(r["wrapped_key"], 20)},
        "DECRYPTION_FAILED",
        "authentication_failed",
    ),
    "wrapped key tag": (
        lambda r: {"wrapped_key": flip(r["wrapped_key"], -1)},
        "DECRYPTION_FAILED",
        "authentication_failed",
    ),
    "master key version": (
        lambda r: {"master_key_version": r["master_key_version"] ^ 2},
        "MASTER_KEY_UNAVAILABLE",
        None,
    ),
    "truncated tag": (
        lambda r: {"ciphertext": r["ciphertext"][:-1]},
        "DECRYPTION_FAILED",
        "authentication_failed",
    ),
    "tag only, no body": (
        lambda r: {"ciphertext": r["ciphertext"][-16:]},
        "DECRYPTION_FAILED",
        "authentication_failed",
    ),
    "shorter than a tag": (
        lambda r: {"ciphertext": r["ciphertext"][:15]},
        "DECRYPTION_FAILED",
        "malformed_record",
    ),
    "short nonce": (lambda r: {"nonce": r["nonce"][:8]}, "DECRYPTION_FAILED", "malformed_record"),
    "long nonce": (
        lambda r: {"nonce": r["nonce"] + b"\x00"},
        "DECRYPTION_FAILED",
        "malformed_record",
    ),
    "truncated wrapped key": (
        lambda r: {"wrapped_key": r["wrapped_key"][:-1]},
        "DECRYPTION_FAILED",
        "malformed_record",
    ),
    "unknown format version": (lambda r: {"format": 2}, "DECRYPTION_FAILED", "unknown_format"),
}


@pytest.mark.parametrize("field", list(FIELD_FLIPS))
async def test_an_altered_field_fails_closed(
    vault_stack: VaultStack, vault_db: asyncpg.Connection, field: str
) -> None:
    """Each stored field altered is refused with its reason, audited, and never partly opened."""
    mutate, reason, cause = FIELD_FLIPS[field]
    secret = "TAMPER_" + field.upper().replace(" ", "_").replace(",", "")
    value = vault_stack.guard.plant()
    put = await vault_stack.put(vault_stack.owner, secret, value)
    row = await version_row(vault_db, put)
    await overwrite(vault_db, row, **mutate(row))
    await expect_refused(vault_stack, vault_stack.owner, secret, reason, cause)
    await overwrite(
        vault_db,
        row,
        **{
            k: row[k]
            for k in ("format", "nonce", "ciphertext", "wrapped_key", "master_key_version")
        },
    )
    assert (await vault_stack.resolve(vault_stack.owner, secret)).value == value


async def test_binding_fields_of_the_row_are_authenticated(
    vault_stack: VaultStack, vault_db: asyncpg.Connection
) -> None:
    """Renaming a secret, renumbering its version or moving it to a workspace all fail."""
    owner = vault_stack.owner
    other = await vault_stack.stack.new_workspace("Tamper binding")
    put = await vault_stack.put(owner, "BOUND", vault_stack.guard.plant())
    uid = uuid.UUID(put.uid)
    await vault_db.execute("UPDATE secrets SET name = 'RENAMED' WHERE id = $1", uid)
    await expect_refused(
        vault_stack, owner, "RENAMED", "DECRYPTION_FAILED", "authentication_failed"
    )
    await vault_db.execute("UPDATE secrets SET name = 'BOUND' WHERE id = $1", uid)
    await vault_db.execute("UPDATE secret_versions SET version = 7 WHERE secret_id = $1", uid)
    await vault_db.execute("UPDATE secrets SET version = 7 WHERE id = $1", uid)
    await expect_refused(vault_stack, owner, "BOUND", "DECRYPTION_FAILED", "authentication_failed")
    await vault_db.execute(
        "UPDATE secrets SET workspace_id = $2 WHERE id = $1",
        uid,
        uuid.UUID(other.workspace.removeprefix("workspaces/")),
    )
    await expect_refused(vault_stack, other, "BOUND", "DECRYPTION_FAILED", "authentication_failed")


MOVES = {
    "ciphertext": ("nonce", "ciphertext"),
    "wrapped key": ("wrapped_key",),
    "ciphertext and wrapped key": ("nonce", "ciphertext", "wrapped_key"),
}


@pytest.mark.parametrize("moved", list(MOVES))
@pytest.mark.parametrize("target", ["another workspace", "another name", "another version"])
async def test_a_record_moved_to_another_row_fails(
    vault_stack: VaultStack, vault_db: asyncpg.Connection, moved: str, target: str
) -> None:
    """A ciphertext or wrapped key copied into another row does not open there."""
    owner = vault_stack.owner
    tag = f"{moved}_{target}".upper().replace(" ", "_")
    source_id = f"SRC_{tag}"
    source = await vault_stack.put(owner, source_id, vault_stack.guard.plant())
    if target == "another workspace":
        victim_client = await vault_stack.stack.new_workspace(f"Move {tag}")
        victim_id = source_id
    else:
        victim_client = owner
        victim_id = f"DST_{tag}" if target == "another name" else source_id
    if target == "another version":
        victim = await vault_stack.put(owner, source_id, vault_stack.guard.plant())
    else:
        victim = await vault_stack.put(victim_client, victim_id, vault_stack.guard.plant())
    src_row = await version_row(vault_db, source)
    dst_row = await version_row(vault_db, victim)
    await overwrite(vault_db, dst_row, **{c: src_row[c] for c in MOVES[moved]})
    await expect_refused(
        vault_stack, victim_client, victim_id, "DECRYPTION_FAILED", "authentication_failed"
    )


async def test_a_resolve_fails_when_its_audit_record_cannot_be_written(
    vault_stack: VaultStack, vault_db: asyncpg.Connection
) -> None:
    """No audit record, no value: the resolve is refused with AUDIT_UNAVAILABLE."""
    owner = vault_stack.owner
    await vault_stack.put(owner, "AUDITED", vault_stack.guard.plant())
    before = len(await vault_stack.audit(operation="resolve"))
    await vault_db.execute(
        "ALTER TABLE audit_log ADD CONSTRAINT audit_down CHECK (false) NOT VALID"
    )
    try:
        await expect_error(
            vault_stack.resolve(owner, "AUDITED"), grpc.StatusCode.UNAVAILABLE, "AUDIT_UNAVAILABLE"
        )
    finally:
        await vault_db.execute("ALTER TABLE audit_log DROP CONSTRAINT audit_down")
    assert len(await vault_stack.audit(operation="resolve")) == before
    await vault_stack.resolve(owner, "AUDITED")
