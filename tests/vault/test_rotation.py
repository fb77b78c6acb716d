"""Master-key rotation: new version at once, re-wrap under load, resume, retire, refuse."""

from __future__ import annotations

import asyncio
import secrets
import shutil
import stat
import uuid
from pathlib import Path

import asyncpg
import grpc
import pytest
from agentplatform.v1 import (
    master_key_pb2,
    master_key_service_pb2,
    master_key_service_pb2_grpc,
)
from pydantic import SecretStr

from services.rpc.db import create_pool, role_dsn
from services.rpc.settings import SettingsError
from services.vault.keyring import Keyring, new_keyring_file
from services.vault.rotation import Rotation, check_keyring
from services.vault.secrets import KeyHolder
from tests.harness import Client, expect_error
from tests.vault.helpers import (
    Identities,
    VaultStack,
    read_key_file,
    start_vault,
    start_vault_stack,
    write_key_file,
)

ACTIVE = master_key_pb2.MasterKeyVersion.ACTIVE
RETIRED = master_key_pb2.MasterKeyVersion.RETIRED
DECRYPT_ONLY = master_key_pb2.MasterKeyVersion.DECRYPT_ONLY


def master_keys(client: Client) -> master_key_service_pb2_grpc.MasterKeyServiceAsyncStub:
    """Return the public MasterKeyService stub on a client's channel."""
    return master_key_service_pb2_grpc.MasterKeyServiceStub(client.channel)


async def rotate(client: Client) -> master_key_pb2.MasterKeyStatus:
    """Rotate the master key through the public API."""
    return await master_keys(client).RotateMasterKey(
        master_key_service_pb2.RotateMasterKeyRequest(), metadata=client.auth, timeout=10
    )


async def status(client: Client) -> master_key_pb2.MasterKeyStatus:
    """Read the master-key status through the public API."""
    return await master_keys(client).GetMasterKeyStatus(
        master_key_service_pb2.GetMasterKeyStatusRequest(), metadata=client.auth, timeout=10
    )


def summary(reported: master_key_pb2.MasterKeyStatus) -> list[tuple[int, int, int]]:
    """Return (version, state, data keys) per version."""
    return [(v.version, v.state, v.data_key_count) for v in reported.versions]


async def master_key_versions(admin_dsn: str) -> dict[str, int]:
    """Map each stored secret version (by name) to its master-key version."""
    conn = await asyncpg.connect(role_dsn(admin_dsn, "ap_vault"))
    try:
        rows = await conn.fetch(
            "SELECT s.name, v.master_key_version FROM secrets s"
            " JOIN secret_versions v ON v.secret_id = s.id"
        )
    finally:
        await conn.close()
    return {r["name"]: r["master_key_version"] for r in rows}


async def put_many(vault: VaultStack, count: int) -> dict[str, bytes]:
    """Store `count` secrets in the owner's workspace; return their values by id."""
    values = {f"LOAD_{i:03d}": vault.guard.plant(f"load{i}") for i in range(count)}
    await asyncio.gather(*(vault.put(vault.owner, k, v) for k, v in values.items()))
    return values


async def test_resolves_keep_succeeding_while_a_rotation_rewraps_under_load(
    database: str, mtls: Identities, key_dir: Path
) -> None:
    """New puts use the new version at once; resolves never fail; the old version retires."""
    key_file = write_key_file(key_dir)
    async with start_vault_stack(
        database,
        mtls,
        key_file,
        internal_token=secrets.token_urlsafe(24),
        vault_rewrap_batch_size=4,
    ) as vault:
        values = await put_many(vault, 60)
        stop = asyncio.Event()
        during_rewrap = 0
        failures: list[str] = []

        async def resolver(offset: int) -> int:
            nonlocal during_rewrap
            done = 0
            names = list(values)
            while not stop.is_set():
                name = names[(offset + 7 * done) % len(names)]
                try:
                    resolved = await vault.resolve(vault.owner, name)
                except grpc.aio.AioRpcError as err:
                    failures.append(f"{name}: {err.code().name} {err.details()}")
                    continue
                if resolved.value != values[name]:
                    failures.append(f"{name}: wrong value")
                if vault.vault.rotation.running:
                    during_rewrap += 1
                done += 1
            return done

        load = [asyncio.create_task(resolver(i)) for i in range(8)]
        rotated = await rotate(vault.owner)
        assert rotated.active_version == 2
        fresh = vault.guard.plant()
        await vault.put(vault.owner, "AFTER_ROTATE", fresh)
        assert (await master_key_versions(database))["AFTER_ROTATE"] == 2
        await asyncio.wait_for(vault.vault.rotation.wait_idle(), 30)
        stop.set()
        total = sum(await asyncio.gather(*load))
        assert failures == []
        assert total > 0 and during_rewrap > 0
        reported = await status(vault.owner)
        assert summary(reported) == [(1, RETIRED, 0), (2, ACTIVE, 61)]
        assert not reported.rewrap_running and all(v.in_key_file for v in reported.versions)
        assert set((await master_key_versions(database)).values()) == {2}
        operations = [r["operation"] for r in await vault.audit(actor_service="vault")]
        assert operations.count("rewrap") >= 15 and operations[-1] == "retire"
        assert [r["master_key_version"] for r in await vault.audit(operation="rotate")] == [2]
        on_disk = read_key_file(key_file)
        assert on_disk.versions == [1, 2] and on_disk.active_version == 2
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600


