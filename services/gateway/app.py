"""Assemble the gateway: its database pool and a gRPC server with health and reflection."""

from __future__ import annotations

from typing import Any, cast

import asyncpg
from agentplatform.gateway.v1 import gateway_service_pb2, gateway_service_pb2_grpc
from pydantic import Field

from services.rpc.db import create_pool
from services.rpc.internal_auth import InternalTokenAuthenticator
from services.rpc.server import GrpcServer, ServiceBinding
from services.rpc.settings import ServiceSettings, SettingsError


class GatewaySettings(ServiceSettings):
    """Settings of the gateway (AP_* variables)."""

    grpc_port: int = Field(default=50054, ge=0, le=65535)


class Gateway:
    """One gateway process. Its RPCs answer UNIMPLEMENTED until their issue lands."""

    def __init__(self, settings: GatewaySettings) -> None:
        if not settings.database_url:
            raise SettingsError("AP_DATABASE_URL is required by the gateway")
        if settings.internal_token is None:
            raise SettingsError("AP_INTERNAL_TOKEN is required by the gateway")
        self.settings = settings
        self._pool: asyncpg.Pool | None = None
        self._server = GrpcServer(
            host=settings.grpc_host,
            port=settings.grpc_port,
            authenticator=InternalTokenAuthenticator(settings.internal_token.get_secret_value()),
            max_message_bytes=settings.max_message_bytes,
            bindings=[
                ServiceBinding(
                    gateway_service_pb2.DESCRIPTOR.services_by_name["GatewayService"].full_name,
                    # The generated base class answers UNIMPLEMENTED for every method.
                    lambda s: gateway_service_pb2_grpc.add_GatewayServiceServicer_to_server(
                        cast(Any, gateway_service_pb2_grpc.GatewayServiceServicer)(), s
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
            self.settings.database_url, min_size=1, max_size=4, application_name="ap-gateway"
        )
        await self._server.start()

    async def stop(self) -> None:
        """Stop serving and disconnect."""
        await self._server.stop(self.settings.shutdown_grace_seconds)
        if self._pool is not None:
            await self._pool.close()
