"""Start the whole stack, print where it is, supervise it, and stop it in order.

`run` (what ``make run`` does) brings up Postgres, migrates, bootstraps the first workspace,
starts the deterministic dev model unless a hosted model is configured, starts the services
as subprocesses, waits until each one is ready (SERVING over gRPC health checking; the HTTP
edge's /readyz), writes the client config file that ``ap`` reads and what extra replicas
need, and serves until Ctrl-C, SIGTERM or SIGHUP.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import sys
from collections.abc import Callable, Mapping
from typing import IO

import asyncpg

from ap_cli.config import default_config_path
from devtools.embedded_pg import EmbeddedPostgresError
from devtools.pki import DevPki, issue_dev_pki
from devtools.processes import (
    NotReadyError,
    Service,
    Supervisor,
    bind_error,
    port_holder,
    wait_http_ok,
)
from devtools.processes import wait_serving as wait_grpc_serving
from devtools.stack.banner import NAME_WIDTH, Started, port_table, print_banner
from devtools.stack.console import StackError, say, warn
from devtools.stack.database import (
    AdminDatabase,
    admin_database,
    report_migrations,
    service_dsn,
)
from devtools.stack.layout import (
    DEV_MODEL_IDS,
    DEV_MODEL_NAME,
    LOG_DIR,
    MASTER_KEY_FILE,
    PORTS_PER_STACK,
    REPO_ROOT,
    host_port,
    pki_dir,
    relative,
)
from devtools.stack.owner import owner_key, write_client_config
from devtools.stack.replicas import JOINERS, write_join_file
from devtools.stack.rundir import StackLock
from devtools.stack.settings import RUN_SECRETS, SERVICES, Probe, ServiceSpec, StackSettings
from services.migrate import SCHEMAS, migrate_all
from services.vault.keyring import new_keyring_file

# The supervisor's own certificate, for health-checking the services that require mTLS.
STACK_IDENTITY = "stack"

_READY_TIMEOUT_S = 30.0
_TAIL_LINES = 30
# After its grace a draining worker hands back what it still holds, within 5 s, then exits.
_HAND_BACK_S = 10.0
_ROLES = {schema.schema: schema.role for schema in SCHEMAS}


def check_ports_free(settings: StackSettings) -> None:
    """Fail early, and clearly, when a port the stack needs is taken."""
    wanted = [(settings.bind_host, settings.port(spec), spec.name) for spec in SERVICES]
    wanted += [
        (settings.bind_host, settings.metrics_port(spec), f"{spec.name}'s metrics")
        for spec in SERVICES
    ]
    if settings.model_base_url is None:
        wanted.append(("127.0.0.1", settings.ports.devmodel, "the dev model"))
    for host, port, what in wanted:
        if (err := bind_error(host, port)) is not None:
            holder = port_holder(port)
            raise StackError(
                f"{what} cannot listen on {host_port(host, port)}: {err.strerror}"
                + (f" ({holder})" if holder else "")
                + ". Is another `make run` running, or one's services left over? "
                f"AP_STACK_BASE_PORT={settings.ports.base + PORTS_PER_STACK} takes the next "
                f"{PORTS_PER_STACK} ports"
            )


def describe(child: Service) -> str:
    """Return a child's last output and where its full log is."""
    log = relative(LOG_DIR / f"{child.name}.log")
    return f"last output of {child.name} (full log: {log}):\n{child.describe_tail()}"


class Children:
    """The stack's children: each one's output goes to the terminal, prefixed, and its log."""

    def __init__(self, lock: StackLock) -> None:
        """Start with no children; `lock` learns their process group once there is one."""
        self.supervisor = Supervisor()
        self._lock = lock
        self._logs: list[IO[str]] = []

    async def start(
        self, name: str, args: list[str], env: Mapping[str, str], *, port: int
    ) -> Service:
        """Start a child in the supervisor's current wave, logging to var/logs/<name>.log."""
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        log = (LOG_DIR / f"{name}.log").open("a", encoding="utf-8", buffering=1)
        self._logs.append(log)
        log.write(f"--- {name} started by devtools.stack (pid {os.getpid()}) ---\n")
        first = self.supervisor.process_group is None
        child = await self.supervisor.start(
            name,
            args,
            env,
            port=port,
            cwd=REPO_ROOT,
            keep_lines=_TAIL_LINES,
            on_line=_tee(name, log),
            stop_timeout=_stop_timeout(env),
        )
        if first:
            self._lock.record(process_group=self.supervisor.process_group)
        return child

    def kill(self) -> None:
        """Kill every child at once, without waiting for drains."""
        if self.supervisor.process_group is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.supervisor.process_group, signal.SIGKILL)

    async def stop(self) -> None:
        """Stop every child, latest wave first, then close the logs."""
        await self.supervisor.stop_all(on_kill=_report_kill)
        for log in self._logs:
            log.close()
        self._logs.clear()


def _shutdown_grace(env: Mapping[str, str]) -> float:
    """Return the AP_SHUTDOWN_GRACE_SECONDS the services get (their default: 5)."""
    try:
        return float(env.get("AP_SHUTDOWN_GRACE_SECONDS") or 5)
    except ValueError:
        return 5.0  # the service itself refuses the value and exits, naming it


