"""`ap whoami`, `ap keys` and `ap members` against a real control plane."""

from __future__ import annotations

import asyncio
import io

import pytest

from ap_cli.main import main
from tests.harness import Stack


async def _ap(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    # The CLI runs its own event loop, so it runs in a thread beside the servers' loop.
    code = await asyncio.to_thread(main, list(argv))
    # The servers' log lines share the captured stdout; keep the CLI's own lines.
    lines = capsys.readouterr().out.splitlines()
    return code, "\n".join(line for line in lines if not line.startswith('{"'))


async def test_owners_manage_keys_and_members_from_the_cli(
    stack: Stack, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """whoami names the role; a key made by `keys create` works and `keys revoke` ends it."""
    owner = await stack.new_workspace("CLI", "owner")
    monkeypatch.setenv("AP_ENDPOINT", stack.address)
    monkeypatch.setenv("AP_API_KEY", owner.api_key)
    code, out = await _ap(capsys, "whoami")
    assert code == 0 and f"owner of {owner.workspace}" in out
    code, out = await _ap(capsys, "members", "add", "viewer", "--name", "Vic")
    assert code == 0 and "is now viewer" in out
    user = out.split()[0]
    code, out = await _ap(capsys, "keys", "create", "vic", "--user", user)
    vic_key = out.strip()
    assert code == 0 and vic_key.startswith("ap_"), out
    code, out = await _ap(capsys, "keys", "list")
    assert code == 0 and "vic" in out and vic_key not in out
    key_name = next(line.split()[0] for line in out.splitlines() if " vic " in line)
    monkeypatch.setenv("AP_API_KEY", vic_key)
    code, out = await _ap(capsys, "whoami")
    assert code == 0 and "viewer of" in out
    code, _ = await _ap(capsys, "keys", "list")
    assert code == 1  # viewers may not see keys
    monkeypatch.setenv("AP_API_KEY", owner.api_key)
    code, out = await _ap(capsys, "keys", "revoke", key_name)
    assert code == 0
    monkeypatch.setenv("AP_API_KEY", vic_key)
    code, _ = await _ap(capsys, "whoami")
    assert code == 1


async def test_an_invitation_from_the_cli_is_accepted_with_a_token_on_stdin(
    stack: Stack, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`members invite` prints a token once; `invitations accept` reads it and prints a key."""
    host = await stack.new_workspace("CLI host", "owner")
    guest = await stack.new_workspace("CLI guest", "owner")
    monkeypatch.setenv("AP_ENDPOINT", stack.address)
    monkeypatch.setenv("AP_API_KEY", host.api_key)
    code, out = await _ap(
        capsys, "members", "invite", "member", "--label", "for Ada", "--ttl", "2h"
    )
    token = out.strip()
    assert code == 0 and token.startswith("apinv_"), out
    code, out = await _ap(capsys, "invitations", "list")
    assert code == 0 and "for Ada" in out and token not in out
    monkeypatch.setenv("AP_API_KEY", guest.api_key)
    monkeypatch.setattr("sys.stdin", io.StringIO(token + "\n"))
    code, out = await _ap(capsys, "invitations", "accept")
    new_key = out.strip()
    assert code == 0 and new_key.startswith("ap_"), out
    monkeypatch.setenv("AP_API_KEY", new_key)
    code, out = await _ap(capsys, "whoami")
    assert code == 0 and f"member of {host.workspace}" in out
    monkeypatch.setattr("sys.stdin", io.StringIO(token))
    code, _ = await _ap(capsys, "invitations", "accept")
    assert code == 1  # a token works once
    monkeypatch.setenv("AP_API_KEY", host.api_key)
    code, out = await _ap(capsys, "members", "invite", "viewer")
    code, out = await _ap(capsys, "invitations", "list")
    name = next(line.split()[0] for line in out.splitlines() if " viewer " in line)
    code, out = await _ap(capsys, "invitations", "revoke", name)
    assert code == 0 and f"revoked {name}" in out
    code, out = await _ap(capsys, "invitations", "list")
    assert code == 0 and out.strip() == "no invitations"
