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
from typing import Any

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
# How long a cached key is trusted without a change heard to it: the bound on what no
# notification reports (a profile's new display name).
KEY_CACHE_SECONDS = 10.0
KEY_CACHE_SIZE = 10_000


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


@dataclass
class _CachedKey:
    row: Mapping[str, Any]
    last_used: datetime | None
    expires: float


class KeyCache:
    """The principals of recently used API keys, forgotten the moment a change to them is heard.

    A revoked key, a removed member or a changed role NOTIFY `ap_principals` in the statement
    that makes the change (store/tenancy.py); every replica's Listener hears it and
    `revocation.Revocations` calls `forget_key` / `forget_member` before anything else. The
    replica that made the change forgets at once, before it answers. While the LISTEN
    connection is down nothing is served from the cache (every call reads Postgres, as with
    no cache), and it starts empty when the connection is back. A lookup that raced a change
    is not cached: `generation` moves with every change heard. Entries also expire after
    `KEY_CACHE_SECONDS`, for what no notification reports (a new display name).
    """

    def __init__(self, *, ttl: float = KEY_CACHE_SECONDS, size: int = KEY_CACHE_SIZE) -> None:
        self._ttl = ttl
        self._size = size
        self._entries: dict[str, _CachedKey] = {}
        self.generation = 0
        self.enabled = False
        self.hits = 0

    def get(self, prefix: str, now: float) -> _CachedKey | None:
        """Return the cached key of `prefix`, if it may be trusted now."""
        if not self.enabled:
            return None
        entry = self._entries.get(prefix)
        if entry is None or entry.expires <= now:
            return None
        self.hits += 1
        return entry

    def put(self, prefix: str, row: store.Record, generation: int, now: float) -> None:
        """Cache a key read from Postgres, unless a change was heard since the read began."""
        if not self.enabled or generation != self.generation:
            return
        if len(self._entries) >= self._size:
            self._entries.clear()
        self._entries[prefix] = _CachedKey(
            dict(row.items()), row["last_used_time"], now + self._ttl
        )

    def forget_key(self, key_id: uuid.UUID) -> None:
        """Forget a key (revoked)."""
        self.generation += 1
        for prefix in [p for p, e in self._entries.items() if e.row["id"] == key_id]:
            del self._entries[prefix]

    def forget_member(self, workspace_id: uuid.UUID, user_id: uuid.UUID) -> None:
        """Forget every key of a membership (removed, or its role changed)."""
        self.generation += 1
        for prefix in [
            p
            for p, e in self._entries.items()
            if (e.row["workspace_id"], e.row["user_id"]) == (workspace_id, user_id)
        ]:
            del self._entries[prefix]

    def listening(self, listening: bool) -> None:
        """Serve from the cache only while changes can be heard; start empty either way."""
        self.generation += 1
        self._entries.clear()
        self.enabled = listening


class Authenticator:
    """Resolve the caller and enforce the policy table (services/control_plane/policy.py).

    API keys are read from Postgres, or from the `KeyCache` that notifications keep current,
    so a revoked key or a removed member is refused from the next call on, on every replica.
    """

    def __init__(
        self, pool: asyncpg.Pool, internal_token: str, keys: KeyCache | None = None
    ) -> None:
        self._pool = pool
        self._internal = InternalTokenAuthenticator(internal_token)
        self._keys = keys if keys is not None else KeyCache()

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
        cached = self._keys.get(prefix, authenticated_at)
        row: Mapping[str, Any]
        if cached is not None and hmac.compare_digest(digest, cached.row["secret_sha256"]):
            row = cached.row
            last_used = cached.last_used
            if last_used is None or datetime.now(UTC) - last_used >= LAST_USED_RESOLUTION:
                cached.last_used = datetime.now(UTC)
                async with self._pool.acquire() as conn:
                    await store.api_key_touch(conn, row["id"])
        else:
            generation = self._keys.generation
            async with self._pool.acquire() as conn:
                found = await store.api_key_principal(conn, prefix)
                if found is None or not hmac.compare_digest(digest, found["secret_sha256"]):
                    raise unauthenticated("Unknown or revoked API key.")
                last_used = found["last_used_time"]
                if last_used is None or datetime.now(UTC) - last_used >= LAST_USED_RESOLUTION:
                    await store.api_key_touch(conn, found["id"])
            row = dict(found.items())
            self._keys.put(prefix, found, generation, authenticated_at)
        return Principal(
            workspace_id=row["workspace_id"],
            user_id=row["user_id"],
            role=row["role"],
            display_name=row["display_name"],
            api_key_id=row["id"],
            personal=row["personal"],
            authenticated_at=authenticated_at,
        )