def _stop_timeout(env: Mapping[str, str]) -> float:
    """Return how long a child may take to stop: its grace, then handing runs back."""
    return _shutdown_grace(env) + _HAND_BACK_S


def _tee(name: str, log: IO[str]) -> Callable[[str], None]:
    def copy(line: str) -> None:
        log.write(line + "\n")
        print(f"{name:<{NAME_WIDTH}} | {line}", flush=True)

    return copy


def _report_kill(child: Service) -> None:
    warn(f"{child.name} did not stop within {child.stop_timeout:g}s; killing it")


def _base_env() -> dict[str, str]:
    """Return the environment every child inherits."""
    env = dict(os.environ)
    # Children get role DSNs; the administrative URL must not leak into them. Nor may a
    # secret of the shell's stand in for one of this run's, or reach a service not given it.
    for name in ("AP_DATABASE_URL", *RUN_SECRETS):
        env.pop(name, None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def service_env(
    base: Mapping[str, str],
    spec: ServiceSpec,
    settings: StackSettings,
    admin_dsn: str,
    run_secrets: Mapping[str, str],
    *,
    pki: DevPki,
) -> dict[str, str]:
    """Return one service's environment: its ports, identity, secrets, database and peers."""
    env = dict(base)
    if spec.certificate:
        env.update(pki.env(spec.name))
    env.setdefault("AP_LOG_FORMAT", "console")
    env["AP_GRPC_HOST"] = settings.bind_host
    env[spec.port_variable] = str(settings.port(spec))
    env["AP_METRICS_PORT"] = str(settings.metrics_port(spec))
    env.update({name: run_secrets[name] for name in spec.secrets})
    if spec.database:
        env["AP_DATABASE_URL"] = service_dsn(admin_dsn, spec.name, _ROLES[spec.name])
    for peer in SERVICES:
        if peer.name in spec.peers:
            env[f"AP_{peer.name.upper()}_ADDRESS"] = settings.address(peer)
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
                f"vault: created the master key file {relative(MASTER_KEY_FILE)} (mode 600); "
                "stored secrets cannot be read without it"
            )
        except FileExistsError:
            say(f"vault: master keys in {relative(MASTER_KEY_FILE)}")
    hosts = [] if settings.bind_host in ("0.0.0.0", "::") else [settings.bind_host]
    names = [spec.name for spec in SERVICES if spec.certificate] + [STACK_IDENTITY]
    # One folder per stack (they differ by port), so concurrent stacks never swap CAs.
    directory = pki_dir(settings.ports.base)
    pki = issue_dev_pki(directory, names, hosts=hosts)
    say(f"mTLS: a fresh development CA and service certificates in {relative(directory)}")
    return pki


async def start_model(children: Children, settings: StackSettings, env: dict[str, str]) -> str:
    """Point `env` at the hosted model, or start the dev model; return what is in use."""
    if settings.model_name == "AP_MODELS":
        say("models: those listed in AP_MODELS")
        return settings.model_base_url or ""
    if settings.model_base_url and settings.model_name:
        hosted = f"{settings.model_name} at {settings.model_base_url}"
        say(f"model: {hosted} (from AP_MODEL_BASE_URL and AP_MODEL_NAME)")
        return hosted
    port = settings.ports.devmodel
    child = await children.start(
        "devmodel",
        [sys.executable, "-m", "devtools.devmodel", "--host", "127.0.0.1", "--port", str(port)],
        env,
        port=port,
    )
    base_url = f"http://127.0.0.1:{port}/v1"
    # The dev model speaks every wire format: offer one model per format, Chat Completions
    # the default, so a session (or bench/run_roundtrip.py --api) can pick any.
    env["AP_MODELS"] = json.dumps(
        [
            {"id": model_id, "api": api, "base_url": base_url, "model": DEV_MODEL_NAME}
            for api, model_id in DEV_MODEL_IDS.items()
        ]
    )
    env["AP_MODEL_DEFAULT"] = DEV_MODEL_NAME
    say(
        f"model: the deterministic dev model at {base_url}, NOT a real LLM: replies are canned "
        f"text; offered as {', '.join(DEV_MODEL_IDS.values())} (one per wire format). Set "
        "AP_MODEL_BASE_URL and AP_MODEL_NAME (and AP_MODEL_API_KEY), or AP_MODELS, for a "
        "real model."
    )
    try:
        await wait_http_ok(
            f"http://127.0.0.1:{port}/healthz", timeout=_READY_TIMEOUT_S, service=child
        )
    except NotReadyError as err:
        raise StackError(f"{err}\n{describe(child)}") from None
    return f"deterministic dev model at {base_url} (not a real LLM)"


