"""The CLI's configuration is the SDK's: `agentplatform.ClientConfig` finds it.

Kept as a module so tools that import it from here (`make run` writes the file at
`default_config_path()`, the benchmarks load it) read the one implementation.
"""

from __future__ import annotations

from collections.abc import Mapping

from agentplatform import ClientConfig, ConfigError, default_config_path

__all__ = ["ClientConfig", "ConfigError", "default_config_path", "load_client_config"]


def load_client_config(environ: Mapping[str, str] | None = None) -> ClientConfig:
    """Resolve the configuration from the environment, else the client file."""
    return ClientConfig.resolve(environ=environ)
