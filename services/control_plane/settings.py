"""The control plane's settings."""

from __future__ import annotations

from pydantic import Field

from services.rpc.settings import ServiceSettings


class ControlPlaneSettings(ServiceSettings):
    """Settings of the control plane (AP_* variables)."""

    grpc_port: int = Field(default=50051, ge=0, le=65535)
    lease_seconds: float = Field(default=15.0, gt=0, description="A worker's lease on a run.")
    claim_max_wait_seconds: float = Field(default=30.0, gt=0)
    # The safety net for a missed notification: how often idle waiters re-check the database.
    poll_interval_seconds: float = Field(default=1.0, gt=0)
    max_input_bytes: int = Field(default=64 * 1024, ge=1)
