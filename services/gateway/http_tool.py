"""HTTP tools: check a registration, build the request from arguments, read a capped body."""

from __future__ import annotations

import json
import re
import string
import urllib.parse
import zlib
from dataclasses import dataclass
from typing import Any

import httpx

METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE"})
_QUERY_METHODS = frozenset({"GET", "DELETE"})
_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}$")
# Headers the transport owns; a credential may not replace them.
_RESERVED_HEADERS = frozenset(
    {"host", "content-length", "content-type", "transfer-encoding", "connection", "accept-encoding"}
)
_ACCEPTED_ENCODINGS = "gzip, deflate"


class RegistrationError(ValueError):
    """An HTTP tool's definition is not acceptable; `field` names the culprit."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class ArgumentError(ValueError):
    """The arguments cannot be placed into the request (a path argument that is not a scalar)."""


class UnsupportedEncodingError(Exception):
    """The response uses a content encoding the gateway does not decode under its cap."""


@dataclass(frozen=True)
class Injection:
    """Where a credential goes: "bearer", or a header or query parameter by name."""

    kind: str
    name: str = ""

    @classmethod
    def parse(cls, spec: str) -> Injection:
        """Parse "bearer", "header:NAME" or "query:NAME"; RegistrationError when malformed."""
        kind, _, name = (spec or "bearer").partition(":")
        if kind == "bearer" and not name:
            return cls("bearer")
        if kind == "header" and _HEADER_NAME.match(name) and name.lower() not in _RESERVED_HEADERS:
            return cls("header", name)
        if kind == "query" and name and len(name) <= 64 and name.isprintable():
            return cls("query", name)
        raise RegistrationError(
            "credential_injection",
            'credential_injection must be "bearer", "header:NAME" (a token, not a transport '
            'header) or "query:NAME".',
        )


def placeholders(url_template: str) -> list[str]:
    """Return the names of the template's {arg} placeholders."""
    return [field for _, field, _, _ in string.Formatter().parse(url_template) if field is not None]


def check_url_template(url_template: str) -> httpx.URL:
    """Check that placeholders sit only in the path; return the URL with them blanked."""
    try:
        names = placeholders(url_template)
        blank = url_template.format_map({name: "x" for name in names})
    except (ValueError, KeyError, IndexError):
        raise RegistrationError(
            "url_template", "url_template has a malformed {placeholder}."
        ) from None
    if any(not name.isidentifier() for name in names):
        raise RegistrationError("url_template", "Placeholders must be argument names.")
    try:
        url = httpx.URL(blank)
    except httpx.InvalidURL as err:
        raise RegistrationError("url_template", f"url_template is not a URL: {err}") from None
    split = urllib.parse.urlsplit(url_template)
    if "{" in split.netloc or "{" in split.scheme or "{" in split.query or "{" in split.fragment:
        raise RegistrationError(
            "url_template", "Placeholders may appear only in the URL's path, never its host."
        )
    return url


def _scalar(name: str, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    raise ArgumentError(f"argument {name!r} goes in the URL path and must be a scalar")


@dataclass(frozen=True)
class PreparedCall:
    """A request ready to send, and the credential values to redact from what comes back."""

    method: str
    url: str
    params: dict[str, str]
    headers: dict[bytes, bytes]
    json_body: dict[str, Any] | None


def prepare_call(
    method: str,
    url_template: str,
    arguments: dict[str, Any],
    injection: Injection | None,
    credential: bytes | None,
) -> PreparedCall:
    """Place the arguments and the credential into a request.

    Path arguments are percent-encoded whole ("../", "/", "?" and "#" cannot change the path,
    the query or the host); the rest go in the query or a JSON body. The credential is set
    last, so no argument can replace it.
    """
    names = placeholders(url_template)
    path_values = {
        name: urllib.parse.quote(_scalar(name, arguments.get(name, "")), safe="") for name in names
    }
    url = url_template.format_map(path_values)
    rest = {k: v for k, v in arguments.items() if k not in names}
    params: dict[str, str] = {}
    body: dict[str, Any] | None = None
    if method in _QUERY_METHODS:
        for key, value in rest.items():
            params[key] = (
                _scalar(key, value) if not isinstance(value, dict | list) else _json(value)
            )
    else:
        body = rest
    headers: dict[bytes, bytes] = {b"accept-encoding": _ACCEPTED_ENCODINGS.encode()}
    if injection is not None and credential is not None:
        if injection.kind == "bearer":
            headers[b"authorization"] = b"Bearer " + credential
        elif injection.kind == "header":
            headers[injection.name.lower().encode()] = credential
        else:
            params[injection.name] = credential.decode("utf-8", errors="strict")
    return PreparedCall(method, url, params, headers, body)


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def header_safe(credential: bytes) -> bool:
    """Tell whether a credential can travel in a header (no CR, LF or NUL; not empty)."""
    return bool(credential) and not any(c in credential for c in b"\r\n\x00")


async def read_capped(response: httpx.Response, cap: int) -> tuple[bytes, bool, int]:
    """Read at most `cap` decoded bytes; return them, whether more followed, and raw bytes read.

    The body is decompressed here with a bound on each step, so a small gzip body that
    expands past the cap (a zip bomb) stops at the cap instead of filling memory.
    """
    encoding = response.headers.get("content-encoding", "").strip().lower()
    if encoding in ("", "identity"):
        decoder = None
    elif encoding in ("gzip", "x-gzip"):
        decoder = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    elif encoding == "deflate":
        decoder = zlib.decompressobj()
    else:
        raise UnsupportedEncodingError(encoding)
    out = bytearray()
    raw_bytes = 0
    async for raw in response.aiter_raw():
        raw_bytes += len(raw)
        data = raw
        while data:
            if decoder is None:
                piece, data = data, b""
            else:
                piece = decoder.decompress(data, cap + 1 - len(out))
                data = decoder.unconsumed_tail
            out += piece
            if len(out) > cap:
                return bytes(out[:cap]), True, raw_bytes
    return bytes(out), False, raw_bytes
