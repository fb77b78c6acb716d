"""Run the whole platform on one machine: ``python -m devtools.stack migrate|run``.

``migrate`` applies every schema's pending migrations. ``run`` (what ``make run`` does)
brings up Postgres, migrates, bootstraps the first workspace, starts the deterministic dev
model unless a hosted model is configured, starts the control plane, worker, vault and
gateway as subprocesses, waits until each one reports SERVING over gRPC health checking,
writes the client config file that ``ap`` reads, and serves until Ctrl-C or SIGTERM.

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

import os

# Before gRPC loads: every child is exec'd right after fork, so gRPC's fork handlers have
# nothing to protect, and left on they log "skipping fork() handlers" on some starts.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import argparse
import asyncio
import contextlib
import getpass
import json
import secrets
import shutil
import signal
import socket
import sys
import tempfile
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import asyncpg
import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ap_cli.config import default_config_path
from devtools.embedded_pg import EmbeddedPostgres, EmbeddedPostgresError, _read_postmaster
from devtools.pki import DevPki, issue_dev_pki
from services.control_plane.bootstrap import EXIT_ALREADY_BOOTSTRAPPED, issue_owner_key
from services.migrate import migrate_all
from services.rpc.db import role_dsn
from services.rpc.settings import METRICS_PORT_OFFSET
from services.rpc.tls import ServiceTls
from services.vault.keyring import new_keyring_file

REPO_ROOT = Path(__file__).resolve().parent.parent
PG_DATA_DIR = REPO_ROOT / "var" / "pg"
LOG_DIR = REPO_ROOT / "var" / "logs"
MASTER_KEY_FILE = REPO_ROOT / "var" / "vault" / "master-keys.json"
PKI_DIR = REPO_ROOT / "var" / "pki"
# The supervisor's own certificate, for health-checking the services that require mTLS.
STACK_IDENTITY = "stack"
# The services that serve only mutual TLS once AP_TLS_* is set; the others take tokens.
MTLS_SERVICES = frozenset({"vault", "gateway"})

READY_PREFIX = "AP stack ready on"
DEV_MODEL_NAME = "ap-dev-model"
WORKSPACE_DISPLAY_NAME = "Default workspace"

_READY_TIMEOUT_S = 30.0
_STOP_TIMEOUT_S = 10.0
_POLL_INTERVAL_S = 0.1
_TAIL_LINES = 30
# Long enough for any log line a service writes; longer ones are dropped, not fatal.
_LINE_LIMIT = 1024 * 1024
_NAME_WIDTH = len("control_plane")
# A freshly failed gRPC connection otherwise waits about a second before the next attempt.
_FAST_RECONNECT = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 300),
]


class StackError(Exception):
    """Report why the stack could not start, with what a developer needs to fix it."""


def say(message: str = "") -> None:
    """Print a line of the stack's own output right away, even into a pipe."""
    print(message, flush=True)


def warn(message: str) -> None:
    """Print a problem to stderr right away."""
    print(message, file=sys.stderr, flush=True)


def _env_int(name: str, default: int) -> int:
    """Read an integer setting, failing with the variable's name on a bad value."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise StackError(f"{name} must be a number, not {raw!r}") from None


def _host_port(host: str, port: int) -> str:
    """Join a host and a port, bracketing IPv6 literals."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# -- settings ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServiceSpec:
    """One service process: its name (module and log file), port and database role."""

    name: str
    port: int
    schema: str | None  # None for the stateless worker
    role: str | None

    @property
    def metrics_port(self) -> int:
        """Return the port of the service's /metrics endpoint."""
        return self.port + METRICS_PORT_OFFSET


@dataclass(frozen=True)
class StackSettings:
    """What `run` reads from the environment."""

    bind_host: str
    base_port: int
    devmodel_port: int
    model_base_url: str | None
    model_name: str | None
    owner_name: str

    @classmethod
    def from_env(cls) -> StackSettings:
        """Read the settings from AP_* variables."""
        base_port = _env_int("AP_STACK_BASE_PORT", 50051)
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
            devmodel_port=_env_int("AP_DEVMODEL_PORT", 8089),
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
        return _host_port(self.connect_host, self.base_port)

    @property
    def vault_port(self) -> int:
        """Return the vault's port."""
        return self.base_port + 2

    @property
    def gateway_port(self) -> int:
        """Return the gateway's port."""
        return self.base_port + 3

    def services(self) -> list[ServiceSpec]:
        """Return the four services with their ports, control plane first."""
        port = self.base_port
        return [
            ServiceSpec("control_plane", port, "control_plane", "ap_control_plane"),
            ServiceSpec("worker", port + 1, None, None),
            ServiceSpec("vault", self.vault_port, "vault", "ap_vault"),
            ServiceSpec("gateway", self.gateway_port, "gateway", "ap_gateway"),
        ]


