"""What `make run` prints once the stack is up: where everything is, and what to try."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from devtools.stack.console import say
from devtools.stack.database import AdminDatabase
from devtools.stack.layout import LOG_DIR, PORTS_PER_STACK, StackPorts, host_port, relative
from devtools.stack.settings import SERVICES, StackSettings

READY_PREFIX = "AP stack ready on"
NAME_WIDTH = max(len(spec.name) for spec in SERVICES)


@dataclass(frozen=True)
class Started:
    """What the banner shows once everything is up."""

    endpoint: str
    api_key: str
    config_path: Path
    model: str
    logs: list[str]
    ports: StackPorts
    port_lines: list[str]
    join_files: list[tuple[str, Path]]
    urls: list[tuple[str, str, str]]


def port_table(settings: StackSettings, database: AdminDatabase) -> list[str]:
    """Describe every port of the stack's block, one line each, in port order."""
    ports = settings.ports
    host = settings.connect_host
    lines = []
    for spec in sorted(SERVICES, key=lambda spec: spec.slot):
        metrics = f"http://{host_port(host, settings.metrics_port(spec))}/metrics"
        lines.append(
            f"{settings.port(spec)}  {spec.name:<{NAME_WIDTH}}  {spec.probe.value:<16}  {metrics}"
        )
    if settings.model_base_url is None:
        lines.append(
            f"{ports.devmodel}  {'devmodel':<{NAME_WIDTH}}  http://127.0.0.1:{ports.devmodel}/v1"
        )
    else:
        lines.append(f"{ports.devmodel}  (unused: the model is {settings.model_base_url})")
    if database.embedded_port == ports.postgres:
        lines.append(f"{ports.postgres}  {'postgres':<{NAME_WIDTH}}  {database.summary}")
    else:
        lines.append(f"{ports.postgres}  (unused: Postgres is {database.summary})")
    return lines


def print_banner(started: Started) -> None:
    """Print where the stack listens, the key, and what to try next."""
    say()
    say(f"{READY_PREFIX} {started.endpoint}")
    say()
    say(f"  endpoint     {started.endpoint}  (plaintext gRPC)")
    for name, url, what in started.urls:
        say(f"  {name:<12} {url}  ({what})")
    say(f"  API key      {started.api_key}")
    say(f"  written to   {started.config_path}  (mode 600; `ap` reads it)")
    say(f"  model        {started.model}")
    for plural, path in started.join_files:
        say(f"  {plural:<12} add more with {relative(path)}  (mode 600; see README)")
    say(f"  logs         {relative(LOG_DIR)}/{{{','.join(started.logs)}}}.log")
    block = started.ports
    say(
        f"  ports        {block.base}-{block.base + PORTS_PER_STACK - 1}  (AP_STACK_BASE_PORT; "
        f"a second stack fits from {block.base + PORTS_PER_STACK})"
    )
    for line in started.port_lines:
        say(f"               {line}")
    say()
    say("Next steps:")
    say("  .venv/bin/ap chat                       # chat in a new session")
    say("  printf 'hello\\n' | .venv/bin/ap chat    # one line, non-interactive")
    say("  .venv/bin/ap sessions list")
    say(f"  grpcurl -plaintext {started.endpoint} list")
    say()
    say("Press Ctrl-C to stop.")
