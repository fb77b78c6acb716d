"""Find the control plane's endpoint, the API key and the TLS settings a client uses.

Each setting comes from the first place that has it:

    1. the arguments:      Client(endpoint, api_key, tls=, ca_file=)
    2. the environment:    AP_ENDPOINT, AP_API_KEY, AP_CA_FILE
    3. the client file:    $AP_CLIENT_CONFIG, else
                           ${XDG_CONFIG_HOME:-~/.config}/agentplatform/client.json, holding
                           {"endpoint": "HOST:PORT", "api_key": "KEY", "ca_file": "PATH"}

`make run` writes the file for the local stack and `ap` reads it through this module. The
file is read only when the endpoint or the key is not given otherwise; an absent default
file counts as empty, an absent file that AP_CLIENT_CONFIG names is an error.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENDPOINT_ENV = "AP_ENDPOINT"
API_KEY_ENV = "AP_API_KEY"
CA_FILE_ENV = "AP_CA_FILE"
CONFIG_PATH_ENV = "AP_CLIENT_CONFIG"

# Schemes that say how to connect; a target without one is a gRPC target (HOST:PORT,
# dns:///…, unix:…) dialled in plaintext unless TLS is asked for.
_TLS_SCHEMES = {"https": 443, "grpcs": 443}
_PLAINTEXT_SCHEMES = {"http": 80, "grpc": None}
_GRPC_SCHEMES = ("dns:", "unix:", "unix-abstract:", "ipv4:", "ipv6:")


class ConfigError(ValueError):
    """The client configuration is missing, unreadable or contradicts itself."""


@dataclass(frozen=True)
class ClientConfig:
    """Where the control plane listens, the key that authenticates calls, and how to dial it.

    `target` is what gRPC dials (HOST:PORT, scheme removed); `tls` says whether the channel
    is encrypted; `ca_file` is a PEM bundle to verify the server with (default: the system's
    roots). The key is left out of `repr`, so logging a config cannot leak it.
    """

    endpoint: str
    api_key: str = field(repr=False)
    target: str
    tls: bool
    ca_file: Path | None = None

    @classmethod
    def resolve(
        cls,
        endpoint: str | None = None,
        api_key: str | None = None,
        *,
        tls: bool | None = None,
        ca_file: str | os.PathLike[str] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> ClientConfig:
        """Combine the arguments, the environment and the client file, in that order.

        Raise `ConfigError` naming what is missing, or what is wrong with the file.
        """
        env = os.environ if environ is None else environ
        endpoint = (endpoint or env.get(ENDPOINT_ENV, "")).strip()
        api_key = (api_key or env.get(API_KEY_ENV, "")).strip()
        ca = str(ca_file or env.get(CA_FILE_ENV, "")).strip()
        path = default_config_path(env)
        if not (endpoint and api_key):
            stored = _read_config_file(path, required=bool(env.get(CONFIG_PATH_ENV)))
            endpoint = endpoint or _text(stored, "endpoint")
            api_key = api_key or _text(stored, "api_key")
            ca = ca or _text(stored, "ca_file")
            stored_tls = stored.get("tls")
            tls = tls if tls is not None else stored_tls if isinstance(stored_tls, bool) else None
        if not (endpoint and api_key):
            missing = " and ".join(
                name for name, value in (("endpoint", endpoint), ("API key", api_key)) if not value
            )
            raise ConfigError(
                f"no {missing} configured: pass them to the client, set {ENDPOINT_ENV} and "
                f'{API_KEY_ENV}, or write {path} as {{"endpoint": "HOST:PORT", "api_key": "KEY"}} '
                f"(`make run` writes it; {CONFIG_PATH_ENV} picks another file)"
            )
        target, use_tls = parse_endpoint(endpoint, tls=tls, has_ca=bool(ca))
        return cls(
            endpoint=endpoint,
            api_key=api_key,
            target=target,
            tls=use_tls,
            ca_file=Path(ca).expanduser() if ca else None,
        )

    def root_certificates(self) -> bytes | None:
        """Return the PEM bundle of `ca_file`, or None for the system's roots."""
        if self.ca_file is None:
            return None
        try:
            return self.ca_file.read_bytes()
        except OSError as err:
            raise ConfigError(f"cannot read the CA file {self.ca_file}: {err.strerror}") from None


def parse_endpoint(endpoint: str, *, tls: bool | None, has_ca: bool) -> tuple[str, bool]:
    """Return the gRPC target of an endpoint and whether to dial it with TLS.

    `https://` and `grpcs://` ask for TLS (port 443 by default); `http://` and `grpc://`
    for plaintext; a bare HOST:PORT is plaintext unless `tls` is True or a CA file is given.
    """
    scheme, sep, rest = endpoint.partition("://")
    if not sep or endpoint.startswith(_GRPC_SCHEMES):
        return endpoint, bool(tls) or (tls is None and has_ca)
    scheme = scheme.lower()
    if scheme not in _TLS_SCHEMES and scheme not in _PLAINTEXT_SCHEMES:
        raise ConfigError(
            f"endpoint {endpoint!r} has an unknown scheme; use HOST:PORT, https:// or grpcs:// "
            "(TLS), http:// or grpc:// (plaintext)"
        )
    host_port = rest.rstrip("/")
    if not host_port or "/" in host_port:
        raise ConfigError(f"endpoint {endpoint!r} must be SCHEME://HOST[:PORT], with no path")
    wants_tls = scheme in _TLS_SCHEMES
    if tls is not None and tls != wants_tls:
        raise ConfigError(f"endpoint {endpoint!r} contradicts tls={tls}")
    if has_ca and not wants_tls:
        raise ConfigError(f"a CA file is set, but endpoint {endpoint!r} is plaintext")
    default_port = _TLS_SCHEMES.get(scheme) or _PLAINTEXT_SCHEMES.get(scheme)
    if not _has_port(host_port):
        if default_port is None:
            raise ConfigError(f"endpoint {endpoint!r} needs a port")
        host_port = f"{host_port}:{default_port}"
    return host_port, wants_tls


def _has_port(host_port: str) -> bool:
    """Say whether HOST:PORT (or [IPv6]:PORT) names a port."""
    if host_port.startswith("["):
        return "]:" in host_port
    return ":" in host_port


def default_config_path(environ: Mapping[str, str] | None = None) -> Path:
    """Return the client file's path, honouring AP_CLIENT_CONFIG and XDG_CONFIG_HOME."""
    env = os.environ if environ is None else environ
    explicit = env.get(CONFIG_PATH_ENV)
    if explicit:
        return Path(explicit).expanduser()
    base = env.get("XDG_CONFIG_HOME") or str(Path("~/.config").expanduser())
    return Path(base) / "agentplatform" / "client.json"


def _text(stored: Mapping[str, Any], key: str) -> str:
    """Return a string entry of the client file, stripped; other types count as absent."""
    value = stored.get(key)
    return value.strip() if isinstance(value, str) else ""


def _read_config_file(path: Path, *, required: bool) -> dict[str, Any]:
    """Return the entries of a client file; an absent default file is empty."""
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
    return data
