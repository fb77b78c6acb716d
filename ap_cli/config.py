"""Find the control plane endpoint and API key the client talks to."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

ENDPOINT_ENV = "AP_ENDPOINT"
API_KEY_ENV = "AP_API_KEY"
CONFIG_PATH_ENV = "AP_CLIENT_CONFIG"


class ConfigError(Exception):
    """The client configuration is missing or unreadable."""


@dataclass(frozen=True)
class ClientConfig:
    """Where the control plane listens and the key that authenticates calls to it."""

    endpoint: str
    api_key: str


def default_config_path(environ: Mapping[str, str] | None = None) -> Path:
    """Return the client config file path, honouring AP_CLIENT_CONFIG and XDG_CONFIG_HOME."""
    env = os.environ if environ is None else environ
    explicit = env.get(CONFIG_PATH_ENV)
    if explicit:
        return Path(explicit).expanduser()
    base = env.get("XDG_CONFIG_HOME") or str(Path("~/.config").expanduser())
    return Path(base) / "agentplatform" / "client.json"


def load_client_config(environ: Mapping[str, str] | None = None) -> ClientConfig:
    """Load the endpoint and API key from the environment, else from the client config file.

    Each of AP_ENDPOINT and AP_API_KEY overrides the matching file entry on its own, so a
    developer can point the key written by `make run` at another endpoint.
    """
    env = os.environ if environ is None else environ
    endpoint = env.get(ENDPOINT_ENV, "").strip()
    api_key = env.get(API_KEY_ENV, "").strip()
    path = default_config_path(env)
    if not (endpoint and api_key):
        stored = _read_config_file(path, required=bool(env.get(CONFIG_PATH_ENV)))
        endpoint = endpoint or stored.get("endpoint", "")
        api_key = api_key or stored.get("api_key", "")
    if not (endpoint and api_key):
        missing = " and ".join(
            name for name, value in (("endpoint", endpoint), ("api key", api_key)) if not value
        )
        raise ConfigError(
            f"no {missing} configured: set {ENDPOINT_ENV} and {API_KEY_ENV}, or write "
            f'{path} as {{"endpoint": "HOST:PORT", "api_key": "KEY"}} '
            f"(`make run` writes it; {CONFIG_PATH_ENV} picks another file)"
        )
    return ClientConfig(endpoint=endpoint, api_key=api_key)


def _read_config_file(path: Path, *, required: bool) -> dict[str, str]:
    """Return the string entries of a client config file; an absent default file is empty."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if required:
            raise ConfigError(f"{CONFIG_PATH_ENV} names {path}, which does not exist") from None
        return {}
    except OSError as err:
        raise ConfigError(f"cannot read {path}: {err.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f'{path} must hold a JSON object like {{"endpoint": …, "api_key": …}}')
    return {
        key: value.strip()
        for key, value in data.items()
        if key in ("endpoint", "api_key") and isinstance(value, str)
    }
