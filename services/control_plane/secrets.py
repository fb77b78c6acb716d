"""SecretService and MasterKeyService: public secret administration, forwarded to the vault.

The policy table (policy.py) has checked the caller's role. This module turns the public
name (`secrets/{secret}`, the workspace implied by the API key) into the vault's
(`workspaces/{w}/secrets/{secret}`) and calls the vault as the control plane's service
identity with the resolved principal. Values pass through on their way in and never come
back out.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
import structlog
from agentplatform.v1 import (
    master_key_pb2,
    master_key_service_pb2,
    master_key_service_pb2_grpc,
    secret_pb2,
    secret_service_pb2,
    secret_service_pb2_grpc,
)
from agentplatform.vault.v1 import vault_service_pb2 as vault_pb
from agentplatform.vault.v1 import vault_service_pb2_grpc
from google.protobuf import empty_pb2

from services.control_plane.auth import Principal
from services.control_plane.settings import ControlPlaneSettings
from services.rpc.errors import ApiError, Reason, not_found
from services.rpc.interceptors import current_principal
from services.rpc.internal_auth import InternalClient
from services.rpc.names import (
    parse_secret_name,
    parse_workspace_secret_name,
    secret_name,
    user_name,
    workspace_name,
    workspace_secret_name,
)
from services.rpc.server import ServiceBinding

Context = grpc.aio.ServicerContext[Any, Any]
T = TypeVar("T")

log = structlog.get_logger()

_VAULT_TIMEOUT_S = 10.0


class VaultClient(InternalClient["vault_service_pb2_grpc.VaultServiceAsyncStub"]):
    """A channel to the vault, authenticated as the control plane."""

    def __init__(self, settings: ControlPlaneSettings) -> None:
        """Open the channel (inside the running loop): mTLS if AP_TLS_* is set, else a token."""
        assert settings.vault_address is not None
        token = settings.vault_admin_token
        super().__init__(
            service="vault",
            address=settings.vault_address,
            tls=settings.service_tls(),
            token=token.get_secret_value() if token else None,
            needs="AP_VAULT_ADMIN_TOKEN",
            stub=vault_service_pb2_grpc.VaultServiceStub,
            timeout=_VAULT_TIMEOUT_S,
        )


def _vault(vault: VaultClient | None) -> VaultClient:
    if vault is None:
        raise ApiError(
            grpc.StatusCode.UNIMPLEMENTED,
            Reason.NOT_IMPLEMENTED,
            "This deployment has no vault configured (AP_VAULT_ADDRESS), so it stores no secrets.",
        )
    return vault


def _principal(principal: Principal) -> vault_pb.Principal:
    return vault_pb.Principal(
        workspace=workspace_name(principal.workspace_id),
        user=user_name(principal.user_id),
        role=principal.role,
    )


def _public_status(status: vault_pb.KeyStatus) -> master_key_pb2.MasterKeyStatus:
    return master_key_pb2.MasterKeyStatus(
        active_version=status.active_version,
        versions=status.versions,
        rewrap_running=status.rewrap_running,
    )


def _public(secret: vault_pb.Secret) -> secret_pb2.Secret:
    public = secret_pb2.Secret(
        name=secret_name(str(parse_workspace_secret_name(secret.name)[1])),
        uid=secret.uid,
        version=secret.version,
    )
    public.create_time.CopyFrom(secret.create_time)
    public.update_time.CopyFrom(secret.update_time)
    return public


class SecretService(secret_service_pb2_grpc.SecretServiceServicer):
    """Serve the caller's workspace's secrets: owners and admins write, members read."""

    def __init__(self, vault: VaultClient | None) -> None:
        self._vault = vault

    def _vault_name(self, principal: Principal, name: str) -> str:
        return workspace_secret_name(principal.workspace_id, str(parse_secret_name(name)))

    async def _call(self, name: str, method: Callable[..., Awaitable[T]], request: object) -> T:
        try:
            return await _vault(self._vault).call(method, request)
        except ApiError as err:
            if err.reason == Reason.NOT_FOUND:
                raise not_found(name) from None  # the public name, not the vault's
            raise

    async def GetSecret(
        self, request: secret_service_pb2.GetSecretRequest, context: Context
    ) -> secret_pb2.Secret:
        principal: Principal = current_principal()
        vault_request = vault_pb.GetSecretRequest(
            principal=_principal(principal), name=self._vault_name(principal, request.name)
        )
        vault = _vault(self._vault)
        return _public(await self._call(request.name, vault.stub.GetSecret, vault_request))

    async def ListSecrets(
        self, request: secret_service_pb2.ListSecretsRequest, context: Context
    ) -> secret_service_pb2.ListSecretsResponse:
        principal: Principal = current_principal()
        vault = _vault(self._vault)
        listed = await vault.call(
            vault.stub.ListSecrets,
            vault_pb.ListSecretsRequest(
                principal=_principal(principal),
                parent=workspace_name(principal.workspace_id),
                page_size=request.page_size,
                page_token=request.page_token,
            ),
        )
        return secret_service_pb2.ListSecretsResponse(
            secrets=[_public(s) for s in listed.secrets], next_page_token=listed.next_page_token
        )

    async def DeleteSecret(
        self, request: secret_service_pb2.DeleteSecretRequest, context: Context
    ) -> empty_pb2.Empty:
        principal: Principal = current_principal()
        vault_request = vault_pb.DeleteSecretRequest(
            principal=_principal(principal), name=self._vault_name(principal, request.name)
        )
        vault = _vault(self._vault)
        await self._call(request.name, vault.stub.DeleteSecret, vault_request)
        return empty_pb2.Empty()

    async def PutSecret(
        self, request: secret_service_pb2.PutSecretRequest, context: Context
    ) -> secret_pb2.Secret:
        principal: Principal = current_principal()
        vault_request = vault_pb.PutSecretRequest(
            principal=_principal(principal),
            name=self._vault_name(principal, request.name),
            value=request.value,
            request_id=request.request_id,
        )
        if request.HasField("expected_version"):
            vault_request.expected_version = request.expected_version
        vault = _vault(self._vault)
        return _public(await self._call(request.name, vault.stub.PutSecret, vault_request))


class MasterKeyService(master_key_service_pb2_grpc.MasterKeyServiceServicer):
    """Show and drive master-key rotation, for workspace owners."""

    def __init__(self, vault: VaultClient | None) -> None:
        self._vault = vault

    async def GetMasterKeyStatus(
        self, request: master_key_service_pb2.GetMasterKeyStatusRequest, context: Context
    ) -> master_key_pb2.MasterKeyStatus:
        vault = _vault(self._vault)
        return _public_status(
            await vault.call(vault.stub.GetKeyStatus, vault_pb.GetKeyStatusRequest())
        )

    async def RotateMasterKey(
        self, request: master_key_service_pb2.RotateMasterKeyRequest, context: Context
    ) -> master_key_pb2.MasterKeyStatus:
        principal: Principal = current_principal()
        vault = _vault(self._vault)
        return _public_status(
            await vault.call(
                vault.stub.RotateMasterKey,
                vault_pb.RotateMasterKeyRequest(principal=_principal(principal)),
            )
        )


def secret_bindings(vault: VaultClient | None) -> list[ServiceBinding]:
    """Return the public services that forward to the vault, for the control plane's server."""
    return [
        ServiceBinding(
            secret_service_pb2.DESCRIPTOR.services_by_name["SecretService"].full_name,
            lambda s: secret_service_pb2_grpc.add_SecretServiceServicer_to_server(
                SecretService(vault), s
            ),
        ),
        ServiceBinding(
            master_key_service_pb2.DESCRIPTOR.services_by_name["MasterKeyService"].full_name,
            lambda s: master_key_service_pb2_grpc.add_MasterKeyServiceServicer_to_server(
                MasterKeyService(vault), s
            ),
        ),
    ]
