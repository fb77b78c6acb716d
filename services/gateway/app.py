"""Assemble the gateway: identity, database pool, vault channel, guarded HTTP clients, server."""

from __future__ import annotations

import uuid

import asyncpg
import grpc
import httpx
import structlog
from agentplatform.gateway.v1 import gateway_service_pb2, gateway_service_pb2_grpc
from agentplatform.vault.v1 import vault_service_pb2, vault_service_pb2_grpc

from services.gateway.api import GatewayApi
from services.gateway.calls import CredentialError, Limits, ToolCaller
from services.gateway.identity import GatewayAuthenticator
from services.gateway.settings import GatewaySettings
from services.gateway.ssrf import Allowlist, Guard, GuardedTransport, Resolver, system_resolve
from services.rpc.db import create_pool
from services.rpc.errors import reason_of
from services.rpc.internal_auth import ServiceIdentifier, internal_channel
from services.rpc.names import workspace_name
from services.rpc.server import GrpcServer, ServiceBinding
from services.rpc.settings import SettingsError

__all__ = ["Gateway", "GatewaySettings"]

log = structlog.get_logger(service="gateway")


def service_identifier(settings: GatewaySettings) -> ServiceIdentifier:
    """Identify callers by mTLS certificate, or by the two gateway tokens when TLS is off."""
    tokens = {
        service: token.get_secret_value()
        for service, token in (
            ("control_plane", settings.gateway_admin_token),
            ("worker", settings.gateway_call_token),
        )
        if token is not None
    }
    if settings.tls_cert_file is not None:
        if tokens:
            raise SettingsError(
                "the gateway identifies callers by certificate when AP_TLS_* is set; "
                "unset AP_GATEWAY_ADMIN_TOKEN and AP_GATEWAY_CALL_TOKEN"
            )
        return ServiceIdentifier(mtls=True)
    if len(tokens) != 2 or len(set(tokens.values())) != 2:
        raise SettingsError(
            "without mTLS (AP_TLS_*), the gateway needs AP_GATEWAY_ADMIN_TOKEN and "
            "AP_GATEWAY_CALL_TOKEN, two different tokens"
        )
    return ServiceIdentifier(mtls=False, tokens=tokens)


class VaultResolver:
    """Resolve credentials from the vault as the gateway's identity."""

    def __init__(self, settings: GatewaySettings) -> None:
        self._channel: grpc.aio.Channel | None = None
        if settings.vault_address is None:
            return
        token = settings.vault_resolve_token
        self._channel, self._metadata = internal_channel(
            settings.vault_address,
            settings.service_tls(),
            token.get_secret_value() if token else None,
            needs="AP_VAULT_RESOLVE_TOKEN",
        )
        self._stub = vault_service_pb2_grpc.VaultServiceStub(self._channel)

    async def __call__(self, workspace_id: uuid.UUID, secret: str, run: str) -> bytes:
        """Return the newest value of a workspace's secret; CredentialError when unavailable."""
        if self._channel is None:
            raise CredentialError("This deployment has no vault, so tools cannot use credentials.")
        try:
            response = await self._stub.ResolveSecret(
                vault_service_pb2.ResolveSecretRequest(
                    name=f"{workspace_name(workspace_id)}/secrets/{secret}", run=run
                ),
                metadata=self._metadata,
                timeout=10,
            )
        except grpc.aio.AioRpcError as err:
            reason = reason_of(err) or err.code().name
            if reason == "NOT_FOUND":
                raise CredentialError(f"The secret {secret!r} does not exist.") from None
            log.warning("credential_resolve_failed", secret=secret, reason=reason)
            raise CredentialError(f"The credential could not be resolved ({reason}).") from None
        return response.value

    async def close(self) -> None:
        """Close the channel."""
        if self._channel is not None:
            await self._channel.close(None)


def guarded_client(guard: Guard, **options: object) -> httpx.AsyncClient:
    """Return an httpx client that dials only vetted addresses, ignores proxy variables and
    follows no redirects (a credential must never reach a second origin)."""
    return httpx.AsyncClient(
        transport=GuardedTransport(guard),
        trust_env=False,
        follow_redirects=False,
        **options,  # type: ignore[arg-type]
    )


class Gateway:
    """One gateway process."""

    def __init__(self, settings: GatewaySettings, resolve: Resolver = system_resolve) -> None:
        if not settings.database_url:
            raise SettingsError("AP_DATABASE_URL is required by the gateway")
        self.settings = settings
        try:
            allowlist = Allowlist.parse(settings.allowlist_entries)
        except ValueError as err:
            raise SettingsError(f"AP_GATEWAY_ALLOWLIST: {err}") from None
        self.guard = Guard(allowlist, resolve)
        self._identifier = service_identifier(settings)
        self._tls = settings.service_tls()
        self._pool: asyncpg.Pool | None = None
        self._server: GrpcServer | None = None
        self._vault: VaultResolver | None = None
        self._clients: list[httpx.AsyncClient] = []

    @property
    def address(self) -> str:
        """Return the gRPC address once started."""
        assert self._server is not None
        return self._server.address

    async def start(self) -> None:
        """Connect to Postgres and the vault, and serve."""
        settings = self.settings
        assert settings.database_url is not None
        self._pool = pool = await create_pool(
            settings.database_url,
            min_size=settings.db_pool_min,
            max_size=settings.db_pool_max,
            application_name="ap-gateway",
        )
        self._vault = VaultResolver(settings)
        http = guarded_client(self.guard, limits=httpx.Limits(max_connections=256))
        # MCP responses arrive as JSON or SSE that the SDK decodes; identity encoding keeps
        # a compressed body from expanding past what the server sent.
        mcp_http = guarded_client(
            self.guard,
            headers={"accept-encoding": "identity"},
            timeout=httpx.Timeout(settings.gateway_max_timeout_seconds),
        )
        self._clients = [http, mcp_http]
        caller = ToolCaller(
            pool,
            http,
            mcp_http,
            self._vault,
            Limits(
                default_timeout=settings.gateway_default_timeout_seconds,
                max_timeout=settings.gateway_max_timeout_seconds,
                max_response_bytes=settings.gateway_max_response_bytes,
                max_concurrent_calls=settings.gateway_max_concurrent_calls,
            ),
        )
        api = GatewayApi(pool, self.guard, caller, mcp_http)
        self._server = GrpcServer(
            host=settings.grpc_host,
            port=settings.grpc_port,
            authenticator=GatewayAuthenticator(self._identifier),
            max_message_bytes=settings.max_message_bytes,
            credentials=self._tls.server_credentials() if self._tls else None,
            # Every run lists its tools: an info line per run would cost more than the call.
            quiet_methods={
                "/agentplatform.gateway.v1.GatewayService/CallTool",
                "/agentplatform.gateway.v1.GatewayService/ListRunTools",
            },
            bindings=[
                ServiceBinding(
                    gateway_service_pb2.DESCRIPTOR.services_by_name["GatewayService"].full_name,
                    lambda s: gateway_service_pb2_grpc.add_GatewayServiceServicer_to_server(api, s),
                )
            ],
        )
        await self._server.start()
        log.info(
            "gateway_listening",
            address=self.address,
            identity="mtls" if self._tls else "tokens",
            allowlist=settings.allowlist_entries,
        )

    async def stop(self) -> None:
        """Stop serving, then close the clients and disconnect."""
        if self._server is not None:
            await self._server.stop(self.settings.shutdown_grace_seconds)
        for client in self._clients:
            await client.aclose()
        if self._vault is not None:
            await self._vault.close()
        if self._pool is not None:
            await self._pool.close()
