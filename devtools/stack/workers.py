"""What an extra worker needs to join a running `make run` stack: ``worker.env``."""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from pathlib import Path

from pydantic_settings import BaseSettings

from devtools.stack.layout import relative, run_dir
from devtools.stack.owner import write_private_file
from devtools.stack.rundir import WORKER_ENV_NAME
from devtools.stack.settings import StackSettings
from services.rpc.settings import HostedModelSettings
from services.worker.settings import WorkerSettings


def _setting_names(*settings: type[BaseSettings]) -> frozenset[str]:
    """Return the environment variables settings classes read."""
    return frozenset(
        f"{cls.model_config.get('env_prefix', '')}{field}".upper()
        for cls in settings
        for field in cls.model_fields
    )


# What a worker reads, but not what each worker picks for itself, nor the model API key: a
# secret of the user's, which an extra worker inherits from their shell.
_EXTRA_WORKER_SETTINGS = _setting_names(WorkerSettings, HostedModelSettings) - {
    "AP_MODEL_API_KEY",
    "AP_METRICS_PORT",
    "AP_WORKER_ID",
}


def write_worker_env(settings: StackSettings, worker_env: Mapping[str, str]) -> Path:
    """Write what an extra worker needs to join this stack, the internal token among it.

    Mode 600, in the stack's run directory, removed when the stack stops (the token and the
    certificates it names are new on every start). Never printed: the banner names the file.
    """
    path = run_dir(settings.ports.base) / WORKER_ENV_NAME
    chosen = {
        name: value for name, value in sorted(worker_env.items()) if name in _EXTRA_WORKER_SETTINGS
    }
    # Health on a free port of the worker's choosing; its metrics port follows (0: free).
    chosen["AP_GRPC_PORT"] = "0"
    lines = [
        f"# An extra worker for the `make run` stack on {settings.endpoint}, valid while it",
        "# runs. It holds the internal token: mode 600, never copy it into a log. Use it as",
        f"#   set -a; . {relative(path)}; set +a; .venv/bin/python -m services.worker",
        *(f"{name}={shlex.quote(value)}" for name, value in chosen.items()),
    ]
    write_private_file(path, "\n".join(lines) + "\n")
    return path
