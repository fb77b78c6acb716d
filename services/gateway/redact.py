"""Redact an injected credential, and its common encodings, from text bound for the model."""

from __future__ import annotations

import base64
import json
import urllib.parse
from collections.abc import Iterable

REDACTED = "[REDACTED]"
# Shorter values would match ordinary text; the vault refuses empty ones anyway.
_MIN_LENGTH = 4


def secret_forms(value: bytes) -> set[str]:
    """Return the forms a secret may take in a response: plain, base64, hex, URL, JSON, repr."""
    text = value.decode("utf-8", errors="replace")
    forms = {
        text,
        base64.b64encode(value).decode(),
        base64.b64encode(value).decode().rstrip("="),
        base64.urlsafe_b64encode(value).decode().rstrip("="),
        value.hex(),
        value.hex().upper(),
        urllib.parse.quote(text, safe=""),
        urllib.parse.quote_plus(text),
        urllib.parse.quote(text),
        json.dumps(text)[1:-1],
        json.dumps(text, ensure_ascii=False)[1:-1],
        repr(value)[2:-1],
    }
    # Each whitespace-separated piece too: a body may quote the value split across fields.
    forms.update(piece for piece in text.split() if len(piece) >= _MIN_LENGTH)
    return {form for form in forms if len(form) >= _MIN_LENGTH}


def redact(text: str, secrets: Iterable[bytes]) -> str:
    """Replace every form of every secret in `text` with a marker, longest form first."""
    forms: set[str] = set()
    for secret in secrets:
        forms |= secret_forms(secret)
    for form in sorted(forms, key=len, reverse=True):
        text = text.replace(form, REDACTED)
    return text
