"""API keys and the authenticator that turns call metadata into a principal."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import secrets
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
import grpc

from services.control_plane import store
from services.control_plane.policy import INTERNAL, at_least, permission_denied, required_role
from services.rpc.errors import ApiError, Reason, unauthenticated
from services.rpc.internal_auth import InternalTokenAuthenticator

KEY_PREFIX = "ap_"
# last_used_time is written at most this often per key: a write per call would cost the run
# path a round trip, and listings show the time to the minute.
LAST_USED_RESOLUTION = timedelta(minutes=1)


@dataclass(frozen=True)
class Principal:
    """An authenticated end user acting in one workspace.

    `personal`: the key is one the user holds alone (migration 0006), so it speaks for the
    user beyond the workspace; a delegated key acts in its workspace only.
    `authenticated_at`: the loop time before the key was read, so a stream can tell whether
    a revocation it hears of may have raced its authentication (streams.py).
    """

    workspace_id: uuid.UUID
    user_id: uuid.UUID
    role: str
    display_name: str
    api_key_id: uuid.UUID | None = None
    personal: bool = False
    authenticated_at: float = 0.0


def require_personal_key(principal: Principal, action: str) -> None:
    """Refuse a delegated key an action that speaks for its user beyond its workspace."""
    if not principal.personal:
        raise ApiError(
            grpc.StatusCode.PERMISSION_DENIED,
            Reason.PERMISSION_DENIED,
            f"Only a personal API key can {action}; this key was made for you by an owner "
            "of its workspace, so it acts in that workspace only.",
            metadata={"api_key": "delegated", "required_api_key": "personal"},
        )


@dataclass(frozen=True)
class ServicePrincipal:
    """An authenticated internal caller (a worker)."""

    service: str


@dataclass(frozen=True)
class NewApiKey:
    """A freshly made API key: the full key is shown once, only its hash is stored."""

    key: str
    prefix: str
    secret_sha256: bytes


def new_api_key() -> NewApiKey:
    """Make a random API key of the form ap_<prefix>_<secret>."""
    prefix = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    return NewApiKey(
        key=f"{KEY_PREFIX}{prefix}_{secret}",
        prefix=prefix,
        secret_sha256=hashlib.sha256(secret.encode()).digest(),
    )


def given_api_key(key: str) -> NewApiKey | None:
    """Accept a key made outside the platform if it has the shape and strength of ours.

    A deployment's bootstrap step takes the first owner key from a secret the operator
    made (so it is never printed); anything weaker than `new_api_key` is refused (None).
    """
    parts = _split_key(key)
    if parts is None:
        return None
    prefix, secret = parts
    if not _HEX_PREFIX.fullmatch(prefix) or not _STRONG_SECRET.fullmatch(secret):
        return None
    return NewApiKey(key, prefix, hashlib.sha256(secret.encode()).digest())


# new_api_key's shapes: token_hex(6), and token_urlsafe(32) or longer (256 bits or more).
_HEX_PREFIX = re.compile(r"[0-9a-f]{12}")
_STRONG_SECRET = re.compile(r"[A-Za-z0-9_-]{43,}")


def _split_key(key: str) -> tuple[str, str] | None:
    if not key.startswith(KEY_PREFIX) or len(key) > 200:
        return None
    prefix, sep, secret = key[len(KEY_PREFIX) :].partition("_")
    if not sep or len(prefix) != 12 or not secret:
        return None
    return prefix, secret


class Authenticator:
    """Resolve the caller and enforce the policy table (services/control_plane/policy.py).

    API keys are looked up in Postgres on every call, with no cache, so a revoked key or a
    removed member is refused from the next call on, on every replica.
    """

    def __init__(self, pool: asyncpg.Pool, internal_token: str) -> None:
        self._pool = pool
        self._internal = InternalTokenAuthenticator(internal_token)

    async def __call__(
        self, method: str, metadata: Mapping[str, str]
    ) -> Principal | ServicePrincipal:
        needed = required_role(method)
        if needed == INTERNAL:
            await self._internal(method, metadata)
            return ServicePrincipal("worker")
        principal = await self._api_key(metadata)
        if not at_least(principal.role, needed):
            raise permission_denied(principal.role, needed, method)
        return principal

    async def _api_key(self, metadata: Mapping[str, str]) -> Principal:
        header = metadata.get("authorization")
        if header is None:
            raise unauthenticated("Missing 'authorization: Bearer <API key>' metadata.")
        scheme, _, key = header.partition(" ")
        parts = _split_key(key.strip()) if scheme.lower() == "bearer" else None
        if parts is None:
            raise unauthenticated("Malformed API key; expected 'Bearer ap_…'.")
        prefix, secret = parts
        digest = hashlib.sha256(secret.encode()).digest()
        authenticated_at = asyncio.get_running_loop().time()
        async with self._pool.acquire() as conn:
            row = await store.api_key_principal(conn, prefix)
            if row is None or not hmac.compare_digest(digest, row["secret_sha256"]):
                raise unauthenticated("Unknown or revoked API key.")
            last_used = row["last_used_time"]
            if last_used is None or datetime.now(UTC) - last_used >= LAST_USED_RESOLUTION:
                await store.api_key_touch(conn, row["id"])
        return Principal(
            workspace_id=row["workspace_id"],
            user_id=row["user_id"],
            role=row["role"],
            display_name=row["display_name"],
            api_key_id=row["id"],
            personal=row["personal"],
            authenticated_at=authenticated_at,
        )
