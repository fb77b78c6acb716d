"""Secret administration through the control plane, and resolution by the gateway."""

from __future__ import annotations

import asyncio
import os
import uuid

import asyncpg
import grpc
import pytest
from agentplatform.v1 import (
    master_key_service_pb2,
    master_key_service_pb2_grpc,
    secret_service_pb2,
    secret_service_pb2_grpc,
)
from pydantic import SecretStr

from services.rpc.db import role_dsn
from tests.harness import Client, Stack, expect_error, start_control_plane
from tests.vault.helpers import VaultStack


async def test_many_secrets_round_trip_across_workspaces(vault_stack: VaultStack) -> None:
    """Every stored value resolves back exactly, per workspace, per version."""
    other = await vault_stack.stack.new_workspace("Round trip")
    stored: dict[tuple[str, str], bytes] = {}

    async def store(client: Client, i: int) -> None:
        secret = f"ROUND_TRIP_{i}"
        first = vault_stack.guard.plant(f"rt{i}a")
        second = os.urandom(48) + vault_stack.guard.plant(f"rt{i}b")
        assert (await vault_stack.put(client, secret, first)).version == 1
        assert (await vault_stack.put(client, secret, second)).version == 2
        stored[(client.workspace, secret)] = second
        old = await vault_stack.resolve(client, secret, version=1)
        assert (old.value, old.version) == (first, 1)

    await asyncio.gather(
        *(store(client, i) for client in (vault_stack.owner, other) for i in range(25))
    )
    clients = {vault_stack.owner.workspace: vault_stack.owner, other.workspace: other}
    for (workspace, secret), value in stored.items():
        resolved = await vault_stack.resolve(clients[workspace], secret)
        assert (resolved.value, resolved.version) == (value, 2)


async def test_no_response_carries_a_value(vault_stack: VaultStack) -> None:
    """Put, get and list answer with metadata only."""
    owner = vault_stack.owner
    value = vault_stack.guard.plant()
    secrets = vault_stack.secrets(owner)
    put = await vault_stack.put(owner, "METADATA_ONLY", value)
    got = await secrets.GetSecret(
        secret_service_pb2.GetSecretRequest(name=put.name), metadata=owner.auth, timeout=10
    )
    listed = await secrets.ListSecrets(
        secret_service_pb2.ListSecretsRequest(), metadata=owner.auth, timeout=10
    )
    assert got == put and put.name == "secrets/METADATA_ONLY" and put.version == 1
    assert uuid.UUID(put.uid) and put.create_time == put.update_time
    for message in (put, got, listed):
        assert value not in message.SerializeToString()


async def test_check_and_set_refuses_a_stale_expected_version(vault_stack: VaultStack) -> None:
    """expected_version 0 means "create only"; a stale one is ABORTED with the newest."""
    owner, guard = vault_stack.owner, vault_stack.guard
    await vault_stack.put(owner, "CAS", guard.plant(), expected_version=0)
    info = await expect_error(
        vault_stack.put(owner, "CAS", guard.plant(), expected_version=0),
        grpc.StatusCode.ABORTED,
        "VERSION_MISMATCH",
    )
    assert info.metadata["current_version"] == "1"
    assert (await vault_stack.put(owner, "CAS", guard.plant(), expected_version=1)).version == 2
    await expect_error(
        vault_stack.put(owner, "CAS", guard.plant(), expected_version=1),
        grpc.StatusCode.ABORTED,
        "VERSION_MISMATCH",
    )
    await expect_error(
        vault_stack.put(owner, "CAS_NEW", guard.plant(), expected_version=3),
        grpc.StatusCode.ABORTED,
        "VERSION_MISMATCH",
    )


async def test_a_retried_put_returns_the_first_version(vault_stack: VaultStack) -> None:
    """The same request_id with the same value stores nothing new, even when raced."""
    owner = vault_stack.owner
    value = vault_stack.guard.plant()
    request_id = str(uuid.uuid4())
    results = await asyncio.gather(
        *(vault_stack.put(owner, "IDEMPOTENT", value, request_id=request_id) for _ in range(5))
    )
    assert {r.version for r in results} == {1}
    later = await vault_stack.put(owner, "IDEMPOTENT", vault_stack.guard.plant())
    assert later.version == 2
    again = await vault_stack.put(owner, "IDEMPOTENT", value, request_id=request_id)
    assert again.version == 1


