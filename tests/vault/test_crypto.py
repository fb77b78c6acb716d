"""The envelope format on its own: binding, nonces, lengths, and nothing secret in a repr."""

from __future__ import annotations

import dataclasses
import uuid

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from services.vault.crypto import (
    FORMAT_V1,
    Binding,
    MasterKeyMissing,
    SealError,
    data_aad,
    rewrap,
    seal,
    unseal,
    wrap_aad,
)
from services.vault.keyring import Keyring, MasterKey

VALUE = b"xoxb-unit-test-value"


def keyring(*versions: int, active: int | None = None) -> Keyring:
    """Build an in-memory keyring with random keys."""
    keys = {}
    for version in versions:
        key = AESGCM.generate_key(bit_length=256)
        keys[version] = MasterKey(version, key, AESGCM(key))
    return Keyring(keys, active if active is not None else max(versions))


def binding(**changes: object) -> Binding:
    """Return a fixed binding with some fields changed."""
    base = Binding(uuid.UUID(int=1), uuid.UUID(int=2), "GITHUB_TOKEN", 1)
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_a_sealed_value_opens_with_its_binding() -> None:
    """Seal then unseal returns the value."""
    ring = keyring(1)
    assert unseal(seal(VALUE, binding(), ring.active), binding(), ring) == VALUE


@pytest.mark.parametrize(
    "changes",
    [
        {"workspace_id": uuid.UUID(int=9)},
        {"secret_uid": uuid.UUID(int=9)},
        {"secret_id": "SLACK_TOKEN"},
        {"version": 2},
    ],
)
def test_a_sealed_value_does_not_open_elsewhere(changes: dict[str, object]) -> None:
    """Another workspace, secret, id or version fails authentication."""
    ring = keyring(1)
    sealed = seal(VALUE, binding(), ring.active)
    with pytest.raises(SealError) as caught:
        unseal(sealed, binding(**changes), ring)
    assert caught.value.cause == "authentication_failed"


def test_each_layer_needs_its_exact_aad() -> None:
    """Missing or extra additional data fails, on the data layer and on the key wrap."""
    ring = keyring(1)
    sealed = seal(VALUE, binding(), ring.active)
    aad = wrap_aad(FORMAT_V1, binding(), 1)
    master = ring.active.aead
    wrapped_nonce, wrapped = sealed.wrapped_key[:12], sealed.wrapped_key[12:]
    data_key = master.decrypt(wrapped_nonce, wrapped, aad)
    for wrong in (None, aad + b"x", aad[:-1]):
        with pytest.raises(InvalidTag):
            master.decrypt(wrapped_nonce, wrapped, wrong)
    good = data_aad(FORMAT_V1, binding())
    for wrong in (None, good + b"x"):
        with pytest.raises(InvalidTag):
            AESGCM(data_key).decrypt(sealed.nonce, sealed.ciphertext, wrong)


def test_aad_fields_are_length_prefixed() -> None:
    """Moving bytes between adjacent fields changes the additional data."""
    a = data_aad(FORMAT_V1, binding(secret_id="ab"))
    b = data_aad(FORMAT_V1, binding(secret_id="a"))
    assert a != b
    assert wrap_aad(FORMAT_V1, binding(), 1) != wrap_aad(FORMAT_V1, binding(), 2)


def test_every_seal_uses_a_fresh_nonce_and_data_key() -> None:
    """Sealing the same value twice shares no nonce, wrapped key or ciphertext."""
    ring = keyring(1)
    first, second = (seal(VALUE, binding(), ring.active) for _ in range(2))
    assert first.nonce != second.nonce
    assert first.ciphertext != second.ciphertext
    assert first.wrapped_key[:12] != second.wrapped_key[:12]
    assert first.wrapped_key[12:] != second.wrapped_key[12:]


def test_an_eight_byte_nonce_is_refused_though_aesgcm_accepts_it() -> None:
    """Format 1 requires exactly 12 bytes of nonce."""
    ring = keyring(1)
    sealed = seal(VALUE, binding(), ring.active)
    data_key = AESGCM.generate_key(bit_length=256)
    short = b"\x00" * 8
    AESGCM(data_key).encrypt(short, VALUE, None)  # the library alone would allow it
    with pytest.raises(SealError) as caught:
        unseal(dataclasses.replace(sealed, nonce=sealed.nonce[:8]), binding(), ring)
    assert caught.value.cause == "malformed_record"


def test_unknown_formats_and_missing_master_keys_are_refused() -> None:
    """A format other than 1, or an unknown master-key version, opens nothing."""
    ring = keyring(1)
    sealed = seal(VALUE, binding(), ring.active)
    with pytest.raises(SealError) as caught:
        unseal(dataclasses.replace(sealed, format=2), binding(), ring)
    assert caught.value.cause == "unknown_format"
    with pytest.raises(MasterKeyMissing):
        unseal(dataclasses.replace(sealed, master_key_version=7), binding(), ring)


def test_a_wrapped_key_relabelled_with_another_master_key_version_fails() -> None:
    """The wrap's additional data names its master-key version."""
    ring = keyring(1, 2, active=1)
    sealed = seal(VALUE, binding(), ring.active)
    relabelled = dataclasses.replace(sealed, master_key_version=2)
    with pytest.raises(SealError):
        unseal(relabelled, binding(), ring)


def test_rewrap_changes_only_the_wrapped_key() -> None:
    """A re-wrapped version keeps its ciphertext and opens under the new master key alone."""
    ring = keyring(1, 2, active=1)
    sealed = seal(VALUE, binding(), ring.active)
    moved = rewrap(sealed, binding(), ring, ring.keys[2])
    assert (moved.nonce, moved.ciphertext) == (sealed.nonce, sealed.ciphertext)
    assert moved.wrapped_key != sealed.wrapped_key and moved.master_key_version == 2
    only_new = Keyring({2: ring.keys[2]}, 2)
    assert unseal(moved, binding(), only_new) == VALUE


def test_reprs_show_no_key_or_value_material() -> None:
    """Printing keys, keyrings and sealed records reveals no secret bytes."""
    ring = keyring(1)
    sealed = seal(VALUE, binding(), ring.active)
    text = repr(ring) + repr(ring.active) + repr(sealed)
    for secret in (ring.active.key, sealed.ciphertext, sealed.wrapped_key):
        assert repr(secret)[2:-1] not in text and secret.hex() not in text
