"""VaultService: the vault's internal gRPC API, translating protos to the domain and back."""

from __future__ import annotations

import uuid
from typing import Any

import grpc
from agentplatform.v1 import master_key_pb2
from agentplatform.vault.v1 import vault_service_pb2 as pb
from agentplatform.vault.v1 import vault_service_pb2_grpc
from google.protobuf import empty_pb2

from services.rpc import validate
from services.rpc.errors import not_found
from services.rpc.interceptors import current_principal
from services.rpc.names import (
    SecretRef,
    parse_workspace_name,
    parse_workspace_secret_name,
    workspace_name,
    workspace_secret_name,
)
from services.rpc.pagination import NAME, Page
from services.vault.identity import Caller
from services.vault.rotation import KeyStatus, Rotation
from services.vault.secrets import Actor, SecretMeta, Secrets, parse_actor

Context = grpc.aio.ServicerContext[Any, Any]

_STATES = {
    "active": master_key_pb2.MasterKeyVersion.ACTIVE,
    "decrypt_only": master_key_pb2.MasterKeyVersion.DECRYPT_ONLY,
    "retired": master_key_pb2.MasterKeyVersion.RETIRED,
}


def _actor(principal: pb.Principal) -> Actor:
    return parse_actor(principal.workspace, principal.user, principal.role)


def _secret_proto(meta: SecretMeta) -> pb.Secret:
    secret = pb.Secret(
        name=workspace_secret_name(meta.workspace_id, meta.secret_id),
        uid=str(meta.uid),
        version=meta.version,
    )
    secret.create_time.FromDatetime(meta.create_time)
    secret.update_time.FromDatetime(meta.update_time)
    return secret


def _status_proto(status: KeyStatus) -> pb.KeyStatus:
    proto = pb.KeyStatus(
        active_version=status.active_version,
        available_versions=[v.version for v in status.versions if v.in_key_file],
        wrapped_key_counts={v.version: v.data_key_count for v in status.versions},
        rewrap_running=status.rewrap_running,
    )
    for version in status.versions:
        item = proto.versions.add(
            version=version.version,
            state=_STATES[version.state],
            data_key_count=version.data_key_count,
            in_key_file=version.in_key_file,
        )
        item.create_time.FromDatetime(version.create_time)
        if version.retire_time is not None:
            item.retire_time.FromDatetime(version.retire_time)
    return proto


class VaultApi(vault_service_pb2_grpc.VaultServiceServicer):
    """Serve secret administration to the control plane and resolution to the gateway."""

    def __init__(self, secrets: Secrets, rotation: Rotation) -> None:
        self._secrets = secrets
        self._rotation = rotation

    @staticmethod
    def _own(actor: Actor, name: str) -> tuple[uuid.UUID, SecretRef]:
        workspace_id, ref = parse_workspace_secret_name(name)
        if workspace_id != actor.workspace_id:
            raise not_found(name)
        return workspace_id, ref

    async def GetSecret(self, request: pb.GetSecretRequest, context: Context) -> pb.Secret:
        actor = _actor(request.principal)
        workspace_id, ref = self._own(actor, request.name)
        meta = await self._secrets.get(workspace_id, ref)
        if meta is None:
            raise not_found(request.name)
        return _secret_proto(meta)

    async def ListSecrets(
        self, request: pb.ListSecretsRequest, context: Context
    ) -> pb.ListSecretsResponse:
        actor = _actor(request.principal)
        workspace_id = parse_workspace_name(request.parent, "parent")
        if workspace_id != actor.workspace_id:
            raise not_found(request.parent)
        page = Page.of(
            request, f"secrets:{workspace_name(workspace_id)}", NAME, default=100, maximum=1000
        )
        metas = await self._secrets.list(workspace_id, after=page.after, limit=page.fetch)
        shown, token = page.cut(metas, lambda m: m.secret_id)
        return pb.ListSecretsResponse(
            secrets=[_secret_proto(m) for m in shown], next_page_token=token
        )

    async def DeleteSecret(
        self, request: pb.DeleteSecretRequest, context: Context
    ) -> empty_pb2.Empty:
        actor = _actor(request.principal)
        _, ref = self._own(actor, request.name)
        if not await self._secrets.delete(actor, ref):
            raise not_found(request.name)
        return empty_pb2.Empty()

    async def PutSecret(self, request: pb.PutSecretRequest, context: Context) -> pb.Secret:
        actor = _actor(request.principal)
        _, ref = self._own(actor, request.name)
        meta = await self._secrets.put(
            actor,
            ref,
            request.value,
            expected_version=(
                request.expected_version if request.HasField("expected_version") else None
            ),
            request_id=validate.request_id(request.request_id),
        )
        return _secret_proto(meta)

    async def ResolveSecret(
        self, request: pb.ResolveSecretRequest, context: Context
    ) -> pb.ResolveSecretResponse:
        caller: Caller = current_principal()
        resolved = await self._secrets.resolve(
            caller.service, request.name, request.version, request.run
        )
        return pb.ResolveSecretResponse(value=resolved.value, version=resolved.version)

    async def GetKeyStatus(self, request: pb.GetKeyStatusRequest, context: Context) -> pb.KeyStatus:
        return _status_proto(await self._rotation.status())

    async def RotateMasterKey(
        self, request: pb.RotateMasterKeyRequest, context: Context
    ) -> pb.KeyStatus:
        await self._rotation.rotate(_actor(request.principal))
        return _status_proto(await self._rotation.status())
