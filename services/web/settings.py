"""The HTTP edge's settings."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self

from pydantic import Field, SecretStr, model_validator

from services.rpc.settings import METRICS_PORT_OFFSET, ServiceSettings

STATIC_DIR = Path(__file__).parent / "static"


class WebSettings(ServiceSettings):
    """Settings of the HTTP edge (AP_* variables).

    The edge serves no gRPC: AP_GRPC_HOST is the host its HTTP and metrics ports bind.
    """

    http_port: int = Field(default=8080, ge=0, le=65535, description="The HTTP API and dashboard.")
    control_plane_address: str = "127.0.0.1:50051"
    cookie_secret: SecretStr | None = Field(
        default=None,
        description="At least 32 bytes shared by every edge replica: seals the session cookie. "
        "Unset: a random one per process (its cookies work on this replica only, until restart).",
    )
    cookie_max_age_seconds: int = Field(default=12 * 3600, ge=60, le=30 * 24 * 3600)
    cookie_secure: Literal["auto", "always", "never"] = Field(
        default="auto", description="Mark the cookie Secure: auto = when the request came over TLS."
    )
    cors_origins: list[str] = Field(
        default_factory=list, description="Origins allowed to call the API from a browser (CORS)."
    )
    forwarded_allow_ips: str = Field(
        default="127.0.0.1", description="Proxies whose X-Forwarded-Proto/-For are trusted."
    )
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024, description="Largest request body.")
    request_timeout_seconds: float = Field(default=30.0, gt=0, description="Per unary call.")
    sse_keepalive_seconds: float = Field(default=15.0, gt=0, description="Comment while idle.")
    sse_retry_ms: int = Field(default=1000, ge=0, description="EventSource's reconnect delay.")
    sse_open_wait_seconds: float = Field(
        default=0.25,
        gt=0,
        description="How long a stream waits for the control plane's first answer before it "
        "opens anyway; an answer within it (an error, or a finished stream) gets a plain "
        "HTTP status instead of an event stream.",
    )
    sse_buffer_events: int = Field(
        default=1024, ge=16, description="Events queued for one slow client before it is dropped."
    )
    sse_send_timeout_seconds: float = Field(
        default=30.0, gt=0, description="A client that accepts no bytes this long is dropped."
    )
    sse_replay_events: int = Field(
        default=4096, ge=0, description="Recent events a shared feed keeps for late joiners."
    )
    static_dir: Path | None = Field(
        default=None, description="The dashboard's files; default: services/web/static."
    )

    @model_validator(mode="after")
    def _metrics_beside_http(self) -> Self:
        # Like the gRPC services: metrics on the service's port + 1000 unless set.
        if "metrics_port" not in self.model_fields_set:
            port = self.http_port + METRICS_PORT_OFFSET if self.http_port else 0
            object.__setattr__(self, "metrics_port", port if port <= 65535 else 0)
        return self

    @model_validator(mode="after")
    def _secret_long_enough(self) -> Self:
        if self.cookie_secret is not None and len(self.cookie_secret.get_secret_value()) < 32:
            raise ValueError("AP_COOKIE_SECRET must be at least 32 characters")
        return self
