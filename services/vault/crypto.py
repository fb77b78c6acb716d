"""Envelope encryption of secret versions with AES-256-GCM.

One stored secret version (format 1):

    nonce        12 bytes, random              ┐ the value, under a data key used for
    ciphertext   value ‖ 16-byte GCM tag        ┘ this version only
    wrapped_key  nonce(12) ‖ data key(32) ‖ tag(16)   the data key, under a master key
    master_key_version                               which master key

Additional authenticated data binds both layers to where the row belongs, as
length-prefixed fields, so no two different tuples encode alike:

    data:  "ap.vault.secret"   ‖ format ‖ workspace ‖ secret uid ‖ secret id ‖ version
    wrap:  "ap.vault.data-key" ‖ format ‖ workspace ‖ secret uid ‖ secret id ‖ version
           ‖ master key version

A ciphertext or wrapped key copied to another workspace, secret, id or version, or a wrapped
key relabelled with another master-key version, fails authentication. `AESGCM` itself
accepts nonces of 8 bytes and more, so the lengths are checked here before it sees them.
Nonces are never taken from a caller; each data key encrypts exactly one value.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from services.vault.keyring import Keyring, MasterKey

FORMAT_V1 = 1
NONCE_BYTES = 12
TAG_BYTES = 16
DATA_KEY_BYTES = 32
WRAPPED_KEY_BYTES = NONCE_BYTES + DATA_KEY_BYTES + TAG_BYTES


class SealError(Exception):
    """A stored secret cannot be opened: malformed, of an unknown format, or tampered with.

    `cause` is one of `malformed_record`, `unknown_format`, `authentication_failed`.
    """

    def __init__(self, cause: str, message: str) -> None:
        super().__init__(message)
        self.cause = cause
        self.message = message


class MasterKeyMissing(Exception):
    """The master-key version a data key is wrapped under is not in the keyring."""

    def __init__(self, version: int) -> None:
        super().__init__(f"master-key version {version} is not in the key file")
        self.version = version


@dataclass(frozen=True)
class Binding:
    """Where a secret version belongs; authenticated, not encrypted."""

    workspace_id: uuid.UUID
    secret_uid: uuid.UUID
    secret_id: str
    version: int


@dataclass(frozen=True)
class Sealed:
    """A secret version as stored."""

    format: int
    nonce: bytes
    ciphertext: bytes = field(repr=False)
    wrapped_key: bytes = field(repr=False)
    master_key_version: int


def _lp(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


def _binding_fields(fmt: int, binding: Binding) -> bytes:
    return b"".join(
        [
            fmt.to_bytes(2, "big"),
            _lp(binding.workspace_id.bytes),
            _lp(binding.secret_uid.bytes),
            _lp(binding.secret_id.encode()),
            binding.version.to_bytes(8, "big"),
        ]
    )


def data_aad(fmt: int, binding: Binding) -> bytes:
    """Return the additional authenticated data of a value's encryption."""
    return _lp(b"ap.vault.secret") + _binding_fields(fmt, binding)


def wrap_aad(fmt: int, binding: Binding, master_key_version: int) -> bytes:
    """Return the additional authenticated data of a data key's wrapping."""
    return (
        _lp(b"ap.vault.data-key")
        + _binding_fields(fmt, binding)
        + master_key_version.to_bytes(4, "big")
    )


def _wrap(data_key: bytes, binding: Binding, master_key: MasterKey) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    aad = wrap_aad(FORMAT_V1, binding, master_key.version)
    return nonce + master_key.aead.encrypt(nonce, data_key, aad)


def seal(value: bytes, binding: Binding, master_key: MasterKey) -> Sealed:
    """Encrypt a value under a fresh data key and wrap that key under `master_key`."""
    data_key = AESGCM.generate_key(bit_length=256)
    nonce = os.urandom(NONCE_BYTES)
    ciphertext = AESGCM(data_key).encrypt(nonce, value, data_aad(FORMAT_V1, binding))
    return Sealed(
        FORMAT_V1, nonce, ciphertext, _wrap(data_key, binding, master_key), master_key.version
    )


def _check_format(sealed: Sealed) -> None:
    if sealed.format != FORMAT_V1:
        raise SealError(
            "unknown_format", f"The stored secret has format {sealed.format}, unknown here."
        )
    if len(sealed.wrapped_key) != WRAPPED_KEY_BYTES:
        raise SealError(
            "malformed_record",
            f"The stored data key is {len(sealed.wrapped_key)} bytes, not {WRAPPED_KEY_BYTES}.",
        )


def _unwrap(sealed: Sealed, binding: Binding, keyring: Keyring) -> bytes:
    _check_format(sealed)
    master_key = keyring.get(sealed.master_key_version)
    if master_key is None:
        raise MasterKeyMissing(sealed.master_key_version)
    nonce, body = sealed.wrapped_key[:NONCE_BYTES], sealed.wrapped_key[NONCE_BYTES:]
    try:
        return master_key.aead.decrypt(
            nonce, body, wrap_aad(sealed.format, binding, sealed.master_key_version)
        )
    except InvalidTag:
        raise SealError(
            "authentication_failed",
            "The stored data key failed authentication: it was altered or belongs elsewhere.",
        ) from None


def unseal(sealed: Sealed, binding: Binding, keyring: Keyring) -> bytes:
    """Return the value, or raise SealError / MasterKeyMissing; never a partial plaintext."""
    data_key = _unwrap(sealed, binding, keyring)
    if len(sealed.nonce) != NONCE_BYTES:
        raise SealError(
            "malformed_record",
            f"The stored nonce is {len(sealed.nonce)} bytes; format 1 requires {NONCE_BYTES}.",
        )
    if len(sealed.ciphertext) < TAG_BYTES:
        raise SealError(
            "malformed_record", "The stored ciphertext is shorter than its authentication tag."
        )
    try:
        return AESGCM(data_key).decrypt(
            sealed.nonce, sealed.ciphertext, data_aad(sealed.format, binding)
        )
    except InvalidTag:
        raise SealError(
            "authentication_failed",
            "The stored secret failed authentication: it was altered or belongs elsewhere.",
        ) from None


def rewrap(sealed: Sealed, binding: Binding, keyring: Keyring, master_key: MasterKey) -> Sealed:
    """Re-wrap the data key under `master_key`; the value's ciphertext is left untouched."""
    data_key = _unwrap(sealed, binding, keyring)
    return Sealed(
        sealed.format,
        sealed.nonce,
        sealed.ciphertext,
        _wrap(data_key, binding, master_key),
        master_key.version,
    )
