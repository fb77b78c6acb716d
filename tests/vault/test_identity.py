"""Who may call the vault, in both identity modes, and what another workspace can see."""

from __future__ import annotations

from collections.abc import Awaitable

import grpc
import pytest
from agentplatform.v1 import secret_service_pb2
from agentplatform.vault.v1 import vault_service_pb2, vault_service_pb2_grpc

from services.rpc.internal_auth import INTERNAL_TOKEN_HEADER
from tests.harness import expect_error
from tests.vault.helpers import RUN, VaultStack

MODES = ["vault_stack", "token_vault_stack"]


@pytest.fixture(params=MODES)
def any_vault(request: pytest.FixtureRequest) -> VaultStack:
    """Run each test against the mTLS vault and the token vault."""
    running: VaultStack = request.getfixturevalue(request.param)
    return running


async def expect_handshake_refused(call: Awaitable[object]) -> None:
    """Await a call that the TLS handshake must stop before any RPC runs."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def resolve_request(vault: VaultStack, secret: str) -> vault_service_pb2.ResolveSecretRequest:
    """Build a ResolveSecret request for the owner's workspace."""
    return vault_service_pb2.ResolveSecretRequest(
        name=f"{vault.owner.workspace}/secrets/{secret}", run=RUN
    )


async def test_only_the_gateway_resolves(any_vault: VaultStack) -> None:
    """The control plane's and the worker's identities are refused, and audited as denied."""
    await any_vault.put(any_vault.owner, "GATEWAY_ONLY", any_vault.guard.plant())
    assert (await any_vault.resolve(any_vault.owner, "GATEWAY_ONLY")).version == 1
    await expect_error(
        any_vault.resolve(any_vault.owner, "GATEWAY_ONLY", service="control_plane"),
        grpc.StatusCode.PERMISSION_DENIED,
        "SERVICE_NOT_ALLOWED",
    )
    worker_refusal = (
        (grpc.StatusCode.PERMISSION_DENIED, "SERVICE_NOT_ALLOWED")
        if any_vault.identities.mtls
        else (grpc.StatusCode.UNAUTHENTICATED, "SERVICE_IDENTITY_REQUIRED")
    )
    await expect_error(
        any_vault.resolve(any_vault.owner, "GATEWAY_ONLY", service="worker"), *worker_refusal
    )
    audit = await any_vault.audit(operation="resolve", secret_name="GATEWAY_ONLY")
    assert [(r["actor_service"], r["outcome"]) for r in audit] == [
        ("gateway", "ok"),
        ("control_plane", "denied"),
        ("worker" if any_vault.identities.mtls else "unidentified", "denied"),
    ]
    assert all(r["run"] == RUN for r in audit)


async def test_administration_is_for_the_control_plane_only(any_vault: VaultStack) -> None:
    """The gateway and the worker cannot list or store secrets on the vault."""
    owner = any_vault.owner
    request = vault_service_pb2.ListSecretsRequest(
        principal=vault_service_pb2.Principal(
            workspace=owner.workspace, user="users/" + owner.workspace.split("/")[1], role="owner"
        ),
        parent=owner.workspace,
    )
    stub, metadata = any_vault.vault_stub("gateway")
    await expect_error(
        stub.ListSecrets(request, metadata=metadata, timeout=10),
        grpc.StatusCode.PERMISSION_DENIED,
        "SERVICE_NOT_ALLOWED",
    )
    stub, metadata = any_vault.vault_stub("worker")
    await expect_error(
        stub.ListSecrets(request, metadata=metadata, timeout=10),
        *(
            (grpc.StatusCode.PERMISSION_DENIED, "SERVICE_NOT_ALLOWED")
            if any_vault.identities.mtls
            else (grpc.StatusCode.UNAUTHENTICATED, "SERVICE_IDENTITY_REQUIRED")
        ),
    )
    stub, metadata = any_vault.vault_stub("control_plane")
    listed = await stub.ListSecrets(request, metadata=metadata, timeout=10)
    assert listed is not None


async def test_a_user_api_key_opens_nothing_on_the_vault(token_vault_stack: VaultStack) -> None:
    """Without TLS, an API key is not a service identity: resolve and admin are refused."""
    vault = token_vault_stack
    await vault.put(vault.owner, "NO_USERS", vault.guard.plant())
    async with grpc.aio.insecure_channel(vault.vault.address) as channel:
        stub = vault_service_pb2_grpc.VaultServiceStub(channel)
        for metadata in (
            vault.owner.auth,
            ((INTERNAL_TOKEN_HEADER, "not-a-token"),),
            ((INTERNAL_TOKEN_HEADER, vault.stack.internal_token),),
            (),
        ):
            await expect_error(
                stub.ResolveSecret(resolve_request(vault, "NO_USERS"), metadata=metadata),
                grpc.StatusCode.UNAUTHENTICATED,
                "SERVICE_IDENTITY_REQUIRED",
            )
            await expect_error(
                stub.GetKeyStatus(vault_service_pb2.GetKeyStatusRequest(), metadata=metadata),
                grpc.StatusCode.UNAUTHENTICATED,
                "SERVICE_IDENTITY_REQUIRED",
            )
    audit = await vault.audit(operation="resolve", secret_name="NO_USERS")
    assert {(r["actor_service"], r["outcome"]) for r in audit} == {("unidentified", "denied")}


