"""Assemble the vault: its database pool and a gRPC server with health and reflection."""

from __future__ import annotations

from typing import Any, cast

import asyncpg
from agentplatform.vault.v1 import vault_service_pb2, vault_service_pb2_grpc
from pydantic import Field

from services.rpc.db import create_pool
from services.rpc.internal_auth import InternalTokenAuthenticator
from services.rpc.server import GrpcServer, ServiceBinding
from services.rpc.settings import ServiceSettings, SettingsError


class VaultSettings(ServiceSettings):
    """Settings of the vault (AP_* variables)."""

    grpc_port: int = Field(default=50053, ge=0, le=65535)


class Vault:
    """One vault process. Its RPCs answer UNIMPLEMENTED until their issue lands."""

    def __init__(self, settings: VaultSettings) -> None:
        if not settings.database_url:
            raise SettingsError("AP_DATABASE_URL is required by the vault")
        if settings.internal_token is None:
            raise SettingsError("AP_INTERNAL_TOKEN is required by the vault")
        self.settings = settings
        self._pool: asyncpg.Pool | None = None
        self._server = GrpcServer(
            host=settings.grpc_host,
            port=settings.grpc_port,
            authenticator=InternalTokenAuthenticator(settings.internal_token.get_secret_value()),
            max_message_bytes=settings.max_message_bytes,
            bindings=[
                ServiceBinding(
                    vault_service_pb2.DESCRIPTOR.services_by_name["VaultService"].full_name,
                    # The generated base class answers UNIMPLEMENTED for every method.
                    lambda s: vault_service_pb2_grpc.add_VaultServiceServicer_to_server(
                        cast(Any, vault_service_pb2_grpc.VaultServiceServicer)(), s
                    ),
                )
            ],
        )

    @property
    def address(self) -> str:
        """Return the gRPC address once started."""
        return self._server.address

    async def start(self) -> None:
        """Connect to Postgres and serve."""
        assert self.settings.database_url is not None
        self._pool = await create_pool(
            self.settings.database_url, min_size=1, max_size=4, application_name="ap-vault"
        )
        await self._server.start()

    async def stop(self) -> None:
        """Stop serving and disconnect."""
        await self._server.stop(self.settings.shutdown_grace_seconds)
        if self._pool is not None:
            await self._pool.close()
