"""Typed service settings read from `AP_*` environment variables."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal, Self

from pydantic import Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.rpc.tls import ServiceTls

METRICS_PORT_OFFSET = 1000


class SettingsError(SystemExit):
    """Raised when the environment holds a missing or malformed setting."""


class ServiceSettings(BaseSettings):
    """Settings every service reads."""

    model_config = SettingsConfigDict(env_prefix="AP_", extra="ignore", frozen=True)

    database_url: str | None = Field(
        default=None, description="Postgres URL, connecting as this service's own role."
    )
    db_pool_min: int = Field(default=2, ge=1)
    db_pool_max: int = Field(default=16, ge=1)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "console"] = "json"
    grpc_host: str = "127.0.0.1"
    grpc_port: int = Field(default=0, ge=0, le=65535)
    metrics_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="HTTP port of /metrics, on the gRPC host; default: the gRPC port + 1000.",
    )
    internal_token: SecretStr | None = Field(
        default=None, description="Shared token internal callers present (no mTLS configured)."
    )
    tls_ca_file: Path | None = Field(
        default=None, description="PEM CA that internal peers' certificates must chain to."
    )
    tls_cert_file: Path | None = Field(
        default=None, description="PEM certificate naming this service (mutual TLS)."
    )
    tls_key_file: Path | None = Field(default=None, description="PEM private key of that cert.")
    shutdown_grace_seconds: float = Field(default=5.0, ge=0)
    max_message_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)

    @model_validator(mode="after")
    def _default_metrics_port(self) -> Self:
        # Derived rather than fixed, so services sharing a host (make run, AP_STACK_BASE_PORT)
        # never collide; a random gRPC port (tests) gets a random metrics port too.
        if self.metrics_port is None:
            port = self.grpc_port + METRICS_PORT_OFFSET if self.grpc_port else 0
            object.__setattr__(self, "metrics_port", port if port <= 65535 else 0)
        return self

    @model_validator(mode="after")
    def _tls_all_or_nothing(self) -> Self:
        files = (self.tls_ca_file, self.tls_cert_file, self.tls_key_file)
        if any(files) and not all(files):
            raise ValueError("AP_TLS_CA_FILE, AP_TLS_CERT_FILE and AP_TLS_KEY_FILE go together")
        return self

    def service_tls(self) -> ServiceTls | None:
        """Load this service's mutual-TLS identity, or None when TLS is not configured."""
        if self.tls_ca_file is None or self.tls_cert_file is None or self.tls_key_file is None:
            return None
        try:
            return ServiceTls.load(self.tls_ca_file, self.tls_cert_file, self.tls_key_file)
        except OSError as err:
            raise SettingsError(f"cannot read a TLS file (AP_TLS_*): {err}") from None

    @classmethod
    def from_env(cls, **overrides: object) -> Self:
        """Load settings from the environment, exiting with a clear message on a bad value."""
        try:
            return cls(**overrides)  # type: ignore[arg-type]
        except ValidationError as exc:
            lines = [f"invalid configuration for {cls.__name__}:"]
            for err in exc.errors():
                field = ".".join(str(p) for p in err["loc"])
                lines.append(f"  AP_{field.upper()}: {err['msg']}")
            print("\n".join(lines), file=sys.stderr)
            raise SettingsError(2) from None
