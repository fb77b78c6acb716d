"""The gateway's settings."""

from __future__ import annotations

from typing import Self

from pydantic import Field, SecretStr, model_validator

from services.rpc.settings import ServiceSettings


class GatewaySettings(ServiceSettings):
    """Settings of the gateway (AP_* variables)."""

    grpc_port: int = Field(default=50054, ge=0, le=65535)
    gateway_admin_token: SecretStr | None = Field(
        default=None, description="Without mTLS: the token the control plane presents."
    )
    gateway_call_token: SecretStr | None = Field(
        default=None, description="Without mTLS: the token workers present."
    )
    vault_address: str | None = Field(
        default=None, description="The vault; unset: tools with a credential cannot be called."
    )
    vault_resolve_token: SecretStr | None = Field(
        default=None, description="Without mTLS: the token presented to the vault."
    )
    gateway_allowlist: str = Field(
        default="",
        description="Comma-separated CIDRs or host:port destinations the SSRF guard lets "
        "through (e.g. 10.1.0.0/16, tools.corp:443); empty: none.",
    )
    gateway_default_timeout_seconds: float = Field(default=30.0, gt=0)
    gateway_max_timeout_seconds: float = Field(
        default=120.0, gt=0, description="The cap on any tool's or server's timeout."
    )
    gateway_max_response_bytes: int = Field(
        default=256 * 1024, ge=1024, description="Result bytes (decompressed) kept per call."
    )
    gateway_max_concurrent_calls: int = Field(
        default=16, ge=1, description="Tool calls one workspace may have in flight at once."
    )

    @model_validator(mode="after")
    def _default_within_max(self) -> Self:
        if self.gateway_default_timeout_seconds > self.gateway_max_timeout_seconds:
            raise ValueError("AP_GATEWAY_DEFAULT_TIMEOUT_SECONDS exceeds the maximum")
        return self

    @property
    def allowlist_entries(self) -> list[str]:
        """Return the allowlist's entries."""
        return [e.strip() for e in self.gateway_allowlist.split(",") if e.strip()]