async def test_mtls_refuses_unknown_and_missing_certificates(vault_stack: VaultStack) -> None:
    """A certificate from another CA, or none at all with an API key, cannot even connect."""
    vault = vault_stack
    await vault.put(vault.owner, "CERTS_ONLY", vault.guard.plant())
    rogue, _ = vault.vault_stub("gateway", rogue=True)
    await expect_handshake_refused(
        rogue.ResolveSecret(resolve_request(vault, "CERTS_ONLY"), timeout=10)
    )
    assert vault.identities.pki is not None
    no_client_cert = grpc.ssl_channel_credentials(vault.identities.pki.ca_file.read_bytes())
    async with grpc.aio.secure_channel(vault.vault.address, no_client_cert) as channel:
        stub = vault_service_pb2_grpc.VaultServiceStub(channel)
        await expect_handshake_refused(
            stub.ResolveSecret(
                resolve_request(vault, "CERTS_ONLY"), metadata=vault.owner.auth, timeout=10
            )
        )
    async with grpc.aio.insecure_channel(vault.vault.address) as plain:
        stub = vault_service_pb2_grpc.VaultServiceStub(plain)
        await expect_handshake_refused(
            stub.ResolveSecret(
                resolve_request(vault, "CERTS_ONLY"), metadata=vault.owner.auth, timeout=10
            )
        )
    assert await vault.audit(operation="resolve", secret_name="CERTS_ONLY") == []


async def test_another_workspaces_secret_is_not_found_by_name_or_uid(
    vault_stack: VaultStack,
) -> None:
    """Get, put, delete and resolve of workspace A's secret from workspace B are NOT_FOUND."""
    vault = vault_stack
    value = vault.guard.plant()
    mine = await vault.put(vault.owner, "PRIVATE", value)
    stranger = await vault.stack.new_workspace("Stranger")
    secrets = vault.secrets(stranger)
    for name in ("secrets/PRIVATE", f"secrets/{mine.uid}"):
        await expect_error(
            secrets.GetSecret(
                secret_service_pb2.GetSecretRequest(name=name), metadata=stranger.auth
            ),
            grpc.StatusCode.NOT_FOUND,
            "NOT_FOUND",
        )
        await expect_error(
            secrets.DeleteSecret(
                secret_service_pb2.DeleteSecretRequest(name=name), metadata=stranger.auth
            ),
            grpc.StatusCode.NOT_FOUND,
            "NOT_FOUND",
        )
    for ref in ("PRIVATE", mine.uid):
        await expect_error(vault.resolve(stranger, ref), grpc.StatusCode.NOT_FOUND, "NOT_FOUND")
    await expect_error(
        vault.put(stranger, "PRIVATE", vault.guard.plant(), expected_version=1),
        grpc.StatusCode.ABORTED,
        "VERSION_MISMATCH",
    )
    listed = await secrets.ListSecrets(
        secret_service_pb2.ListSecretsRequest(), metadata=stranger.auth
    )
    assert [s.name for s in listed.secrets] == []
    # The stranger's failed put created nothing; the owner's secret is untouched.
    assert (await vault.resolve(vault.owner, "PRIVATE")).value == value
    outcomes = [r["outcome"] for r in await vault.audit(operation="resolve")]
    assert outcomes.count("not_found") >= 2


async def test_the_vault_refuses_a_name_outside_the_principals_workspace(
    vault_stack: VaultStack,
) -> None:
    """Even the control plane cannot ask for one workspace's secret as another's principal."""
    vault = vault_stack
    await vault.put(vault.owner, "SCOPED", vault.guard.plant())
    stranger = await vault.stack.new_workspace("Scoped stranger")
    stub, metadata = vault.vault_stub("control_plane")
    await expect_error(
        stub.GetSecret(
            vault_service_pb2.GetSecretRequest(
                principal=vault_service_pb2.Principal(
                    workspace=stranger.workspace,
                    user="users/00000000-0000-0000-0000-000000000001",
                    role="owner",
                ),
                name=f"{vault.owner.workspace}/secrets/SCOPED",
            ),
            metadata=metadata,
            timeout=10,
        ),
        grpc.StatusCode.NOT_FOUND,
        "NOT_FOUND",
    )
