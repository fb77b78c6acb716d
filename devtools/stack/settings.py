"""What `make run` reads from the environment, and the services it starts.

Environment (all optional):

``AP_DATABASE_URL``
    Administrative Postgres URL. Default: the embedded Postgres with its data in
    ``var/pg``, started if needed (and stopped again on exit if this command started it).
``AP_STACK_BASE_PORT``
    The first of the stack's ``PORTS_PER_STACK`` consecutive ports (default 50051, the
    control plane's); every other port follows from it (``devtools.stack.layout``).
``AP_GRPC_HOST``
    Address the services bind (default 127.0.0.1).
``AP_MODEL_BASE_URL``, ``AP_MODEL_NAME``, ``AP_MODEL_API_KEY``
    A real OpenAI-compatible model. Without the first two the dev model is started.
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
from devtools.stack.layout import DEFAULT_BASE_PORT, PORTS_PER_STACK, StackPorts, host_port


class Probe(enum.Enum):
    """How the stack tells that a service is ready: its protocol, as the banner shows it."""

    GRPC = "plaintext gRPC"
    GRPC_MTLS = "gRPC, mutual TLS"
    HTTP = "HTTP"


# The stack's per-run secrets, by the variable that hands each to a service: new on every
# start, never printed or logged (`devtools.stack.run`).
INTERNAL_TOKEN = "AP_INTERNAL_TOKEN"
COOKIE_SECRET = "AP_COOKIE_SECRET"
RUN_SECRETS = (INTERNAL_TOKEN, COOKIE_SECRET)


@dataclass(frozen=True)
class Link:
    """A URL of a service the banner shows: `path` on its address, with a description."""

    label: str
    path: str
    description: str


@dataclass(frozen=True)
class ServiceSpec:
    """One service of the stack: ``python -m services.<name>``, its port and its wiring.

    `name` also names its log file, its certificate and, when `database` is set, its schema
    (it connects as that schema's role). It listens on the port of `slot`, handed over as
    `port_variable`, and is ready once `probe` succeeds (gRPC health, or a 200 from
    `ready_path`). `peers` are the services it calls, each handed over as
    ``AP_<PEER>_ADDRESS``. It gets the run secrets named in `secrets` and, with
    `certificate`, a development certificate of its own (``AP_TLS_*``). Services of a later
    `wave` start once the earlier waves serve, and stop first. The banner shows its `links`.
    """

    name: str
    slot: int
    probe: Probe
    wave: int
    database: bool = False
    peers: tuple[str, ...] = ()
    port_variable: str = "AP_GRPC_PORT"
    ready_path: str = ""
    secrets: tuple[str, ...] = (INTERNAL_TOKEN,)
    certificate: bool = True
    links: tuple[Link, ...] = ()


# The worker is in the last wave: its claim loops need the control plane, and stopping it
# first lets it drain its runs and hand them back while the control plane still answers and
# the HTTP edge still streams their events. The edge, a client of the public API like any
# other, gets neither the internal token nor a certificate: only the secret that seals its
# sign-in cookies.
SERVICES = (
    ServiceSpec("control_plane", 0, Probe.GRPC, 1, database=True, peers=("vault", "gateway")),
    ServiceSpec("worker", 1, Probe.GRPC, 3, peers=("control_plane", "gateway")),
    ServiceSpec("vault", 2, Probe.GRPC_MTLS, 1, database=True),
    ServiceSpec("gateway", 3, Probe.GRPC_MTLS, 1, database=True, peers=("vault",)),
    ServiceSpec(
        "web",
        4,
        Probe.HTTP,
        2,
        peers=("control_plane",),
        port_variable="AP_HTTP_PORT",
        ready_path="/readyz",
        secrets=(COOKIE_SECRET,),
        certificate=False,
        links=(
            Link("HTTP API", "/v1", "JSON and server-sent events, described by /openapi.json"),
            Link("dashboard", "/", "sign in with the API key below"),
        ),
    ),
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


# Read by earlier versions; a stack's every port now follows from AP_STACK_BASE_PORT.
_RETIRED = ("AP_DEVMODEL_PORT", "AP_EMBEDDED_PG_PORT")


@dataclass(frozen=True)
class StackSettings:
    """What `run` reads from the environment."""

    bind_host: str
    ports: StackPorts
    model_base_url: str | None
    model_name: str | None
    owner_name: str

    @classmethod
    def from_env(cls) -> StackSettings:
        """Read the settings from AP_* variables."""
        base_port = env_int("AP_STACK_BASE_PORT", DEFAULT_BASE_PORT)
        if not 1 <= base_port <= 65536 - PORTS_PER_STACK:
            raise StackError(
                f"AP_STACK_BASE_PORT must leave room for the stack's {PORTS_PER_STACK} "
                f"consecutive ports (at most {65536 - PORTS_PER_STACK}), not {base_port}"
            )
        for name in _RETIRED:
            if os.environ.get(name):
                warn(f"{name} is no longer read: every port follows AP_STACK_BASE_PORT")
        base_url = os.environ.get("AP_MODEL_BASE_URL", "").strip()
        model = os.environ.get("AP_MODEL_NAME", "").strip()
        if bool(base_url) != bool(model):
            # Never a silent fallback to the dev model: the operator meant a real one.
            given, missing = (
                ("AP_MODEL_BASE_URL", "AP_MODEL_NAME")
                if base_url
                else ("AP_MODEL_NAME", "AP_MODEL_BASE_URL")
            )
            raise StackError(
                f"{given} is set but {missing} is not: set both for a hosted model, "
                "or neither for the dev model"
            )
        if os.environ.get("AP_MODELS", "").strip() and not base_url:
            base_url, model = "the models listed in AP_MODELS", "AP_MODELS"
        return cls(
            bind_host=os.environ.get("AP_GRPC_HOST", "").strip() or "127.0.0.1",
            ports=StackPorts(base_port),
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
        return self.ports.service(spec.slot)

    def metrics_port(self, spec: ServiceSpec) -> int:
        """Return the port of a service's /metrics endpoint."""
        return self.ports.metrics(spec.slot)

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
