"""A vault next to the test control plane, service identities to call it with, a leak guard."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import logging
import secrets
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import structlog
from agentplatform.v1 import secret_pb2, secret_service_pb2, secret_service_pb2_grpc
from agentplatform.vault.v1 import vault_service_pb2, vault_service_pb2_grpc

from devtools.pki import DevPki
from services.rpc.db import role_dsn
from services.rpc.internal_auth import INTERNAL_TOKEN_HEADER
from services.rpc.logging import configure_logging
from services.rpc.tls import ServiceTls
from services.vault.app import Vault
from services.vault.keyring import Keyring, load_keyring_file, new_keyring_file
from services.vault.settings import VaultSettings
from tests.harness import Client, Stack, start_stack

SERVICES = ("control_plane", "gateway", "worker", "vault")
RUN = f"sessions/{uuid.uuid4()}/runs/{uuid.uuid4()}"


@dataclass(frozen=True)
class Identities:
    """How callers prove a service identity to the vault: mTLS certificates or tokens."""

    pki: DevPki | None
    rogue: DevPki | None
    tokens: dict[str, str]

    @property
    def mtls(self) -> bool:
        """Say whether the vault identifies callers by certificate."""
        return self.pki is not None

    def vault_settings(self) -> dict[str, Any]:
        """Return the vault's identity settings."""
        if self.pki is not None:
            return _tls_settings(self.pki, "vault")
        return {
            "vault_admin_token": self.tokens["control_plane"],
            "vault_resolve_token": self.tokens["gateway"],
        }

    def control_plane_settings(self) -> dict[str, Any]:
        """Return the control plane's settings for calling the vault."""
        if self.pki is not None:
            return _tls_settings(self.pki, "control_plane")
        return {"vault_admin_token": self.tokens["control_plane"]}

    def channel(
        self, address: str, service: str, *, rogue: bool = False
    ) -> tuple[grpc.aio.Channel, tuple[tuple[str, str], ...]]:
        """Open a channel to the vault as `service`, with the metadata its calls carry."""
        pki = self.rogue if rogue else self.pki
        if pki is None:
            token = self.tokens.get(service, "")
            return grpc.aio.insecure_channel(address), ((INTERNAL_TOKEN_HEADER, token),)
        cert = pki.services[service]
        tls = ServiceTls.load(
            (self.pki or pki).ca_file, cert.cert_file, cert.key_file
        )  # a rogue client still trusts the real server
        return grpc.aio.secure_channel(address, tls.channel_credentials()), ()


def _tls_settings(pki: DevPki, service: str) -> dict[str, Any]:
    issued = pki.services[service]
    return {
        "tls_ca_file": pki.ca_file,
        "tls_cert_file": issued.cert_file,
        "tls_key_file": issued.key_file,
    }


def token_identities(worker_token: str) -> Identities:
    """Return token identities: the vault's two tokens, and the worker's dispatch token."""
    return Identities(
        None,
        None,
        {
            "control_plane": secrets.token_urlsafe(24),
            "gateway": secrets.token_urlsafe(24),
            "worker": worker_token,
        },
    )


class LeakGuard:
    """Plant secret values, capture every log line, and find any trace of the values.

    A trace is the value or any common encoding of it (base64, hex, URL, JSON, repr).
    """

    def __init__(self) -> None:
        self.planted: list[bytes] = []
        self._buffer = io.StringIO()

    def plant(self, label: str = "secret") -> bytes:
        """Return a fresh value whose encodings all differ from its plain form."""
        value = f"{label}-{secrets.token_hex(12)} /+=&?é".encode()
        self.planted.append(value)
        return value

    @contextlib.contextmanager
    def capturing(self) -> Iterator[None]:
        """Send every structlog and stdlib log record, debug and up, to the guard."""
        saved = structlog.get_config()
        configure_logging(level="debug", fmt="json")
        structlog.configure(logger_factory=structlog.PrintLoggerFactory(self._buffer))
        handler = logging.StreamHandler(self._buffer)
        root = logging.getLogger()
        saved_level = root.level
        root.addHandler(handler)
        root.setLevel(logging.DEBUG)
        try:
            yield
        finally:
            root.removeHandler(handler)
            root.setLevel(saved_level)
            structlog.configure(**saved)

    @property
    def log_text(self) -> str:
        """Return everything captured so far."""
        return self._buffer.getvalue()

    @staticmethod
    def traces(value: bytes) -> set[str]:
        """Return the forms of a value to look for."""
        text = value.decode()
        b64 = base64.b64encode(value).decode().rstrip("=")
        forms = {
            text,
            b64,
            base64.urlsafe_b64encode(value).decode().rstrip("="),
            value.hex(),
            value.hex().upper(),
            urllib.parse.quote(text, safe=""),
            urllib.parse.quote_plus(text),
            json.dumps(text)[1:-1],
            repr(value)[2:-1],
        }
        # The value's core alone, in case a log or a column truncated it.
        forms.add(text.split(" ")[0])
        return forms

    def find_in(self, haystack: str) -> list[str]:
        """Return the traces of planted values found in `haystack`."""
        return sorted(
            {trace for value in self.planted for trace in self.traces(value) if trace in haystack}
        )

    async def dump(self, admin_dsn: str) -> str:
        """Dump every row of every table of every schema of the test database, as text."""
        conn = await asyncpg.connect(admin_dsn)
        try:
            tables = await conn.fetch(
                "SELECT table_schema, table_name FROM information_schema.tables"
                " WHERE table_type = 'BASE TABLE'"
                "  AND table_schema NOT IN ('pg_catalog', 'information_schema')"
            )
            out: list[str] = []
            for table in tables:
                ident = f'"{table["table_schema"]}"."{table["table_name"]}"'
                rows = await conn.fetch(f"SELECT t::text AS row FROM {ident} t")
                out.extend(f"{ident} {r['row']}" for r in rows)
            return "\n".join(out)
        finally:
            await conn.close()

    async def check(self, admin_dsn: str) -> None:
        """Fail if a planted value left a trace in the logs or the database."""
        assert self.planted, "the leak check needs planted values"
        in_logs = self.find_in(self.log_text)
        assert not in_logs, f"planted secret values appear in the logs: {in_logs}"
        in_tables = self.find_in(await self.dump(admin_dsn))
        assert not in_tables, f"planted secret values appear in the database: {in_tables}"