async def test_a_request_id_reused_with_another_value_is_refused(vault_stack: VaultStack) -> None:
    """A different value under a used request_id is REQUEST_ID_REUSED."""
    owner = vault_stack.owner
    request_id = str(uuid.uuid4())
    await vault_stack.put(owner, "REUSED", vault_stack.guard.plant(), request_id=request_id)
    await expect_error(
        vault_stack.put(owner, "REUSED", vault_stack.guard.plant(), request_id=request_id),
        grpc.StatusCode.INVALID_ARGUMENT,
        "REQUEST_ID_REUSED",
    )


async def test_listing_pages_through_metadata_by_id(vault_stack: VaultStack) -> None:
    """Pages are ordered by id, disjoint, and end with an empty token."""
    client = await vault_stack.stack.new_workspace("Pages")
    ids = sorted(f"PAGE_{i:02d}" for i in range(7))
    for secret in ids:
        await vault_stack.put(client, secret, vault_stack.guard.plant())
    seen, token = [], ""
    while True:
        page = await vault_stack.secrets(client).ListSecrets(
            secret_service_pb2.ListSecretsRequest(page_size=3, page_token=token),
            metadata=client.auth,
            timeout=10,
        )
        seen.append([s.name for s in page.secrets])
        token = page.next_page_token
        if not token:
            break
    assert seen == [[f"secrets/{s}" for s in ids[i : i + 3]] for i in range(0, 7, 3)]


async def test_delete_destroys_every_version(vault_stack: VaultStack) -> None:
    """After DeleteSecret no version row is left, and every call on it is NOT_FOUND."""
    owner = vault_stack.owner
    for _ in range(3):
        put = await vault_stack.put(owner, "DOOMED", vault_stack.guard.plant())
    secrets = vault_stack.secrets(owner)
    await secrets.DeleteSecret(
        secret_service_pb2.DeleteSecretRequest(name="secrets/DOOMED"), metadata=owner.auth
    )
    conn = await asyncpg.connect(role_dsn(vault_stack.admin_dsn, "ap_vault"))
    try:
        left = await conn.fetchval(
            "SELECT count(*) FROM secret_versions WHERE secret_id = $1", uuid.UUID(put.uid)
        )
    finally:
        await conn.close()
    assert left == 0
    for call in (
        secrets.GetSecret(
            secret_service_pb2.GetSecretRequest(name="secrets/DOOMED"), metadata=owner.auth
        ),
        secrets.DeleteSecret(
            secret_service_pb2.DeleteSecretRequest(name="secrets/DOOMED"), metadata=owner.auth
        ),
        vault_stack.resolve(owner, "DOOMED"),
        vault_stack.resolve(owner, put.uid, version=1),
    ):
        await expect_error(call, grpc.StatusCode.NOT_FOUND, "NOT_FOUND")
    recreated = await vault_stack.put(owner, "DOOMED", vault_stack.guard.plant())
    assert recreated.version == 1 and recreated.uid != put.uid


async def test_a_secret_is_reachable_by_its_uid(vault_stack: VaultStack) -> None:
    """secrets/{uid} names the same secret for Get and for ResolveSecret."""
    owner = vault_stack.owner
    value = vault_stack.guard.plant()
    put = await vault_stack.put(owner, "BY_UID", value)
    got = await vault_stack.secrets(owner).GetSecret(
        secret_service_pb2.GetSecretRequest(name=f"secrets/{put.uid}"), metadata=owner.auth
    )
    assert got.name == "secrets/BY_UID"
    assert (await vault_stack.resolve(owner, put.uid)).value == value


