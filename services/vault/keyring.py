"""The versioned master key: loaded from a key file or the environment, never the database.

The key file (`AP_VAULT_MASTER_KEY_FILE`, mode 600) or `AP_VAULT_MASTER_KEYS` holds:

    {"format": "ap.vault.master-keys/v1",
     "active": 2,
     "keys": {"1": "<base64 of 32 random bytes>", "2": "<…>"}}

`active` is the version new data keys are wrapped under. The database records each version
with a key check value (HMAC-SHA256 of a fixed label under the key), so a key file holding a
different key under a known version number is caught at start-up instead of at the first
decrypt.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import os
import secrets
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_FILE_FORMAT = "ap.vault.master-keys/v1"
MASTER_KEY_BYTES = 32
_KEY_CHECK_LABEL = b"ap.vault.key-check/v1"


class KeyringError(Exception):
    """The master keys are missing, malformed, unsafe or disagree with the database."""


def key_check(key: bytes) -> bytes:
    """Return the value that identifies a master key without revealing it."""
    return hmac.new(key, _KEY_CHECK_LABEL, hashlib.sha256).digest()[:16]


@dataclass(frozen=True)
class MasterKey:
    """One master-key version and the cipher that wraps data keys under it."""

    version: int
    key: bytes = field(repr=False)
    aead: AESGCM = field(repr=False, compare=False)

    @property
    def check(self) -> bytes:
        """Return this key's check value."""
        return key_check(self.key)


@dataclass(frozen=True)
class Keyring:
    """The master-key versions the vault holds, the active one, and where they came from."""

    keys: dict[int, MasterKey] = field(repr=False)
    active_version: int
    # The file the keys were read from; None when they came from the environment.
    path: Path | None = None

    @property
    def active(self) -> MasterKey:
        """Return the version new data keys are wrapped under."""
        return self.keys[self.active_version]

    @property
    def versions(self) -> list[int]:
        """Return the versions held, oldest first."""
        return sorted(self.keys)

    def get(self, version: int) -> MasterKey | None:
        """Return a version, or None when this keyring lacks it."""
        return self.keys.get(version)

    def with_new_version(self, at_least: int) -> Keyring:
        """Return a copy with a fresh random version, numbered at least `at_least`, active."""
        version = max([at_least - 1, *self.keys]) + 1
        key = secrets.token_bytes(MASTER_KEY_BYTES)
        keys = dict(self.keys) | {version: MasterKey(version, key, AESGCM(key))}
        return Keyring(keys, version, self.path)

    def to_json(self) -> str:
        """Serialise the keyring in the key file's format."""
        return json.dumps(
            {
                "format": KEY_FILE_FORMAT,
                "active": self.active_version,
                "keys": {
                    str(v): base64.b64encode(self.keys[v].key).decode() for v in self.versions
                },
            },
            indent=2,
        )

    def save(self, *, exclusive: bool = False) -> None:
        """Write the key file atomically (mode 600, on disk before it is renamed into place).

        With `exclusive`, an existing file is left alone and FileExistsError raised.
        """
        if self.path is None:
            raise KeyringError("the master keys come from the environment; there is no file")
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".master-keys-", suffix=".json")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(self.to_json() + "\n")
                out.flush()
                os.fsync(out.fileno())
            if exclusive:
                os.link(tmp, self.path)
                os.unlink(tmp)
            else:
                os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        with contextlib.suppress(OSError):  # some filesystems cannot fsync a directory
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)


def parse_keyring(text: str, origin: str, path: Path | None = None) -> Keyring:
    """Parse the key file format; errors name `origin` and never include key material."""
    try:
        data = json.loads(text)
    except ValueError:
        raise KeyringError(f"{origin} is not valid JSON") from None
    if not isinstance(data, dict) or data.get("format") != KEY_FILE_FORMAT:
        raise KeyringError(f"{origin} must be a JSON object with format {KEY_FILE_FORMAT!r}")
    raw_keys = data.get("keys")
    if not isinstance(raw_keys, dict) or not raw_keys:
        raise KeyringError(f"{origin} must hold at least one key under 'keys'")
    keys: dict[int, MasterKey] = {}
    for name, encoded in raw_keys.items():
        if not (isinstance(name, str) and name.isdigit() and int(name) >= 1):
            raise KeyringError(f"{origin}: key versions are positive integers, not {name!r}")
        try:
            key = base64.b64decode(encoded, validate=True) if isinstance(encoded, str) else b""
        except (binascii.Error, ValueError):
            key = b""
        if len(key) != MASTER_KEY_BYTES:
            raise KeyringError(
                f"{origin}: key version {name} must be {MASTER_KEY_BYTES} bytes in base64"
            )
        keys[int(name)] = MasterKey(int(name), key, AESGCM(key))
    active = data.get("active", max(keys))
    if not isinstance(active, int) or active not in keys:
        raise KeyringError(f"{origin}: 'active' must be one of the key versions {sorted(keys)}")
    return Keyring(keys, active, path)


def load_keyring_file(path: Path) -> Keyring:
    """Read the key file, refusing one that others than its owner may read."""
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise KeyringError(f"cannot read the master key file {path}: {err.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyringError(f"the master key file {path} is readable by others; chmod 600 it")
    return parse_keyring(text, f"the master key file {path}", path)


def new_keyring_file(path: Path) -> Keyring:
    """Create a key file with one random version (mode 600, its folder 700).

    Raises FileExistsError rather than replace a key file, which may be all that can still
    read some database's secrets.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    keyring = Keyring({}, 0, path).with_new_version(1)
    keyring.save(exclusive=True)
    return keyring
