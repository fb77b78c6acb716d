"""What an extra replica needs to join a running `make run` stack: ``worker.env``, ``web.env``."""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pydantic_settings import BaseSettings

from devtools.stack.layout import relative, run_dir
from devtools.stack.owner import write_private_file
from devtools.stack.settings import StackSettings
from services.rpc.hosted_models import HostedModelSettings
from services.web.settings import WebSettings
from services.worker.settings import WorkerSettings


def _setting_names(*settings: type[BaseSettings]) -> frozenset[str]:
    """Return the environment variables settings classes read."""
    return frozenset(
        (
            info.validation_alias
            if isinstance(info.validation_alias, str)
            else f"{cls.model_config.get('env_prefix', '')}{field}"
        ).upper()
        for cls in settings
        for field, info in cls.model_fields.items()
    )


@dataclass(frozen=True)
class Joiner:
    """A service more replicas of which may join the stack, and what its file holds.

    The file holds what the service reads (`reads`) but not what each replica picks for
    itself (`own`), with `fixed` on top; `title` names one replica, `plural` several.
    """

    service: str
    title: str
    plural: str
    reads: frozenset[str]
    own: frozenset[str]
    fixed: Mapping[str, str]

    @property
    def file_name(self) -> str:
        """Return the file's name in the stack's run directory."""
        return f"{self.service}.env"


# Neither file holds the model API key: a secret of the user's, which an extra worker
# inherits from their shell. A worker serves health on a free port of its choosing (its
# metrics port follows); an edge takes AP_HTTP_PORT from the shell, default 8080.
JOINERS = (
    Joiner(
        "worker",
        "worker",
        "workers",
        _setting_names(WorkerSettings, HostedModelSettings),
        frozenset({"AP_MODEL_API_KEY", "AP_METRICS_PORT", "AP_WORKER_ID"}),
        {"AP_GRPC_PORT": "0"},
    ),
    Joiner(
        "web",
        "HTTP edge",
        "edges",
        _setting_names(WebSettings),
        frozenset({"AP_HTTP_PORT", "AP_METRICS_PORT"}),
        {},
    ),
)


def write_join_file(
    settings: StackSettings, joiner: Joiner, service_env: Mapping[str, str]
) -> Path:
    """Write what another replica of a service needs to join this stack, secrets among it.

    Mode 600, in the stack's run directory, removed when the stack stops (the secrets and the
    certificates it names are new on every start). Never printed: the banner names the file.
    """
    path = run_dir(settings.ports.base) / joiner.file_name
    wanted = joiner.reads - joiner.own
    chosen = {name: value for name, value in sorted(service_env.items()) if name in wanted}
    chosen.update(joiner.fixed)
    lines = [
        f"# An extra {joiner.title} for the `make run` stack on {settings.endpoint}, valid while",
        "# it runs. It holds a secret of the stack: mode 600, never copy it into a log. Use it as",
        f"#   set -a; . {relative(path)}; set +a; .venv/bin/python -m services.{joiner.service}",
        *(f"{name}={shlex.quote(value)}" for name, value in chosen.items()),
    ]
    write_private_file(path, "\n".join(lines) + "\n")
    return path
