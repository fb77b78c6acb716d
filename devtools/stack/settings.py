"""What `make run` reads from the environment, and the services it starts.

Environment (all optional):

``AP_DATABASE_URL``
    Administrative Postgres URL. Default: the embedded Postgres with its data in
    ``var/pg``, started if needed (and stopped again on exit if this command started it).
``AP_EMBEDDED_PG_PORT``
    Port of the embedded Postgres (default 55432).
``AP_STACK_BASE_PORT``
    Port of the control plane (default 50051); the worker's health port, the vault and
    the gateway take the next three. Each service's /metrics is on its port + 1000.
``AP_GRPC_HOST``
    Address the services bind (default 127.0.0.1).
``AP_MODEL_BASE_URL``, ``AP_MODEL_NAME``, ``AP_MODEL_API_KEY``
    A real OpenAI-compatible model. Without the first two the dev model is started.
``AP_DEVMODEL_PORT``
    Port of the dev model (default 8089).
``AP_OWNER_NAME``
    Display name of the first workspace's owner (default: the login name).
``AP_DB_PASSWORD_<SCHEMA>``
    Passwords of the service roles, as ``services.migrate`` sets them.
"""

from __future__ import annotations

import enum
import getpass
import os
from dataclasses import dataclass

from devtools.stack.console import StackError, warn
from devtools.stack.layout import host_port
from services.rpc.settings import METRICS_PORT_OFFSET


class Probe(enum.Enum):
    """How the stack tells that a service is ready."""

    GRPC = "plaintext gRPC"
    GRPC_MTLS = "gRPC, mutual TLS"


@dataclass(frozen=True)
class ServiceSpec:
    """One service of the stack: ``python -m services.<name>``, its port and its wiring.

    `name` also names its log file, its certificate and, when `database` is set, its schema
    (it connects as that schema's role). `peers` are the services it calls, each handed over
    as ``AP_<PEER>_ADDRESS``. Services of a later `wave` start once the earlier waves serve,
    and stop first.
    """

    name: str
    slot: int
    probe: Probe
    wave: int
    database: bool = False
    peers: tuple[str, ...] = ()


# The worker is in the last wave: its claim loops need the control plane, and stopping it
# first lets it drain its runs and hand them back while the control plane still answers.
SERVICES = (
    ServiceSpec("control_plane", 0, Probe.GRPC, 1, database=True, peers=("vault", "gateway")),
    ServiceSpec("worker", 1, Probe.GRPC, 2, peers=("control_plane", "gateway")),
    ServiceSpec("vault", 2, Probe.GRPC_MTLS, 1, database=True),
    ServiceSpec("gateway", 3, Probe.GRPC_MTLS, 1, database=True, peers=("vault",)),
)


def env_int(name: str, default: int) -> int:
    """Read an integer setting, failing with the variable's name on a bad value."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise StackError(f"{name} must be a number, not {raw!r}") from None


@dataclass(frozen=True)
class StackSettings:
    """What `run` reads from the environment."""

    bind_host: str
    base_port: int
    devmodel_port: int
    postgres_port: int
    model_base_url: str | None
    model_name: str | None
    owner_name: str

    @classmethod
    def from_env(cls) -> StackSettings:
        """Read the settings from AP_* variables."""
        base_port = env_int("AP_STACK_BASE_PORT", 50051)
        if not 1 <= base_port <= 65535 - 3 - METRICS_PORT_OFFSET:
            raise StackError(
                f"AP_STACK_BASE_PORT must leave room for 4 ports and their metrics ports "
                f"(+{METRICS_PORT_OFFSET}), not {base_port}"
            )
        base_url = os.environ.get("AP_MODEL_BASE_URL", "").strip()
        model = os.environ.get("AP_MODEL_NAME", "").strip()
        if bool(base_url) != bool(model):
            warn("only one of AP_MODEL_BASE_URL and AP_MODEL_NAME is set; using the dev model")
        return cls(
            bind_host=os.environ.get("AP_GRPC_HOST", "").strip() or "127.0.0.1",
            base_port=base_port,
            devmodel_port=env_int("AP_DEVMODEL_PORT", 8089),
            postgres_port=env_int("AP_EMBEDDED_PG_PORT", 55432),
            model_base_url=base_url if base_url and model else None,
            model_name=model if base_url and model else None,
            owner_name=os.environ.get("AP_OWNER_NAME", "").strip() or _login_name(),
        )

    @property
    def connect_host(self) -> str:
        """Return the address clients dial: loopback when the services bind every address."""
        return "127.0.0.1" if self.bind_host in ("0.0.0.0", "::") else self.bind_host

    @property
    def endpoint(self) -> str:
        """Return the control plane's address for clients."""
        return self.address(SERVICES[0])

    def port(self, spec: ServiceSpec) -> int:
        """Return the port a service listens on."""
        return self.base_port + spec.slot

    def metrics_port(self, spec: ServiceSpec) -> int:
        """Return the port of a service's /metrics endpoint."""
        return self.port(spec) + METRICS_PORT_OFFSET

    def address(self, spec: ServiceSpec) -> str:
        """Return where clients reach a service."""
        return host_port(self.connect_host, self.port(spec))


def service(name: str) -> ServiceSpec:
    """Return the stack's service of that name."""
    return next(spec for spec in SERVICES if spec.name == name)


def _login_name() -> str:
    """Return the login name, or a generic one where the system has none (containers)."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "Owner"