async def start_stack(
    database: AdminDatabase, settings: StackSettings, children: Children
) -> Started:
    """Migrate, bootstrap, start the model and the services; wait until all are SERVING."""
    admin_dsn = database.dsn
    check_ports_free(settings)
    report_migrations(await migrate_all(admin_dsn))
    config_path = default_config_path()
    api_key = await owner_key(admin_dsn, settings.owner_name, config_path)
    # Fresh per run: nothing outside this stack can pose as one of its services, or seal a
    # sign-in cookie its edge accepts.
    run_secrets = {name: secrets.token_urlsafe(32) for name in RUN_SECRETS}
    pki = prepare_vault(settings)
    probe = pki.tls(STACK_IDENTITY)
    env = _base_env()
    model = await start_model(children, settings, env)

    envs = {
        spec.name: service_env(env, spec, settings, admin_dsn, run_secrets, pki=pki)
        for spec in SERVICES
    }

    async def launch(spec: ServiceSpec) -> None:
        child = await children.start(
            spec.name,
            [sys.executable, "-m", f"services.{spec.name}"],
            envs[spec.name],
            port=settings.port(spec),
        )
        try:
            if spec.probe is Probe.HTTP:
                url = f"http://{settings.address(spec)}{spec.ready_path}"
                await wait_http_ok(url, timeout=_READY_TIMEOUT_S, service=child)
            else:
                await wait_grpc_serving(
                    settings.address(spec),
                    timeout=_READY_TIMEOUT_S,
                    tls=probe if spec.probe is Probe.GRPC_MTLS else None,
                    service=child,
                )
        except NotReadyError as err:
            raise StackError(f"{err}\n{describe(child)}") from None

    for wave in sorted({spec.wave for spec in SERVICES}):
        children.supervisor.new_wave()
        await asyncio.gather(*(launch(spec) for spec in SERVICES if spec.wave == wave))

    write_client_config(config_path, settings.endpoint, api_key)
    join_files = [
        (joiner.plural, write_join_file(settings, joiner, envs[joiner.service]))
        for joiner in JOINERS
    ]
    logs = [child.name for child in children.supervisor.children]
    return Started(
        settings.endpoint,
        api_key,
        config_path,
        model,
        logs,
        settings.ports,
        port_table(settings, database),
        join_files,
        [
            (link.label, f"http://{settings.address(spec)}{link.path}", link.description)
            for spec in SERVICES
            for link in spec.links
        ],
    )


async def serve(database: AdminDatabase, settings: StackSettings, lock: StackLock) -> int:
    """Start the stack and supervise it until a signal (0) or a child's death (1).

    The children have a process group of their own, so a terminal's Ctrl-C reaches only
    this process, which stops them in order: the worker first, draining its runs and
    handing back the rest while the control plane still answers, then the HTTP edge, then
    the others. A second Ctrl-C kills everything at once.
    """
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    children = Children(lock)

    def on_signal() -> None:
        if not stopping.is_set():
            stopping.set()
            return
        warn("killing every service now")
        children.kill()

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, on_signal)
    try:
        startup = asyncio.create_task(start_stack(database, settings, children))
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
        died = await children.supervisor.watch(stopping)
        if died is not None:
            warn(f"error: {died.name} exited unexpectedly with code {died.returncode}")
            warn(describe(died))
            warn("stopping the stack")
            return 1
        grace = _shutdown_grace(os.environ)
        say(
            f"stopping the stack: the worker first (it finishes its runs for up to {grace:g}s, "
            "then hands back the rest), then the HTTP edge, then the other services; Ctrl-C "
            "again kills them all"
        )
        return 0
    except (StackError, OSError, asyncpg.PostgresError) as err:
        warn(f"error: {err}")
        return 1
    finally:
        await children.stop()
        # Without the CA's key, which was never written, these certificates die with the run.
        shutil.rmtree(pki_dir(settings.ports.base), ignore_errors=True)


def _interrupt(signum: int, _frame: object) -> None:
    """Turn SIGTERM and SIGHUP into KeyboardInterrupt, so clean-up runs outside the loop too."""
    raise KeyboardInterrupt


def command_run() -> int:
    """Run the whole stack until Ctrl-C, SIGTERM or SIGHUP."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    lock: StackLock | None = None
    try:
        settings = StackSettings.from_env()
        lock = StackLock(settings.ports.base)
        lock.acquire(settings.endpoint)
        with admin_database(settings.ports.postgres) as database:
            code = asyncio.run(serve(database, settings, lock))
            # Closing the loop reset the handlers to their defaults; Postgres must still stop.
            for sig in (signal.SIGTERM, signal.SIGHUP):
                signal.signal(sig, _interrupt)
    except KeyboardInterrupt:
        say("interrupted; stopped")
        return 0
    except (StackError, EmbeddedPostgresError) as err:
        warn(f"error: {err}")
        return 1
    finally:
        if lock is not None:
            lock.release()
    if code == 0:
        say("stack stopped")
    return code


def command_migrate() -> int:
    """Apply pending migrations and print them."""
    try:
        settings = StackSettings.from_env()
        with admin_database(settings.ports.postgres) as database:
            report_migrations(asyncio.run(migrate_all(database.dsn)))
    except (StackError, EmbeddedPostgresError, OSError, asyncpg.PostgresError) as err:
        warn(f"error: {err}")
        return 1
    return 0
