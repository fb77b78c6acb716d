"""Assemble the vault: settings, master keys, pool, key check, re-wrap worker, gRPC server."""

from __future__ import annotations

import asyncpg
import structlog
from agentplatform.vault.v1 import vault_service_pb2, vault_service_pb2_grpc

from services.rpc.db import create_pool
from services.rpc.internal_auth import ServiceIdentifier
from services.rpc.server import GrpcServer, ServiceBinding
from services.rpc.settings import SettingsError
from services.vault.api import VaultApi
from services.vault.identity import VaultAuthenticator
from services.vault.keyring import Keyring, KeyringError, load_keyring_file, parse_keyring
from services.vault.rotation import Rotation, check_keyring
from services.vault.secrets import KeyHolder, Secrets
from services.vault.settings import VaultSettings

log = structlog.get_logger(service="vault")


def load_keyring(settings: VaultSettings) -> Keyring:
    """Load the master keys from the key file or AP_VAULT_MASTER_KEYS (exactly one)."""
    if (settings.vault_master_key_file is None) == (settings.vault_master_keys is None):
        raise SettingsError(
            "the vault needs its master keys: set exactly one of AP_VAULT_MASTER_KEY_FILE "
            "and AP_VAULT_MASTER_KEYS"
        )
    try:
        if settings.vault_master_key_file is not None:
            return load_keyring_file(settings.vault_master_key_file)
        assert settings.vault_master_keys is not None
        return parse_keyring(settings.vault_master_keys.get_secret_value(), "AP_VAULT_MASTER_KEYS")
    except KeyringError as err:
        raise SettingsError(f"vault: {err}") from None


def service_identifier(settings: VaultSettings) -> ServiceIdentifier:
    """Identify callers by mTLS certificate, or by the two vault tokens when TLS is off."""
    tokens = {
        service: token.get_secret_value()
        for service, token in (
            ("control_plane", settings.vault_admin_token),
            ("gateway", settings.vault_resolve_token),
        )
        if token is not None
    }
    if settings.tls_cert_file is not None:
        if tokens:
            raise SettingsError(
                "the vault identifies callers by certificate when AP_TLS_* is set; "
                "unset AP_VAULT_ADMIN_TOKEN and AP_VAULT_RESOLVE_TOKEN"
            )
        return ServiceIdentifier(mtls=True)
    if len(tokens) != 2 or len(set(tokens.values())) != 2:
        raise SettingsError(
            "without mTLS (AP_TLS_*), the vault needs AP_VAULT_ADMIN_TOKEN and "
            "AP_VAULT_RESOLVE_TOKEN, two different tokens"
        )
    return ServiceIdentifier(mtls=False, tokens=tokens)


class Vault:
    """One vault process."""

    def __init__(self, settings: VaultSettings) -> None:
        if not settings.database_url:
            raise SettingsError("AP_DATABASE_URL is required by the vault")
        self.settings = settings
        self.keys = KeyHolder(load_keyring(settings))
        self._identifier = service_identifier(settings)
        self._tls = settings.service_tls()
        self._pool: asyncpg.Pool | None = None
        self._server: GrpcServer | None = None
        self._rotation: Rotation | None = None

    @property
    def address(self) -> str:
        """Return the gRPC address once started."""
        assert self._server is not None
        return self._server.address

    @property
    def rotation(self) -> Rotation:
        """Return the rotation and re-wrap worker once started."""
        assert self._rotation is not None
        return self._rotation

    async def start(self) -> None:
        """Check the master keys against the database, then serve and resume any re-wrap."""
        settings = self.settings
        assert settings.database_url is not None
        pool = await create_pool(
            settings.database_url,
            min_size=settings.db_pool_min,
            max_size=settings.db_pool_max,
            application_name="ap-vault",
        )
        self._pool = pool
        try:
            async with pool.acquire() as conn:
                await check_keyring(conn, self.keys.keyring)
        except KeyringError as err:
            await pool.close()
            log.error("vault_refused_to_start", error=str(err))
            raise SettingsError(f"vault: {err}") from None
        secrets = Secrets(pool, self.keys, max_value_bytes=settings.vault_max_secret_bytes)
        rotation = Rotation(pool, self.keys, batch_size=settings.vault_rewrap_batch_size)
        self._rotation = rotation
        self._server = GrpcServer(
            host=settings.grpc_host,
            port=settings.grpc_port,
            authenticator=VaultAuthenticator(self._identifier),
            max_message_bytes=settings.max_message_bytes,
            credentials=self._tls.server_credentials() if self._tls else None,
            quiet_methods={"/agentplatform.vault.v1.VaultService/ResolveSecret"},
            bindings=[
                ServiceBinding(
                    vault_service_pb2.DESCRIPTOR.services_by_name["VaultService"].full_name,
                    lambda s: vault_service_pb2_grpc.add_VaultServiceServicer_to_server(
                        VaultApi(secrets, rotation), s
                    ),
                )
            ],
        )
        await self._server.start()
        rotation.start()
        log.info(
            "vault_listening",
            address=self.address,
            identity="mtls" if self._tls else "tokens",
            master_key_versions=self.keys.keyring.versions,
            active_version=self.keys.keyring.active_version,
        )

    async def stop(self) -> None:
        """Stop serving and the re-wrap worker, then disconnect."""
        if self._server is not None:
            await self._server.stop(self.settings.shutdown_grace_seconds)
        if self._rotation is not None:
            await self._rotation.stop()
        if self._pool is not None:
            await self._pool.close()
