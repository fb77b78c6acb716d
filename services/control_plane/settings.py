"""The control plane's settings."""

from __future__ import annotations

from pydantic import Field, SecretStr

from services.rpc.settings import ServiceSettings


class ControlPlaneSettings(ServiceSettings):
    """Settings of the control plane (AP_* variables)."""

    grpc_port: int = Field(default=50051, ge=0, le=65535)
    lease_seconds: float = Field(
        default=10.0, gt=0, description="How long a worker's claim lasts without a heartbeat."
    )
    heartbeat_seconds: float = Field(
        default=1.0, gt=0, description="How often workers heartbeat; bounds cancel latency."
    )
    max_attempts: int = Field(
        default=3, ge=1, description="Attempts before a run whose workers keep dying fails."
    )
    run_timeout_seconds: float = Field(
        default=600.0, gt=0, description="Longest a run may take unless its session says less."
    )
    approval_timeout_seconds: float = Field(
        default=86_400.0,
        gt=0,
        description="How long a tool call waits for approval before it is denied "
        "(APPROVAL_EXPIRED).",
    )
    claim_max_wait_seconds: float = Field(default=30.0, gt=0)
    # The safety net for a missed notification, and the period of the lease-rescue scan.
    poll_interval_seconds: float = Field(default=1.0, gt=0)
    max_input_bytes: int = Field(default=64 * 1024, ge=1)
    vault_address: str | None = Field(
        default=None, description="The vault's internal API; unset: secrets are unavailable."
    )
    vault_admin_token: SecretStr | None = Field(
        default=None, description="Without mTLS (AP_TLS_*): the token presented to the vault."
    )
    run_rate_per_minute: int = Field(
        default=60_000,
        ge=0,
        description="Runs one API key may create per minute on one replica; 0 turns it off.",
    )
    run_rate_burst: int = Field(
        default=1_000, ge=1, description="Runs one API key may create at once before throttling."
    )
    gateway_address: str | None = Field(
        default=None, description="The gateway's internal API; unset: tools are unavailable."
    )
    gateway_admin_token: SecretStr | None = Field(
        default=None, description="Without mTLS (AP_TLS_*): the token presented to the gateway."
    )