def _login_name() -> str:
    """Return the login name, or a generic one where the system has none (containers)."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "Owner"


def _service_dsn(admin_dsn: str, schema: str, role: str) -> str:
    """Return a service role's DSN, with the password migrations gave the role, if any."""
    return role_dsn(admin_dsn, role, os.environ.get(f"AP_DB_PASSWORD_{schema.upper()}"))


# -- Postgres ------------------------------------------------------------------------------


@contextlib.contextmanager
def admin_database() -> Iterator[str]:
    """Yield an admin DSN: AP_DATABASE_URL, else the embedded server of var/pg.

    The embedded server is stopped on exit only if this call started it, so a server the
    developer started (or another `run`) keeps running.
    """
    if url := os.environ.get("AP_DATABASE_URL", "").strip():
        yield url
        return
    port = _env_int("AP_EMBEDDED_PG_PORT", 55432)
    server = EmbeddedPostgres(PG_DATA_DIR, port)
    already_running = _read_postmaster(PG_DATA_DIR) is not None
    where = f"{_relative(PG_DATA_DIR)} on 127.0.0.1:{port}"
    say(f"Postgres: embedded, data in {where}" + (" (already running)" if already_running else ""))
    try:
        yield server.start()
    finally:
        if not already_running:
            say("stopping embedded Postgres")
            server.stop()


