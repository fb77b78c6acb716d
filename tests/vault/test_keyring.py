"""The master key file: its format, its permissions, and errors that hold no key material."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import pytest

from services.vault.keyring import (
    KEY_FILE_FORMAT,
    KeyringError,
    load_keyring_file,
    new_keyring_file,
    parse_keyring,
)

KEY = base64.b64encode(b"k" * 32).decode()


def test_a_new_key_file_is_private_and_reads_back(tmp_path: Path) -> None:
    """The file is mode 600 in a folder of mode 700, and loads the same keys."""
    path = tmp_path / "vault" / "master-keys.json"
    made = new_keyring_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    loaded = load_keyring_file(path)
    assert loaded.versions == [1] and loaded.active_version == 1
    assert loaded.active.key == made.active.key


def test_adding_a_version_keeps_the_old_ones_and_activates_the_new(tmp_path: Path) -> None:
    """with_new_version numbers past what it is told the database knows."""
    path = tmp_path / "master-keys.json"
    ring = new_keyring_file(path).with_new_version(at_least=5)
    ring.save()
    loaded = load_keyring_file(path)
    assert loaded.versions == [1, 5] and loaded.active_version == 5
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_key_file_others_can_read_is_refused(tmp_path: Path) -> None:
    """A group- or world-readable key file does not load."""
    path = tmp_path / "master-keys.json"
    new_keyring_file(path)
    os.chmod(path, 0o644)
    with pytest.raises(KeyringError, match="chmod 600"):
        load_keyring_file(path)


@pytest.mark.parametrize(
    ("document", "complaint"),
    [
        ("not json", "not valid JSON"),
        (json.dumps({"keys": {"1": KEY}}), "format"),
        (json.dumps({"format": KEY_FILE_FORMAT, "keys": {}}), "at least one key"),
        (json.dumps({"format": KEY_FILE_FORMAT, "keys": {"0": KEY}}), "positive integers"),
        (json.dumps({"format": KEY_FILE_FORMAT, "keys": {"1": KEY[:-8]}}), "32 bytes"),
        (json.dumps({"format": KEY_FILE_FORMAT, "keys": {"1": "%%%"}}), "32 bytes"),
        (json.dumps({"format": KEY_FILE_FORMAT, "keys": {"1": KEY}, "active": 2}), "'active'"),
    ],
)
def test_malformed_keyrings_are_refused_without_echoing_keys(document: str, complaint: str) -> None:
    """Each mistake has its own message, and no message repeats a key."""
    with pytest.raises(KeyringError, match=complaint) as caught:
        parse_keyring(document, "AP_VAULT_MASTER_KEYS")
    assert KEY[:-8] not in str(caught.value)