@dataclass
class VaultStack:
    """A vault, and a control plane (no worker) that forwards secret administration to it."""

    stack: Stack
    vault: Vault
    identities: Identities
    key_file: Path
    guard: LeakGuard
    _channels: list[grpc.aio.Channel] = field(default_factory=list)
    _stubs: dict[
        tuple[str, bool],
        tuple[vault_service_pb2_grpc.VaultServiceAsyncStub, tuple[tuple[str, str], ...]],
    ] = field(default_factory=dict)

    @property
    def owner(self) -> Client:
        """Return the first workspace's owner."""
        return self.stack.owner

    @property
    def admin_dsn(self) -> str:
        """Return the administrative DSN of the test database."""
        return self.stack.admin_dsn

    def vault_stub(
        self, service: str = "gateway", *, rogue: bool = False
    ) -> tuple[vault_service_pb2_grpc.VaultServiceAsyncStub, tuple[tuple[str, str], ...]]:
        """Return a vault stub calling as `service` (one channel each), and its metadata."""
        if (service, rogue) not in self._stubs:
            channel, metadata = self.identities.channel(self.vault.address, service, rogue=rogue)
            self._channels.append(channel)
            stub = vault_service_pb2_grpc.VaultServiceStub(channel)
            self._stubs[service, rogue] = (stub, metadata)
        return self._stubs[service, rogue]

    async def resolve(
        self, client: Client | str, secret: str, version: int = 0, *, service: str = "gateway"
    ) -> vault_service_pb2.ResolveSecretResponse:
        """Resolve a secret of a client's workspace (or of a named one) as the gateway would."""
        workspace = client if isinstance(client, str) else client.workspace
        stub, metadata = self.vault_stub(service)
        return await stub.ResolveSecret(
            vault_service_pb2.ResolveSecretRequest(
                name=f"{workspace}/secrets/{secret}", version=version, run=RUN
            ),
            metadata=metadata,
            timeout=10,
        )

    def secrets(self, client: Client) -> secret_service_pb2_grpc.SecretServiceAsyncStub:
        """Return the public SecretService stub on a client's channel."""
        return secret_service_pb2_grpc.SecretServiceStub(client.channel)

    async def put(
        self,
        client: Client,
        secret: str,
        value: bytes,
        *,
        expected_version: int | None = None,
        request_id: str = "",
    ) -> secret_pb2.Secret:
        """Store a value through the control plane's public API."""
        request = secret_service_pb2.PutSecretRequest(
            name=f"secrets/{secret}", value=value, request_id=request_id
        )
        if expected_version is not None:
            request.expected_version = expected_version
        return await self.secrets(client).PutSecret(request, metadata=client.auth, timeout=10)

    async def audit(self, **where: object) -> list[asyncpg.Record]:
        """Read the vault's audit records matching column = value filters, oldest first."""
        conn = await asyncpg.connect(role_dsn(self.admin_dsn, "ap_vault"))
        try:
            conditions = " AND ".join(f"{k} = ${i + 1}" for i, k in enumerate(where)) or "true"
            return await conn.fetch(
                f"SELECT * FROM audit_log WHERE {conditions} ORDER BY id", *where.values()
            )
        finally:
            await conn.close()

    async def close_channels(self) -> None:
        """Close the channels opened to the vault."""
        for channel in self._channels:
            await channel.close(None)


def write_key_file(directory: Path) -> Path:
    """Create a key file with one master-key version; return its path."""
    path = directory / "master-keys.json"
    new_keyring_file(path)
    return path


def read_key_file(path: Path) -> Keyring:
    """Read a key file back."""
    return load_keyring_file(path)


async def start_vault(
    admin_dsn: str, identities: Identities, key_file: Path, **overrides: Any
) -> Vault:
    """Start a vault on a loopback port; `overrides` are settings."""
    settings: dict[str, Any] = {
        "database_url": role_dsn(admin_dsn, "ap_vault"),
        "grpc_port": 0,
        "vault_master_key_file": key_file,
        "shutdown_grace_seconds": 0.5,
        **identities.vault_settings(),
    }
    vault = Vault(VaultSettings(**(settings | overrides)))
    await vault.start()
    return vault


@contextlib.asynccontextmanager
async def start_vault_stack(
    admin_dsn: str,
    identities: Identities,
    key_file: Path,
    *,
    internal_token: str,
    guard: LeakGuard | None = None,
    **vault_settings: Any,
) -> AsyncIterator[VaultStack]:
    """Start a vault and a control plane that uses it; check for leaks when they stop."""
    guard = guard or LeakGuard()
    with guard.capturing():
        vault = await start_vault(admin_dsn, identities, key_file, **vault_settings)
        try:
            async with start_stack(
                admin_dsn,
                internal_token=internal_token,
                with_worker=False,
                vault_address=vault.address,
                **identities.control_plane_settings(),
            ) as stack:
                running = VaultStack(stack, vault, identities, key_file, guard)
                try:
                    yield running
                finally:
                    await running.close_channels()
        finally:
            await vault.stop()
    if guard.planted:
        await guard.check(admin_dsn)