def _relative(path: Path) -> str:
    """Show a path relative to the repository when it lies inside it."""
    try:
        return str(path.relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def report_migrations(applied: Sequence[str]) -> None:
    """Print which migrations were applied."""
    if not applied:
        say("migrations: schema up to date, nothing to apply")
    for name in applied:
        say(f"migrations: applied {name}")


# -- owner key and client config ---------------------------------------------------------


def read_stored_key(path: Path) -> str | None:
    """Return the API key in the client config file, or None if it has none."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    key = data.get("api_key") if isinstance(data, dict) else None
    return key.strip() if isinstance(key, str) and key.strip() else None


async def admin_bootstrap(dsn: str, owner_name: str) -> dict[str, str] | None:
    """Run `ap admin bootstrap`, the operator's entry point; None when already bootstrapped."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ap_cli.main",
        "admin",
        "bootstrap",
        "--json",
        "--workspace",
        WORKSPACE_DISPLAY_NAME,
        "--display-name",
        owner_name,
        env={**os.environ, "AP_DATABASE_URL": dsn},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    if proc.returncode == EXIT_ALREADY_BOOTSTRAPPED:
        return None
    if proc.returncode != 0:
        raise StackError(f"ap admin bootstrap failed: {err.decode().strip()}")
    made: dict[str, str] = json.loads(out)
    return made


async def owner_key(admin_dsn: str, owner_name: str, config_path: Path) -> str:
    """Bootstrap the first workspace, or find a key for the existing one's owner."""
    dsn = _service_dsn(admin_dsn, "control_plane", "ap_control_plane")
    made = await admin_bootstrap(dsn, owner_name)
    if made is not None:
        say(f"bootstrap: created {made['workspace']} ({WORKSPACE_DISPLAY_NAME!r})")
        say(f"bootstrap: owner {made['user']} ({owner_name!r}), new API key {made['api_key']}")
        return made["api_key"]
    # The file's key is trusted as is: checking it would need the running control plane.
    if stored := read_stored_key(config_path):
        say(f"bootstrap: a workspace exists; reusing the API key in {config_path}")
        return stored
    issued = await issue_owner_key(dsn)
    if issued is None:
        raise StackError("a workspace exists but has no owner to issue an API key for")
    say(f"bootstrap: a workspace exists; issued a new API key for the owner of {issued.workspace}")
    return issued.api_key


def write_client_config(path: Path, endpoint: str, api_key: str) -> None:
    """Write the client config file atomically, readable by its owner only."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".client-", suffix=".json")
    try:
        # mkstemp creates the file 0600, so the key is never readable by others.
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump({"endpoint": endpoint, "api_key": api_key}, out, indent=2)
            out.write("\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# -- child processes -----------------------------------------------------------------------


def _open_log(name: str) -> IO[str]:
    """Open var/logs/<name>.log for appending, line-buffered."""
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    return (LOG_DIR / f"{name}.log").open("a", encoding="utf-8", buffering=1)


class Child:
    """A child process whose output goes to the terminal, prefixed, and to its log file."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process, log: IO[str]) -> None:
        """Take over a started process and start copying its output."""
        self.name = name
        self.proc = proc
        self.tail: deque[str] = deque(maxlen=_TAIL_LINES)
        self._log = log
        self._pump = asyncio.create_task(self._copy_output(), name=f"output-{name}")

    @classmethod
    async def start(cls, name: str, args: Sequence[str], env: Mapping[str, str]) -> Child:
        """Start `args` with stdout and stderr merged into one pipe."""
        log = _open_log(name)
        log.write(f"--- {name} started by devtools.stack (pid {os.getpid()}) ---\n")
        try:
            proc = await asyncio.create_subprocess_exec(
                *args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env=dict(env),
                cwd=REPO_ROOT,
                limit=_LINE_LIMIT,
            )
        except BaseException:
            log.close()
            raise
        return cls(name, proc, log)

    @property
    def returncode(self) -> int | None:
        """Return the exit code, or None while the process runs."""
        return self.proc.returncode

    def describe_tail(self) -> str:
        """Return the last lines of output, for error messages."""
        lines = "\n".join(f"  {line}" for line in self.tail) or "  (no output)"
        log = _relative(LOG_DIR / f"{self.name}.log")
        return f"last output of {self.name} (full log: {log}):\n{lines}"

    async def _copy_output(self) -> None:
        """Copy output lines until the pipe closes."""
        assert self.proc.stdout is not None
        while True:
            try:
                raw = await self.proc.stdout.readline()
            except ValueError:
                raw = b"[a line longer than the limit was dropped]\n"
            if not raw:
                return
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            self.tail.append(line)
            self._log.write(line + "\n")
            print(f"{self.name:<{_NAME_WIDTH}} | {line}", flush=True)

    async def stop(self) -> None:
        """Send SIGTERM, wait for the exit, SIGKILL after a timeout; then close the log."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), _STOP_TIMEOUT_S)
            except TimeoutError:
                warn(f"{self.name} did not stop within {_STOP_TIMEOUT_S:g}s; killing it")
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                await self.proc.wait()
        # A grandchild holding the pipe open must not hang the shutdown.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._pump), 2.0)
        self._pump.cancel()
        self._log.close()


class Supervisor:
    """The stack's children, started in waves and stopped in reverse wave order."""

    def __init__(self) -> None:
        """Start with no children."""
        self._waves: list[list[Child]] = []

    @property
    def children(self) -> list[Child]:
        """Return every child started so far."""
        return [child for wave in self._waves for child in wave]

    def new_wave(self) -> None:
        """Begin a wave: its children stop before those of earlier waves."""
        self._waves.append([])

    async def start(self, name: str, args: Sequence[str], env: Mapping[str, str]) -> Child:
        """Start a child in the current wave."""
        if not self._waves:
            self.new_wave()
        child = await Child.start(name, args, env)
        self._waves[-1].append(child)
        return child

    async def watch(self, stopping: asyncio.Event) -> Child | None:
        """Wait for a stop request (None) or a child's exit (that child)."""
        exits = {asyncio.create_task(child.proc.wait()): child for child in self.children}
        stop = asyncio.create_task(stopping.wait())
        done, pending = await asyncio.wait({*exits, stop}, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if stop in done:
            return None
        return next(exits[task] for task in done if task in exits)

    async def stop_all(self) -> None:
        """Stop the latest wave first, each wave's children concurrently."""
        for wave in reversed(self._waves):
            await asyncio.gather(*(child.stop() for child in wave))
        self._waves.clear()


# -- readiness -----------------------------------------------------------------------------


def _check_port_free(host: str, port: int, what: str) -> None:
    """Fail early, and clearly, when a port the stack needs is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # Like the servers: a port left in TIME_WAIT by the previous run is free to use.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as err:
            raise StackError(
                f"{what} cannot listen on {_host_port(host, port)}: {err.strerror} "
                "(is another `make run` running? AP_STACK_BASE_PORT / AP_DEVMODEL_PORT "
                "choose other ports)"
            ) from None


def _exited_early(child: Child) -> StackError:
    """Describe a child that exited before it was ready."""
    return StackError(
        f"{child.name} exited with code {child.returncode} before it was ready\n"
        f"{child.describe_tail()}"
    )


async def wait_serving(
    child: Child, address: str, deadline: float, tls: ServiceTls | None = None
) -> None:
    """Poll the gRPC health check at `address` (over mTLS with `tls`) until it says SERVING."""
    loop = asyncio.get_running_loop()
    serving = health_pb2.HealthCheckResponse.SERVING
    channel = (
        grpc.aio.insecure_channel(address, options=_FAST_RECONNECT)
        if tls is None
        else grpc.aio.secure_channel(address, tls.channel_credentials(), options=_FAST_RECONNECT)
    )
    async with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            if child.returncode is not None:
                raise _exited_early(child)
            with contextlib.suppress(grpc.aio.AioRpcError):
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                if reply.status == serving:
                    return
            if loop.time() > deadline:
                raise StackError(
                    f"{child.name} did not report SERVING on {address} within "
                    f"{_READY_TIMEOUT_S:g}s\n{child.describe_tail()}"
                )
            await asyncio.sleep(_POLL_INTERVAL_S)


async def wait_http_ok(child: Child, url: str, deadline: float) -> None:
    """Poll `url` until it answers 200."""
    loop = asyncio.get_running_loop()
    async with httpx.AsyncClient(trust_env=False, timeout=1.0) as http:
        while True:
            if child.returncode is not None:
                raise _exited_early(child)
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get(url)).status_code == 200:
                    return
            if loop.time() > deadline:
                raise StackError(
                    f"{child.name} did not answer {url} within {_READY_TIMEOUT_S:g}s\n"
                    f"{child.describe_tail()}"
                )
            await asyncio.sleep(_POLL_INTERVAL_S)


# -- run -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Started:
    """What the banner shows once everything is up."""

    endpoint: str
    api_key: str
    config_path: Path
    model: str
    logs: list[str]
    metrics: list[str]


def _base_env() -> dict[str, str]:
    """Return the environment every child inherits."""
    env = dict(os.environ)
    # Children get role DSNs; the administrative URL must not leak into them.
    env.pop("AP_DATABASE_URL", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def service_env(
    base: Mapping[str, str],
    spec: ServiceSpec,
    settings: StackSettings,
    admin_dsn: str,
    internal_token: str,
    *,
    pki: DevPki,
) -> dict[str, str]:
    """Return one service's environment."""
    env = dict(base)
    env.update(pki.env(spec.name))
    env.setdefault("AP_LOG_FORMAT", "console")
    env["AP_GRPC_HOST"] = settings.bind_host
    env["AP_GRPC_PORT"] = str(spec.port)
    env["AP_METRICS_PORT"] = str(spec.metrics_port)
    env["AP_INTERNAL_TOKEN"] = internal_token
    if spec.schema is not None and spec.role is not None:
        env["AP_DATABASE_URL"] = _service_dsn(admin_dsn, spec.schema, spec.role)
    if spec.name == "worker":
        env["AP_CONTROL_PLANE_ADDRESS"] = settings.endpoint
    gateway = _host_port(settings.connect_host, settings.gateway_port)
    if spec.name == "control_plane":
        env["AP_VAULT_ADDRESS"] = _host_port(settings.connect_host, settings.vault_port)
        env["AP_GATEWAY_ADDRESS"] = gateway
    if spec.name == "worker":
        env["AP_GATEWAY_ADDRESS"] = gateway
    if spec.name == "gateway":
        # Tool credentials come from the vault; the gateway proves itself by certificate.
        env["AP_VAULT_ADDRESS"] = _host_port(settings.connect_host, settings.vault_port)
    if spec.name == "vault" and "AP_VAULT_MASTER_KEYS" not in env:
        env.setdefault("AP_VAULT_MASTER_KEY_FILE", str(MASTER_KEY_FILE))
    return env


def prepare_vault(settings: StackSettings) -> DevPki:
    """Make sure the vault has master keys, and issue this run's development certificates.

    The key file is created once and kept: the secrets in var/pg are unreadable without it.
    The CA is new on every run and its private key never touches the disk.
    """
    configured = os.environ.get("AP_VAULT_MASTER_KEY_FILE") or os.environ.get(
        "AP_VAULT_MASTER_KEYS"
    )
    if configured:
        say("vault: master keys from AP_VAULT_MASTER_KEY_FILE / AP_VAULT_MASTER_KEYS")
    else:
        try:
            new_keyring_file(MASTER_KEY_FILE)
            say(
                f"vault: created the master key file {_relative(MASTER_KEY_FILE)} (mode 600); "
                "stored secrets cannot be read without it"
            )
        except FileExistsError:
            say(f"vault: master keys in {_relative(MASTER_KEY_FILE)}")
    hosts = [] if settings.bind_host in ("0.0.0.0", "::") else [settings.bind_host]
    names = [spec.name for spec in settings.services()] + [STACK_IDENTITY]
    # One folder per stack (they differ by port), so concurrent stacks never swap CAs.
    directory = pki_dir(settings.base_port)
    pki = issue_dev_pki(directory, names, hosts=hosts)
    say(f"mTLS: a fresh development CA and service certificates in {_relative(directory)}")
    return pki


def pki_dir(base_port: int) -> Path:
    """Return where the stack on `base_port` keeps its development certificates."""
    return PKI_DIR / str(base_port)


async def start_model(supervisor: Supervisor, settings: StackSettings, env: dict[str, str]) -> str:
    """Point `env` at the hosted model, or start the dev model; return what is in use."""
    if settings.model_base_url and settings.model_name:
        hosted = f"{settings.model_name} at {settings.model_base_url}"
        say(f"model: {hosted} (from AP_MODEL_BASE_URL and AP_MODEL_NAME)")
        return hosted
    port = settings.devmodel_port
    _check_port_free("127.0.0.1", port, "the dev model")
    child = await supervisor.start(
        "devmodel",
        [sys.executable, "-m", "devtools.devmodel", "--host", "127.0.0.1", "--port", str(port)],
        env,
    )
    base_url = f"http://127.0.0.1:{port}/v1"
    env["AP_MODEL_BASE_URL"] = base_url
    env["AP_MODEL_NAME"] = DEV_MODEL_NAME
    say(
        f"model: the deterministic dev model at {base_url}, NOT a real LLM: replies are canned "
        "text. Set AP_MODEL_BASE_URL and AP_MODEL_NAME (and AP_MODEL_API_KEY) for a real model."
    )
    deadline = asyncio.get_running_loop().time() + _READY_TIMEOUT_S
    await wait_http_ok(child, f"http://127.0.0.1:{port}/healthz", deadline)
    return f"deterministic dev model at {base_url} (not a real LLM)"


async def start_stack(admin_dsn: str, settings: StackSettings, supervisor: Supervisor) -> Started:
    """Migrate, bootstrap, start the model and the services; wait until all are SERVING."""
    specs = settings.services()
    for spec in specs:
        _check_port_free(settings.bind_host, spec.port, spec.name)
        _check_port_free(settings.bind_host, spec.metrics_port, f"{spec.name}'s metrics")
    report_migrations(await migrate_all(admin_dsn))
    config_path = default_config_path()
    api_key = await owner_key(admin_dsn, settings.owner_name, config_path)
    # A fresh token per run: nothing outside this stack can pose as one of its services.
    internal_token = secrets.token_urlsafe(32)
    pki = prepare_vault(settings)
    probe = pki.tls(STACK_IDENTITY)
    env = _base_env()
    model = await start_model(supervisor, settings, env)

    async def launch(spec: ServiceSpec, deadline: float) -> None:
        child = await supervisor.start(
            spec.name,
            [sys.executable, "-m", f"services.{spec.name}"],
            service_env(env, spec, settings, admin_dsn, internal_token, pki=pki),
        )
        address = _host_port(settings.connect_host, spec.port)
        await wait_serving(child, address, deadline, probe if spec.name in MTLS_SERVICES else None)

    loop = asyncio.get_running_loop()
    # The worker's claim loops need the control plane, so it starts once that one serves;
    # stopping in reverse then takes the worker (and its runs) down first.
    supervisor.new_wave()
    deadline = loop.time() + _READY_TIMEOUT_S
    await asyncio.gather(*(launch(s, deadline) for s in specs if s.name != "worker"))
    supervisor.new_wave()
    deadline = loop.time() + _READY_TIMEOUT_S
    await asyncio.gather(*(launch(s, deadline) for s in specs if s.name == "worker"))

    write_client_config(config_path, settings.endpoint, api_key)
    logs = [child.name for child in supervisor.children]
    metrics = [
        f"http://{_host_port(settings.connect_host, s.metrics_port)}/metrics  ({s.name})"
        for s in specs
    ]
    return Started(settings.endpoint, api_key, config_path, model, logs, metrics)


def print_banner(started: Started) -> None:
    """Print where the stack listens, the key, and what to try next."""
    say()
    say(f"{READY_PREFIX} {started.endpoint}")
    say()
    say(f"  endpoint     {started.endpoint}  (plaintext gRPC)")
    say(f"  API key      {started.api_key}")
    say(f"  written to   {started.config_path}  (mode 600; `ap` reads it)")
    say(f"  model        {started.model}")
    say(f"  logs         {_relative(LOG_DIR)}/{{{','.join(started.logs)}}}.log")
    for i, url in enumerate(started.metrics):
        say(f"  {'metrics' if i == 0 else '':<12} {url}")
    say()
    say("Next steps:")
    say("  .venv/bin/ap chat                       # chat in a new session")
    say("  printf 'hello\\n' | .venv/bin/ap chat    # one line, non-interactive")
    say("  .venv/bin/ap sessions list")
    say(f"  grpcurl -plaintext {started.endpoint} list")
    say()
    say("Press Ctrl-C to stop.")


async def serve(admin_dsn: str, settings: StackSettings) -> int:
    """Start the stack and supervise it until a signal (0) or a child's death (1)."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    supervisor = Supervisor()
    try:
        startup = asyncio.create_task(start_stack(admin_dsn, settings, supervisor))
        stop_wait = asyncio.create_task(stopping.wait())
        await asyncio.wait({startup, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        stop_wait.cancel()
        if not startup.done():
            say("interrupted during start-up; stopping")
            startup.cancel()
            with contextlib.suppress(asyncio.CancelledError, StackError):
                await startup
            return 0
        print_banner(startup.result())
        died = await supervisor.watch(stopping)
        if died is not None:
            warn(f"error: {died.name} exited unexpectedly with code {died.returncode}")
            warn(died.describe_tail())
            warn("stopping the stack")
            return 1
        say("stopping the stack")
        return 0
    except (StackError, OSError, asyncpg.PostgresError) as err:
        warn(f"error: {err}")
        return 1
    finally:
        await supervisor.stop_all()
        # Without the CA's key, which was never written, these certificates die with the run.
        shutil.rmtree(pki_dir(settings.base_port), ignore_errors=True)


def _interrupt(signum: int, _frame: object) -> None:
    """Turn SIGTERM into KeyboardInterrupt so clean-up runs outside the event loop too."""
    raise KeyboardInterrupt


def command_run() -> int:
    """Run the whole stack until Ctrl-C or SIGTERM."""
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        settings = StackSettings.from_env()
        with admin_database() as admin_dsn:
            code = asyncio.run(serve(admin_dsn, settings))
            # Closing the loop reset SIGTERM to its default; Postgres must still be stopped.
            signal.signal(signal.SIGTERM, _interrupt)
    except KeyboardInterrupt:
        say("interrupted; stopped")
        return 0
    except (StackError, EmbeddedPostgresError) as err:
        warn(f"error: {err}")
        return 1
    if code == 0:
        say("stack stopped")
    return code


def command_migrate() -> int:
    """Apply pending migrations and print them."""
    try:
        with admin_database() as admin_dsn:
            report_migrations(asyncio.run(migrate_all(admin_dsn)))
    except (StackError, EmbeddedPostgresError, OSError, asyncpg.PostgresError) as err:
        warn(f"error: {err}")
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line and run the command."""
    parser = argparse.ArgumentParser(
        prog="python -m devtools.stack",
        description=__doc__.split("\n\n", 1)[0] if __doc__ else None,
    )
    parser.add_argument("command", choices=["migrate", "run"])
    args = parser.parse_args(argv)
    return command_migrate() if args.command == "migrate" else command_run()


if __name__ == "__main__":
    sys.exit(main())
