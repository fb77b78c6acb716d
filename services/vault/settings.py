"""The vault's settings."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr

from services.rpc.settings import ServiceSettings


class VaultSettings(ServiceSettings):
    """Settings of the vault (AP_* variables)."""

    grpc_port: int = Field(default=50053, ge=0, le=65535)
    vault_master_key_file: Path | None = Field(
        default=None,
        description="JSON key file of the master-key versions; the vault adds versions to it.",
    )
    vault_master_keys: SecretStr | None = Field(
        default=None, description="The same JSON inline, for deployments that inject secrets."
    )
    vault_admin_token: SecretStr | None = Field(
        default=None, description="Without mTLS: the token the control plane presents."
    )
    vault_resolve_token: SecretStr | None = Field(
        default=None, description="Without mTLS: the token the gateway presents."
    )
    vault_max_secret_bytes: int = Field(default=64 * 1024, ge=1, le=1024 * 1024)
    vault_rewrap_batch_size: int = Field(
        default=256, ge=1, le=10_000, description="Data keys re-wrapped per transaction."
    )