async def test_old_versions_decrypt_until_their_data_keys_move(
    database: str, mtls: Identities, key_dir: Path
) -> None:
    """Mid re-wrap, data keys under both versions resolve, and the old one is not retired."""
    async with start_vault_stack(
        database, mtls, write_key_file(key_dir), internal_token=secrets.token_urlsafe(24)
    ) as vault:
        values = await put_many(vault, 10)
        held = sorted(values)[:5]
        conn = await asyncpg.connect(role_dsn(database, "ap_vault"))
        try:
            # Another transaction holds half the rows, so the re-wrap must leave them for later.
            async with conn.transaction():
                await conn.execute(
                    "SELECT 1 FROM secret_versions v JOIN secrets s ON s.id = v.secret_id"
                    " WHERE s.name = ANY($1::text[]) FOR UPDATE OF v",
                    held,
                )
                await rotate(vault.owner)
                await asyncio.wait_for(vault.vault.rotation.wait_idle(), 30)
                placed = await master_key_versions(database)
                assert {placed[n] for n in held} == {1}
                assert {placed[n] for n in values if n not in held} == {2}
                for name, value in values.items():
                    assert (await vault.resolve(vault.owner, name)).value == value
                assert summary(await status(vault.owner)) == [
                    (1, DECRYPT_ONLY, 5),
                    (2, ACTIVE, 5),
                ]
        finally:
            await conn.close()
        vault.vault.rotation.kick()
        await asyncio.wait_for(vault.vault.rotation.wait_idle(), 30)
        assert summary(await status(vault.owner)) == [(1, RETIRED, 0), (2, ACTIVE, 10)]


async def test_an_interrupted_rewrap_resumes_when_the_vault_starts(
    database: str, mtls: Identities, key_dir: Path
) -> None:
    """Batches done before the interruption stay done; a new vault finishes the rest."""
    key_file = write_key_file(key_dir)
    token = secrets.token_urlsafe(24)
    async with start_vault_stack(database, mtls, key_file, internal_token=token) as vault:
        values = await put_many(vault, 12)
        workspace = vault.owner.workspace
    # The operator added version 2; one batch was re-wrapped before the vault went down.
    rotated = read_key_file(key_file).with_new_version(at_least=2)
    rotated.save()
    pool = await create_pool(
        role_dsn(database, "ap_vault"), min_size=1, max_size=2, application_name="test"
    )
    try:
        async with pool.acquire() as conn:
            await check_keyring(conn, rotated)
        batch = await Rotation(pool, KeyHolder(rotated), batch_size=5).rewrap_batch(None)
        assert (batch.moved, batch.failed) == (5, 0) and batch.after is not None
    finally:
        await pool.close()
    assert sorted((await master_key_versions(database)).values()) == [1] * 7 + [2] * 5
    async with start_vault_stack(
        database, mtls, key_file, internal_token=token, vault_rewrap_batch_size=3
    ) as vault:
        await asyncio.wait_for(vault.vault.rotation.wait_idle(), 30)
        assert set((await master_key_versions(database)).values()) == {2}
        for name, value in values.items():
            assert (await vault.resolve(workspace, name)).value == value
        assert summary(await status(vault.owner)) == [(1, RETIRED, 0), (2, ACTIVE, 12)]


