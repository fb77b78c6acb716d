"""`ap secrets`: names and how a value is read, without a server."""

from __future__ import annotations

import argparse
import io

import pytest

from ap_cli.secrets import ValueUnreadable, read_value, secret_name


@pytest.mark.parametrize(
    ("given", "name"),
    [("GITHUB_TOKEN", "secrets/GITHUB_TOKEN"), ("secrets/slack-bot", "secrets/slack-bot")],
)
def test_a_bare_id_or_a_full_name_is_accepted(given: str, name: str) -> None:
    """NAME and secrets/NAME name the same secret."""
    assert secret_name(given) == name


@pytest.mark.parametrize("given", ["", "secrets/", "a/b", "secrets/a/b"])
def test_other_shapes_are_usage_errors(given: str) -> None:
    """Empty names and nested paths are refused before any call."""
    with pytest.raises(argparse.ArgumentTypeError):
        secret_name(given)


def test_stdin_loses_exactly_one_trailing_newline() -> None:
    """`echo "$TOKEN" | ap secrets put` stores the token; inner and other whitespace stays."""
    assert read_value("X", io.BytesIO(b" tok en \n"), interactive=False) == b" tok en "
    assert read_value("X", io.BytesIO(b"tok\r\n"), interactive=False) == b"tok"
    assert read_value("X", io.BytesIO(b"tok\n\n"), interactive=False) == b"tok\n"
    assert read_value("X", io.BytesIO(b"\x00\xff"), interactive=False) == b"\x00\xff"


@pytest.mark.parametrize("stdin", [b"", b"\n"])
def test_an_empty_value_is_refused(stdin: bytes) -> None:
    """Nothing to store is an error, not an empty secret."""
    with pytest.raises(ValueUnreadable):
        read_value("X", io.BytesIO(stdin), interactive=False)


def test_a_mistyped_confirmation_stores_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """At the prompt the value is asked twice; two different answers are refused."""
    answers = iter(["first", "second"])
    monkeypatch.setattr("getpass.getpass", lambda prompt: next(answers))
    with pytest.raises(ValueUnreadable, match="differ"):
        read_value("X", io.BytesIO(), interactive=True)
