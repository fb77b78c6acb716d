"""The browser's sign-in: an API key exchanged for a sealed, HttpOnly session cookie.

    POST /auth/login   {"apiKey": "ap_…"}  → Set-Cookie ap_session=…; {"csrfToken", …}
    GET  /auth/session                     → {"csrfToken", "expireTime"} for the cookie
    POST /auth/logout  (X-CSRF-Token)      → the cookie cleared, its open streams ended

The cookie is the key sealed with AES-256-GCM under a key derived from AP_COOKIE_SECRET,
which every edge replica shares, so any replica opens it and none stores anything; without
the secret it is useless, and nothing in it is usable elsewhere. It also holds a random login
id (the CSRF token is an HMAC of it, and logout ends that login's streams) and an expiry.

A cookie-authenticated request that changes anything (any method but GET/HEAD/OPTIONS) must
carry the login's token in X-CSRF-Token, and must not come from another site: a
Sec-Fetch-Site other than same-origin, or an Origin other than the edge's own, is refused.
Login checks the origin too (no logging a victim into the attacker's key).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import secrets
import time
import urllib.parse
from dataclasses import dataclass

import grpc
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from starlette.requests import Request

from services.rpc.errors import ApiError, Reason, unauthenticated

COOKIE_NAME = "ap_session"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_VERSION = b"v1"
_NONCE_BYTES = 12


@dataclass(frozen=True)
class Login:
    """An opened session cookie: whose key, which login, until when."""

    api_key: str
    login_id: str
    expires_at: float


@dataclass(frozen=True)
class Credentials:
    """What a request authenticates with: the Authorization value and, for a cookie, its login."""

    authorization: str | None
    login: Login | None = None

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """Return the gRPC metadata to call the control plane with."""
        return (("authorization", self.authorization),) if self.authorization else ()


def _derive(secret: bytes, purpose: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose).derive(secret)


class CookieSealer:
    """Seal and open session cookies, and derive their CSRF tokens, under one edge secret."""

    def __init__(self, secret: bytes, max_age_seconds: int) -> None:
        """Derive the sealing and CSRF keys from `secret`."""
        self._aead = AESGCM(_derive(secret, b"ap-web session cookie v1"))
        self._csrf_key = _derive(secret, b"ap-web csrf token v1")
        self.max_age_seconds = max_age_seconds

    def seal(self, api_key: str) -> tuple[str, Login]:
        """Return a new cookie value for the key and the login it stands for."""
        login = Login(api_key, secrets.token_urlsafe(16), time.time() + self.max_age_seconds)
        payload = json.dumps({"k": login.api_key, "l": login.login_id, "e": login.expires_at})
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, payload.encode(), _VERSION)
        return _VERSION.decode() + "." + base64.urlsafe_b64encode(nonce + sealed).decode(), login

    def open(self, value: str) -> Login | None:
        """Return the login a cookie stands for; None when it is forged, altered or expired."""
        version, _, body = value.partition(".")
        if version.encode() != _VERSION:
            return None
        try:
            raw = base64.urlsafe_b64decode(body.encode())
            payload = json.loads(
                self._aead.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], _VERSION)
            )
            login = Login(str(payload["k"]), str(payload["l"]), float(payload["e"]))
        except (binascii.Error, InvalidTag, ValueError, KeyError, TypeError):
            return None
        return login if login.expires_at > time.time() else None

    def csrf_token(self, login: Login) -> str:
        """Return the CSRF token of a login (the same on every replica)."""
        digest = hmac.new(self._csrf_key, login.login_id.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def csrf_refused(why: str) -> ApiError:
    """Build the PERMISSION_DENIED error of a request that failed a cross-site check."""
    return ApiError(
        grpc.StatusCode.PERMISSION_DENIED,
        Reason.PERMISSION_DENIED,
        f"Cross-site request refused: {why}.",
        metadata={"check": "csrf"},
    )


def check_same_origin(request: Request) -> None:
    """Refuse a request a browser sent from another site (Sec-Fetch-Site, then Origin)."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        raise csrf_refused(f"Sec-Fetch-Site is {site!r}")
    origin = request.headers.get("origin")
    if origin is not None and urllib.parse.urlsplit(origin).netloc != request.headers.get(
        "host", ""
    ):
        raise csrf_refused("the Origin is not this site")


def credentials(request: Request, sealer: CookieSealer) -> Credentials:
    """Return the request's credentials: Authorization first, else the session cookie.

    A request with neither goes to the control plane without any, which answers
    UNAUTHENTICATED exactly as it does over gRPC.
    """
    if authorization := request.headers.get("authorization"):
        return Credentials(authorization)
    cookie = request.cookies.get(COOKIE_NAME)
    if cookie is None:
        return Credentials(None)
    login = sealer.open(cookie)
    if login is None:
        raise unauthenticated("The session cookie is invalid or expired; sign in again.")
    if request.method not in SAFE_METHODS:
        check_same_origin(request)
        token = request.headers.get(CSRF_HEADER, "")
        if not hmac.compare_digest(token.encode(), sealer.csrf_token(login).encode()):
            raise csrf_refused(f"the {CSRF_HEADER} header is missing or wrong")
    return Credentials(f"Bearer {login.api_key}", login)
