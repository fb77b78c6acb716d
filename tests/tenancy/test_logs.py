"""The suite-wide log scan (tests/logcheck.py) finds what it looks for."""

from __future__ import annotations

from pathlib import Path

from services.control_plane.auth import new_api_key
from services.control_plane.invitations import new_invitation_token
from tests.logcheck import INTERNAL_TOKENS, leaks


def test_the_scan_finds_keys_and_tokens_but_not_prefixes(tmp_path: Path) -> None:
    """A full key, an invitation token or a registered token is a leak; a key's prefix is not."""
    key = new_api_key()
    invitation, _ = new_invitation_token()
    INTERNAL_TOKENS.add("canary-internal-token-value")
    log = tmp_path / "log"
    log.write_text(
        f'{{"event": "rpc", "prefix": "ap_{key.prefix}"}}\n'
        f'{{"event": "oops", "detail": "Bearer {key.key}"}}\n'
        '{"event": "oops", "detail": "canary-internal-token-value"}\n'
        f'{{"event": "oops", "detail": "{invitation}"}}\n'
    )
    try:
        assert len(leaks(log)) == 3
    finally:
        INTERNAL_TOKENS.discard("canary-internal-token-value")