async def test_a_version_that_does_not_exist_is_not_found(vault_stack: VaultStack) -> None:
    """A pinned version past the newest resolves to NOT_FOUND."""
    owner = vault_stack.owner
    await vault_stack.put(owner, "ONE_VERSION", vault_stack.guard.plant())
    await expect_error(
        vault_stack.resolve(owner, "ONE_VERSION", version=2),
        grpc.StatusCode.NOT_FOUND,
        "NOT_FOUND",
    )


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("secrets/", b"v", "INVALID_ARGUMENT"),
        ("secrets/1ABC", b"v", "INVALID_ARGUMENT"),
        ("secrets/has space", b"v", "INVALID_ARGUMENT"),
        ("secrets/" + "A" * 64, b"v", "INVALID_ARGUMENT"),
        ("sessions/x", b"v", "INVALID_ARGUMENT"),
        (f"secrets/{uuid.uuid4()}", b"v", "INVALID_ARGUMENT"),
        (f"secrets/{str(uuid.uuid4()).upper()}", b"v", "INVALID_ARGUMENT"),
        ("secrets/EMPTY", b"", "INVALID_ARGUMENT"),
        ("secrets/HUGE", b"x" * (64 * 1024 + 1), "LIMIT_EXCEEDED"),
    ],
)
async def test_malformed_puts_are_invalid_arguments(
    vault_stack: VaultStack, name: str, value: bytes, reason: str
) -> None:
    """Bad ids, uid-like ids, empty and oversized values are refused before storing."""
    owner = vault_stack.owner
    await expect_error(
        vault_stack.secrets(owner).PutSecret(
            secret_service_pb2.PutSecretRequest(name=name, value=value), metadata=owner.auth
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        reason,
    )


async def test_roles_decide_who_writes_and_who_reads(vault_stack: VaultStack) -> None:
    """Admins write; members read metadata only; viewers see nothing; only owners see keys."""
    stack = vault_stack.stack
    await vault_stack.put(vault_stack.owner, "ROLES", vault_stack.guard.plant())
    admin = await stack.new_workspace("Roles admin", role="admin")
    assert (await vault_stack.put(admin, "BY_ADMIN", vault_stack.guard.plant())).version == 1
    member = await stack.new_workspace("Roles member", role="member")
    viewer = await stack.new_workspace("Roles viewer", role="viewer")
    listed = await vault_stack.secrets(member).ListSecrets(
        secret_service_pb2.ListSecretsRequest(), metadata=member.auth
    )
    assert listed.secrets == []
    denied = grpc.StatusCode.PERMISSION_DENIED
    await expect_error(
        vault_stack.put(member, "NOPE", vault_stack.guard.plant()), denied, "PERMISSION_DENIED"
    )
    await expect_error(
        vault_stack.secrets(member).DeleteSecret(
            secret_service_pb2.DeleteSecretRequest(name="secrets/NOPE"), metadata=member.auth
        ),
        denied,
        "PERMISSION_DENIED",
    )
    await expect_error(
        vault_stack.secrets(viewer).ListSecrets(
            secret_service_pb2.ListSecretsRequest(), metadata=viewer.auth
        ),
        denied,
        "PERMISSION_DENIED",
    )
    keys = master_key_service_pb2_grpc.MasterKeyServiceStub(admin.channel)
    await expect_error(
        keys.GetMasterKeyStatus(
            master_key_service_pb2.GetMasterKeyStatusRequest(), metadata=admin.auth
        ),
        denied,
        "PERMISSION_DENIED",
    )


async def test_without_a_vault_secret_calls_are_unimplemented(stack: Stack) -> None:
    """A control plane with no AP_VAULT_ADDRESS says it stores no secrets."""
    await expect_error(
        vault_secrets(stack.owner).ListSecrets(
            secret_service_pb2.ListSecretsRequest(), metadata=stack.owner.auth
        ),
        grpc.StatusCode.UNIMPLEMENTED,
        "NOT_IMPLEMENTED",
    )


async def test_an_unreachable_vault_is_service_unavailable(stack: Stack) -> None:
    """When the vault does not answer, the caller gets a retryable SERVICE_UNAVAILABLE."""
    with_dead_vault = await start_control_plane(
        stack.admin_dsn,
        stack.internal_token,
        stack.control_plane.model,
        vault_address="127.0.0.1:1",
        vault_admin_token=SecretStr("unused"),
    )
    try:
        async with grpc.aio.insecure_channel(with_dead_vault.address) as channel:
            client = Client(channel, stack.owner.api_key, stack.owner.workspace)
            info = await expect_error(
                vault_secrets(client).ListSecrets(
                    secret_service_pb2.ListSecretsRequest(), metadata=client.auth, timeout=10
                ),
                grpc.StatusCode.UNAVAILABLE,
                "SERVICE_UNAVAILABLE",
            )
            assert info.metadata["service"] == "vault"
    finally:
        await with_dead_vault.stop()


def vault_secrets(client: Client) -> secret_service_pb2_grpc.SecretServiceAsyncStub:
    """Return a SecretService stub on a plain test client."""
    return secret_service_pb2_grpc.SecretServiceStub(client.channel)