async def test_a_retired_version_is_refused_and_never_rewrapped(
    database: str, mtls: Identities, key_dir: Path
) -> None:
    """A data key put back under a retired version fails closed, audited, and stays put."""
    key_file = write_key_file(key_dir)
    async with start_vault_stack(
        database, mtls, key_file, internal_token=secrets.token_urlsafe(24)
    ) as vault:
        put = await vault.put(vault.owner, "RETIREE", vault.guard.plant())
        conn = await asyncpg.connect(role_dsn(database, "ap_vault"))
        try:
            before = await conn.fetchrow(
                "SELECT wrapped_key, master_key_version FROM secret_versions WHERE secret_id = $1",
                uuid.UUID(put.uid),
            )
            assert before is not None
            await rotate(vault.owner)
            await asyncio.wait_for(vault.vault.rotation.wait_idle(), 30)
            await conn.execute(
                "UPDATE secret_versions SET wrapped_key = $2, master_key_version = $3"
                " WHERE secret_id = $1",
                uuid.UUID(put.uid),
                before["wrapped_key"],
                before["master_key_version"],
            )
        finally:
            await conn.close()
        info = await expect_error(
            vault.resolve(vault.owner, "RETIREE"),
            grpc.StatusCode.FAILED_PRECONDITION,
            "MASTER_KEY_UNAVAILABLE",
        )
        assert info.metadata["master_key_version"] == "1"
        vault.vault.rotation.kick()
        await asyncio.wait_for(vault.vault.rotation.wait_idle(), 30)
        assert (await master_key_versions(database))["RETIREE"] == 1
        refused = await vault.audit(secret_name="RETIREE", outcome="key_unavailable")
        assert {r["operation"] for r in refused} == {"resolve", "rewrap"}
    # Making the retired version active again is refused at start-up.
    back = read_key_file(key_file)
    Keyring(back.keys, 1, key_file).save()
    with pytest.raises(SettingsError, match="active master-key version 1 is retired"):
        await start_vault(database, mtls, key_file)


async def test_the_vault_refuses_a_key_file_that_cannot_open_the_database(
    database: str, mtls: Identities, key_dir: Path
) -> None:
    """A key file lacking a version rows use, or holding another key under it, stops start-up."""
    key_file = write_key_file(key_dir / "original")
    async with start_vault_stack(
        database, mtls, key_file, internal_token=secrets.token_urlsafe(24)
    ) as vault:
        await vault.put(vault.owner, "NEEDS_V1", vault.guard.plant())
    lacking = key_dir / "lacking.json"
    Keyring({}, 0, lacking).with_new_version(at_least=2).save()
    with pytest.raises(SettingsError, match=r"version\(s\) \[1\].*lacks"):
        await start_vault(database, mtls, lacking)
    impostor = key_dir / "impostor" / "master-keys.json"
    new_keyring_file(impostor)
    with pytest.raises(SettingsError, match="not the key this database was written with"):
        await start_vault(database, mtls, impostor)


async def test_keys_from_the_environment_cannot_be_rotated_by_the_vault(
    database: str, mtls: Identities, key_dir: Path
) -> None:
    """With AP_VAULT_MASTER_KEYS, RotateMasterKey says to add the version there."""
    inline = new_keyring_file(key_dir / "inline.json").to_json()
    async with start_vault_stack(
        database,
        mtls,
        key_dir / "inline.json",
        internal_token=secrets.token_urlsafe(24),
        vault_master_key_file=None,
        vault_master_keys=SecretStr(inline),
    ) as vault:
        await vault.put(vault.owner, "ENV_KEYS", vault.guard.plant())
        await expect_error(
            rotate(vault.owner), grpc.StatusCode.FAILED_PRECONDITION, "MASTER_KEYS_READ_ONLY"
        )
        assert summary(await status(vault.owner)) == [(1, ACTIVE, 1)]


async def test_a_key_file_the_vault_cannot_write_is_not_rotated(
    database: str, mtls: Identities, key_dir: Path
) -> None:
    """When the new version cannot reach the key file, nothing changes and the caller is told."""
    key_file = write_key_file(key_dir / "vanishing")
    async with start_vault_stack(
        database, mtls, key_file, internal_token=secrets.token_urlsafe(24)
    ) as vault:
        await vault.put(vault.owner, "STAYS_ON_V1", vault.guard.plant())
        shutil.rmtree(key_file.parent)
        await expect_error(
            rotate(vault.owner), grpc.StatusCode.FAILED_PRECONDITION, "MASTER_KEYS_READ_ONLY"
        )
        assert summary(await status(vault.owner)) == [(1, ACTIVE, 1)]
        assert (await vault.resolve(vault.owner, "STAYS_ON_V1")).version == 1
