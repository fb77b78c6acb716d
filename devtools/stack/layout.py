"""Where a `make run` stack keeps its files.

Files, all under the git-ignored ``var/`` (``make clean`` removes it)::

    var/pg/                        the embedded Postgres's data, shared by this clone's stacks
    var/logs/<child>.log           each child's output
    var/vault/master-keys.json     the vault's master keys, created once (mode 600)
    var/pki/<base port>/           this run's development CA and certificates
"""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
VAR_DIR = REPO_ROOT / "var"
PG_DATA_DIR = VAR_DIR / "pg"
LOG_DIR = VAR_DIR / "logs"
MASTER_KEY_FILE = VAR_DIR / "vault" / "master-keys.json"
PKI_DIR = VAR_DIR / "pki"


def relative(path: Path) -> str:
    """Show a path relative to the repository when it lies inside it."""
    try:
        return str(path.relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def pki_dir(base_port: int) -> Path:
    """Return where the stack on `base_port` keeps its development certificates."""
    return PKI_DIR / str(base_port)


def host_port(host: str, port: int) -> str:
    """Join a host and a port, bracketing IPv6 literals."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
