"""The worker's settings."""

from __future__ import annotations

import os
import socket

from pydantic import Field, SecretStr, field_validator

from services.rpc.settings import ServiceSettings


class WorkerSettings(ServiceSettings):
    """Settings of a worker (AP_* variables)."""

    grpc_port: int = Field(default=50052, ge=0, le=65535, description="Health and metrics only.")
    control_plane_address: str = Field(
        default="127.0.0.1:50051",
        description="The dispatch API: host:port, or several separated by commas (fail-over).",
    )
    worker_concurrency: int = Field(default=16, ge=1, le=1024)
    worker_id: str = Field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    claim_wait_seconds: float = Field(default=10.0, gt=0, le=30)
    gateway_address: str | None = Field(
        default=None, description="The gateway; unset: runs are offered no tools."
    )
    gateway_call_token: SecretStr | None = Field(
        default=None, description="Without mTLS (AP_TLS_*): the token presented to the gateway."
    )
    max_steps: int = Field(
        default=8, ge=1, le=100, description="Model calls per run; the run fails with MAX_STEPS."
    )
    tool_progress_seconds: float = Field(
        default=2.0, gt=0, description="Interval of tool_call.progress events while a call runs."
    )

    @field_validator("control_plane_address")
    @classmethod
    def _addresses_listed(cls, value: str) -> str:
        entries = [entry.strip() for entry in value.split(",")]
        if not all(entries):
            raise ValueError("list host:port entries separated by commas, none of them empty")
        return ",".join(entries)

    @property
    def control_plane_addresses(self) -> list[str]:
        """Return the control-plane entries in the order the worker tries them."""
        return self.control_plane_address.split(",")
