"""The worker's settings."""

from __future__ import annotations

import os
import socket

from pydantic import Field

from services.rpc.settings import ServiceSettings


class WorkerSettings(ServiceSettings):
    """Settings of a worker (AP_* variables)."""

    grpc_port: int = Field(default=50052, ge=0, le=65535, description="Health and metrics only.")
    control_plane_address: str = "127.0.0.1:50051"
    worker_concurrency: int = Field(default=16, ge=1, le=1024)
    worker_id: str = Field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    claim_wait_seconds: float = Field(default=10.0, gt=0, le=30)
