"""Where a `make run` stack keeps its files, and which ports it takes.

Files, all under the git-ignored ``var/`` (``make clean`` removes it)::

    var/pg/                        the embedded Postgres's data, shared by this clone's stacks
    var/logs/<child>.log           each child's output
    var/vault/master-keys.json     the vault's master keys, created once (mode 600)
    var/pki/<base port>/           this run's development CA and certificates
    var/run/<base port>/           the live stack: its lock (``devtools.stack.rundir``)

Ports: a stack takes ``PORTS_PER_STACK`` consecutive ports from its base port
(``AP_STACK_BASE_PORT``), so stacks whose base ports lie that far apart never collide::

    base + 0 … 4     the services, by slot: control plane (the public endpoint), worker
                     (health only), vault, gateway, the HTTP edge
    base + 5 … 9     their /metrics, in the same order
    base + 10        the dev model
    base + 11        the embedded Postgres
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
VAR_DIR = REPO_ROOT / "var"
PG_DATA_DIR = VAR_DIR / "pg"
LOG_DIR = VAR_DIR / "logs"
MASTER_KEY_FILE = VAR_DIR / "vault" / "master-keys.json"
PKI_DIR = VAR_DIR / "pki"
RUN_DIR = VAR_DIR / "run"

DEFAULT_BASE_PORT = 50051
SERVICE_SLOTS = 5
_METRICS_FIRST = SERVICE_SLOTS
_DEVMODEL = 2 * SERVICE_SLOTS
_POSTGRES = _DEVMODEL + 1
PORTS_PER_STACK = _POSTGRES + 1


def relative(path: Path) -> str:
    """Show a path relative to the repository when it lies inside it."""
    try:
        return str(path.relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def pki_dir(base_port: int) -> Path:
    """Return where the stack on `base_port` keeps its development certificates."""
    return PKI_DIR / str(base_port)


def run_dir(base_port: int) -> Path:
    """Return the directory of the live stack on `base_port`."""
    return RUN_DIR / str(base_port)


def host_port(host: str, port: int) -> str:
    """Join a host and a port, bracketing IPv6 literals."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class StackPorts:
    """The block of consecutive ports one stack takes, all derived from its base port."""

    base: int

    def service(self, slot: int) -> int:
        """Return the port of the service in `slot`."""
        if not 0 <= slot < SERVICE_SLOTS:
            raise ValueError(f"a stack has service slots 0 to {SERVICE_SLOTS - 1}, not {slot}")
        return self.base + slot

    def metrics(self, slot: int) -> int:
        """Return the /metrics port of the service in `slot`."""
        return self.service(slot) + _METRICS_FIRST

    @property
    def devmodel(self) -> int:
        """Return the dev model's port."""
        return self.base + _DEVMODEL

    @property
    def postgres(self) -> int:
        """Return the embedded Postgres's port."""
        return self.base + _POSTGRES

    def all(self) -> range:
        """Return every port of the block."""
        return range(self.base, self.base + PORTS_PER_STACK)


DEV_MODEL_NAME = "ap-dev-model"
# The ids `make run` offers the dev model under, one per wire format.
DEV_MODEL_IDS = {
    "chat_completions": DEV_MODEL_NAME,
    "responses": f"{DEV_MODEL_NAME}-responses",
    "messages": f"{DEV_MODEL_NAME}-messages",
}
