"""The audit log: who did what to which secret, version and run, and when; never a value."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid

import asyncpg
import grpc
from agentplatform.v1 import secret_service_pb2
from agentplatform.vault.v1 import vault_service_pb2

from services.rpc.db import role_dsn
from tests.harness import expect_error
from tests.vault.helpers import RUN, VaultStack


async def test_a_resolve_records_who_what_which_version_run_and_when(
    vault_stack: VaultStack,
) -> None:
    """One record per resolve names the gateway, workspace, secret, version, key and run."""
    owner = vault_stack.owner
    started = dt.datetime.now(dt.UTC)
    await vault_stack.put(owner, "RECORDED", vault_stack.guard.plant())
    put = await vault_stack.put(owner, "RECORDED", vault_stack.guard.plant())
    await vault_stack.resolve(owner, "RECORDED", version=1)
    records = await vault_stack.audit(operation="resolve", secret_name="RECORDED")
    assert len(records) == 1
    record = records[0]
    assert record["outcome"] == "ok" and record["reason"] is None
    assert record["actor_service"] == "gateway"
    assert str(record["workspace_id"]) == owner.workspace.removeprefix("workspaces/")
    assert str(record["secret_uid"]) == put.uid
    assert (record["version"], record["master_key_version"], record["run"]) == (1, 1, RUN)
    assert started <= record["time"] <= dt.datetime.now(dt.UTC)


async def test_puts_and_deletes_record_the_user(vault_stack: VaultStack) -> None:
    """Administration is recorded with the end user the control plane acted for."""
    owner = vault_stack.owner
    await vault_stack.put(owner, "ADMINISTERED", vault_stack.guard.plant(), request_id="r-1")
    await vault_stack.secrets(owner).DeleteSecret(
        secret_service_pb2.DeleteSecretRequest(name="secrets/ADMINISTERED"), metadata=owner.auth
    )
    records = await vault_stack.audit(secret_name="ADMINISTERED")
    assert [(r["operation"], r["outcome"]) for r in records] == [("put", "ok"), ("delete", "ok")]
    assert records[0]["request_id"] == "r-1"
    assert records[0]["actor_user"] is not None
    assert {r["actor_user"] for r in records} == {records[0]["actor_user"]}


async def test_malformed_resolves_are_recorded_with_what_was_asked(
    vault_stack: VaultStack,
) -> None:
    """A resolve with a bad run or secret name is refused and still leaves a record."""
    stub, metadata = vault_stack.vault_stub("gateway")
    workspace = vault_stack.owner.workspace
    for name, run, field in (
        (f"{workspace}/secrets/BAD_RUN", "runs/oops", "run"),
        (f"{workspace}/secrets/1-not-an-id", RUN, "name"),
        (f"workspaces/{uuid.uuid4()}/secrets/X", RUN, None),
    ):
        reason = "NOT_FOUND" if field is None else "INVALID_ARGUMENT"
        code = grpc.StatusCode.NOT_FOUND if field is None else grpc.StatusCode.INVALID_ARGUMENT
        info = await expect_error(
            stub.ResolveSecret(
                vault_service_pb2.ResolveSecretRequest(name=name, run=run),
                metadata=metadata,
                timeout=10,
            ),
            code,
            reason,
        )
        if field is not None:
            assert info.metadata["field"] == field
    records = await vault_stack.audit(operation="resolve")
    outcomes = {(r["secret_name"], r["outcome"]) for r in records}
    assert ("BAD_RUN", "invalid_argument") in outcomes
    assert (f"{workspace}/secrets/1-not-an-id", "invalid_argument") in outcomes
    assert ("X", "not_found") in outcomes


async def test_concurrent_resolves_never_mix_answers_or_records(vault_stack: VaultStack) -> None:
    """Resolves read in one shared statement each get their own value, error and record."""
    owner = vault_stack.owner
    values = {f"MIX_{i}": vault_stack.guard.plant() for i in range(6)}
    puts = {k: await vault_stack.put(owner, k, v) for k, v in values.items()}
    conn = await asyncpg.connect(role_dsn(vault_stack.admin_dsn, "ap_vault"))
    try:
        await conn.execute(
            "UPDATE secret_versions SET ciphertext = '\\x00' || ciphertext WHERE secret_id = $1",
            uuid.UUID(puts["MIX_5"].uid),
        )
    finally:
        await conn.close()
    asked = [*values, puts["MIX_0"].uid, "MIX_MISSING"]
    results = await asyncio.gather(
        *(vault_stack.resolve(owner, ref) for ref in asked),
        vault_stack.resolve(owner, "MIX_1", version=2),
        return_exceptions=True,
    )
    for ref, result in zip([*asked, "MIX_1@2"], results, strict=True):
        if ref in ("MIX_5", "MIX_MISSING", "MIX_1@2"):
            assert isinstance(result, grpc.aio.AioRpcError), ref
            expected = grpc.StatusCode.DATA_LOSS if ref == "MIX_5" else grpc.StatusCode.NOT_FOUND
            assert result.code() == expected, ref
        else:
            assert not isinstance(result, BaseException), (ref, result)
            wanted = values["MIX_0"] if ref == puts["MIX_0"].uid else values[ref]
            assert result.value == wanted
    records = [
        r for r in await vault_stack.audit(operation="resolve") if "MIX_" in r["secret_name"]
    ]
    outcomes = sorted((r["secret_name"], r["version"], r["outcome"]) for r in records)
    assert outcomes == sorted(
        [(f"MIX_{i}", 1, "ok") for i in range(5)]
        + [("MIX_0", 1, "ok"), ("MIX_5", 1, "decrypt_failed"), ("MIX_MISSING", None, "not_found")]
        + [("MIX_1", 2, "not_found")]
    )
