"""The vault's secret operations: put, get, list, delete, and the audited resolve.

Values arrive in `put` and leave only through `resolve`. Every resolve, granted or refused,
writes an audit record; when it reads a secret, in the same transaction as the read, so no
value is released without a committed record.
"""

from __future__ import annotations

import asyncio
import hmac
import uuid
from dataclasses import dataclass, field
from datetime import datetime

import asyncpg
import grpc
import structlog

from services.rpc.errors import (
    DATABASE_ERRORS,
    ApiError,
    Reason,
    database_unavailable,
    invalid_argument,
    limit_exceeded,
    not_found,
)
from services.rpc.internal_auth import service_identity_required, service_not_allowed
from services.rpc.names import (
    SecretRef,
    check_secret_id,
    parse_run_name,
    parse_user_name,
    parse_workspace_name,
    parse_workspace_secret_name,
)
from services.vault import store
from services.vault.crypto import Binding, MasterKeyMissing, Sealed, SealError, seal, unseal
from services.vault.keyring import Keyring
from services.vault.metrics import record_resolve

log = structlog.get_logger()

# The one service identity that may read plaintext.
RESOLVER = "gateway"
ROLES = frozenset({"owner", "admin", "member", "viewer"})


class KeyHolder:
    """The keyring in use; a rotation swaps it for one with a newer active version."""

    def __init__(self, keyring: Keyring) -> None:
        self.keyring = keyring


@dataclass(frozen=True)
class Actor:
    """The end user on whose behalf the control plane calls."""

    workspace_id: uuid.UUID
    user_id: uuid.UUID
    role: str


@dataclass(frozen=True)
class SecretMeta:
    """A secret's metadata."""

    workspace_id: uuid.UUID
    uid: uuid.UUID
    secret_id: str
    version: int
    create_time: datetime
    update_time: datetime


@dataclass(frozen=True)
class Resolved:
    """A resolved value and its version."""

    value: bytes = field(repr=False)
    version: int


def _meta(row: store.Record) -> SecretMeta:
    return SecretMeta(
        row["workspace_id"],
        row["id"],
        row["name"],
        row["version"],
        row["create_time"],
        row["update_time"],
    )


def stored(row: store.Record) -> tuple[Sealed, Binding]:
    """Return a stored version as sealed, and where it belongs."""
    return (
        Sealed(
            row["format"],
            row["nonce"],
            row["ciphertext"],
            row["wrapped_key"],
            row["master_key_version"],
        ),
        Binding(row["workspace_id"], row["id"], row["name"], row["version"]),
    )


def decryption_failed(err: SealError) -> ApiError:
    """Build the fail-closed error of a stored secret that cannot be opened."""
    return ApiError(
        grpc.StatusCode.DATA_LOSS,
        Reason.DECRYPTION_FAILED,
        err.message,
        metadata={"cause": err.cause},
    )


def master_key_unavailable(version: int, *, retired: bool) -> ApiError:
    """Build the error of a data key wrapped under a retired or missing master-key version."""
    why = "is retired" if retired else "is not in the vault's key file"
    return ApiError(
        grpc.StatusCode.FAILED_PRECONDITION,
        Reason.MASTER_KEY_UNAVAILABLE,
        f"The secret's data key is wrapped under master-key version {version}, which {why}.",
        metadata={"master_key_version": str(version)},
    )


def audit_unavailable() -> ApiError:
    """Build the error of an operation refused because its audit record could not be written."""
    return ApiError(
        grpc.StatusCode.UNAVAILABLE,
        Reason.AUDIT_UNAVAILABLE,
        "The vault's audit log cannot be written; nothing is released without an audit record.",
    )


def _version_mismatch(current: int) -> ApiError:
    return ApiError(
        grpc.StatusCode.ABORTED,
        Reason.VERSION_MISMATCH,
        f"expected_version does not match: the newest version is {current}.",
        metadata={"current_version": str(current)},
    )


def _outcome(err: ApiError) -> str:
    return {
        Reason.NOT_FOUND: "not_found",
        Reason.SERVICE_IDENTITY_REQUIRED: "denied",
        Reason.SERVICE_NOT_ALLOWED: "denied",
        Reason.DECRYPTION_FAILED: "decrypt_failed",
        Reason.MASTER_KEY_UNAVAILABLE: "key_unavailable",
    }.get(err.reason, "invalid_argument")


def _clip(text: str) -> str:
    # Audit columns hold what the caller named, bounded: a refused call may send anything.
    return text[:300]


class ResolveReads:
    """Read the gateway's resolves in shared statements: each takes whatever queued meanwhile.

    Under load, one round trip reads many versions and appends their audit records; a lone
    resolve still goes out at once, alone. At most `lanes` statements are in flight: one by
    default, because on the 2-core bench machine a second lane halved the batches and cost
    a third of the throughput (2,400 → 1,660 resolves/s); a round trip per resolve, not the
    database, is what limits a Python vault.
    """

    def __init__(self, pool: asyncpg.Pool, *, lanes: int = 1, max_batch: int = 64) -> None:
        self._pool = pool
        self._lanes = lanes
        self._max_batch = max_batch
        self._busy = 0
        self._queue: list[tuple[store.ResolveRequest, asyncio.Future[store.Record]]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def read(self, request: store.ResolveRequest) -> store.Record:
        """Read one version and append its audit record; raise the ApiError if neither can be."""
        future: asyncio.Future[store.Record] = asyncio.get_running_loop().create_future()
        self._queue.append((request, future))
        if self._busy < self._lanes:
            self._busy += 1
            task = asyncio.create_task(self._drain())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await future

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch = self._queue[: self._max_batch]
                del self._queue[: self._max_batch]
                await self._run(batch)
        finally:
            self._busy -= 1

    async def _run(
        self, batch: list[tuple[store.ResolveRequest, asyncio.Future[store.Record]]]
    ) -> None:
        try:
            async with self._pool.acquire() as conn:
                rows = await store.secret_versions_resolve(
                    conn, [request for request, _ in batch], actor_service=RESOLVER
                )
        except DATABASE_ERRORS:
            failure = database_unavailable
        except asyncpg.PostgresError:
            # The reads and their audit records are one statement: no record, no value.
            log.exception("vault_audit_failed", operation="resolve", batch=len(batch))
            for _ in batch:
                record_resolve("audit_unavailable")
            failure = audit_unavailable
        else:
            for (_, future), row in zip(batch, rows, strict=True):
                if not future.done():
                    future.set_result(row)
            return
        for _, future in batch:
            if not future.done():
                future.set_exception(failure())


class Secrets:
    """Secret operations over the vault's pool and keys."""

    def __init__(self, pool: asyncpg.Pool, keys: KeyHolder, *, max_value_bytes: int) -> None:
        self._pool = pool
        self._keys = keys
        self._max_value_bytes = max_value_bytes
        self._reads = ResolveReads(pool)

    def _unseal(self, row: store.Record) -> bytes:
        """Open a stored version; raise the ApiError that says why it cannot be opened."""
        if not row["master_key_known"] or row["master_key_retired"]:
            raise master_key_unavailable(
                row["master_key_version"], retired=bool(row["master_key_retired"])
            )
        try:
            return unseal(*stored(row), self._keys.keyring)
        except SealError as err:
            raise decryption_failed(err) from None
        except MasterKeyMissing as err:
            raise master_key_unavailable(err.version, retired=False) from None

    async def put(
        self,
        actor: Actor,
        ref: SecretRef,
        value: bytes,
        *,
        expected_version: int | None,
        request_id: str | None,
    ) -> SecretMeta:
        """Store a new version in the actor's workspace.

        Check-and-set on `expected_version`; idempotent per secret and request id.
        """
        secret_id = check_secret_id(ref)
        if not value:
            raise invalid_argument("value", "value is required and must not be empty.")
        if len(value) > self._max_value_bytes:
            raise limit_exceeded("value", self._max_value_bytes, "bytes")
        if expected_version is not None and expected_version < 0:
            raise invalid_argument("expected_version", "expected_version must not be negative.")
        try:
            return await self._put(actor, secret_id, value, expected_version, request_id)
        except asyncpg.UniqueViolationError:
            # A concurrent put with the same request id committed first: answer as its retry.
            return await self._put(actor, secret_id, value, expected_version, request_id)

    async def _put(
        self,
        actor: Actor,
        secret_id: str,
        value: bytes,
        expected_version: int | None,
        request_id: str | None,
    ) -> SecretMeta:
        async with self._pool.acquire() as conn, conn.transaction():
            if request_id is not None:
                done = await store.secret_version_by_request(
                    conn, actor.workspace_id, secret_id, request_id
                )
                if done is not None:
                    return self._replayed(done, value)
            row = await store.secret_lock(conn, actor.workspace_id, secret_id)
            if row is None:
                row = await store.secret_insert(conn, actor.workspace_id, secret_id)
                if row is None:  # created concurrently: wait for that put, then go on from it
                    row = await store.secret_lock(conn, actor.workspace_id, secret_id)
                    assert row is not None
            if expected_version is not None and expected_version != row["version"]:
                raise _version_mismatch(row["version"])
            master_key = self._keys.keyring.active
            if not await store.master_key_version_usable(conn, master_key.version):
                raise master_key_unavailable(master_key.version, retired=True)
            version = row["version"] + 1
            sealed = seal(
                value, Binding(actor.workspace_id, row["id"], secret_id, version), master_key
            )
            stored = await store.secret_version_add(
                conn,
                row["id"],
                version,
                format=sealed.format,
                nonce=sealed.nonce,
                ciphertext=sealed.ciphertext,
                wrapped_key=sealed.wrapped_key,
                master_key_version=sealed.master_key_version,
                request_id=request_id,
                created_by=actor.user_id,
            )
            await store.audit_append(
                conn,
                store.AuditEntry(
                    operation="put",
                    outcome="ok",
                    actor_service="control_plane",
                    actor_user=actor.user_id,
                    workspace_id=actor.workspace_id,
                    secret_uid=row["id"],
                    secret_name=secret_id,
                    version=version,
                    master_key_version=sealed.master_key_version,
                    request_id=request_id,
                ),
            )
        return _meta(stored)

    def _replayed(self, done: store.Record, value: bytes) -> SecretMeta:
        """Answer a retried put: the first result if the value is the same, else an error."""
        stored = self._unseal(done)
        if not hmac.compare_digest(stored, value):
            raise ApiError(
                grpc.StatusCode.INVALID_ARGUMENT,
                Reason.REQUEST_ID_REUSED,
                "request_id was already used to store a different value.",
                field="request_id",
            )
        return _meta(done)

    async def get(self, workspace_id: uuid.UUID, ref: SecretRef) -> SecretMeta | None:
        """Get a secret's metadata; None when the workspace has no such secret."""
        async with self._pool.acquire() as conn:
            row = await store.secret_get(conn, workspace_id, ref)
        return None if row is None else _meta(row)

    async def list(
        self, workspace_id: uuid.UUID, *, after: str | None, limit: int
    ) -> list[SecretMeta]:
        """List a workspace's secrets by id, after a cursor."""
        async with self._pool.acquire() as conn:
            rows = await store.secret_list(conn, workspace_id, after=after, limit=limit)
        return [_meta(r) for r in rows]

    async def delete(self, actor: Actor, ref: SecretRef) -> bool:
        """Delete a secret and destroy all its versions; False when there was none."""
        async with self._pool.acquire() as conn, conn.transaction():
            row = await store.secret_delete(conn, actor.workspace_id, ref)
            if row is None:
                return False
            await store.audit_append(
                conn,
                store.AuditEntry(
                    operation="delete",
                    outcome="ok",
                    actor_service="control_plane",
                    actor_user=actor.user_id,
                    workspace_id=actor.workspace_id,
                    secret_uid=row["id"],
                    secret_name=row["name"],
                    version=row["version"],
                ),
            )
        return True

    async def resolve(self, service: str | None, name: str, version: int, run: str) -> Resolved:
        """Return a secret's plaintext to the gateway; audit the call whatever its outcome."""
        named: tuple[uuid.UUID, SecretRef] | ApiError
        try:
            # Parsed first, so that even a refused caller's record names what it asked for.
            named = parse_workspace_secret_name(name)
        except ApiError as err:
            named = err
        try:
            if service is None:
                raise service_identity_required()
            if service != RESOLVER:
                raise service_not_allowed(service)
            if isinstance(named, ApiError):
                raise named
            parse_run_name(run, "run")
            if version < 0:
                raise invalid_argument("version", "version must not be negative.")
        except ApiError as err:
            where = (
                (None, _clip(name)) if isinstance(named, ApiError) else (named[0], str(named[1]))
            )
            await self._audit_refusal(
                store.AuditEntry(
                    operation="resolve",
                    outcome=_outcome(err),
                    reason=err.reason_name,
                    actor_service=service or "unidentified",
                    workspace_id=where[0],
                    secret_name=where[1],
                    version=version or None,
                    run=_clip(run),
                )
            )
            raise
        workspace_id, ref = named
        return await self._resolve(workspace_id, ref, version, run)

    async def _resolve(
        self, workspace_id: uuid.UUID, ref: SecretRef, version: int, run: str
    ) -> Resolved:
        row = await self._reads.read(store.ResolveRequest(workspace_id, ref, version, _clip(run)))
        outcome, value, refusal = row["outcome"], b"", None
        if outcome == "not_found":
            refusal = not_found(str(ref) if not version else f"{ref} version {version}")
        else:
            try:
                value = self._unseal(row)
            except ApiError as err:
                refusal, outcome = err, _outcome(err)
                if outcome != row["outcome"]:
                    async with self._pool.acquire() as conn:
                        await store.audit_outcome_set(
                            conn, row["audit_id"], outcome, err.reason_name
                        )
        record_resolve(outcome)
        if refusal is not None:
            raise refusal
        return Resolved(value, row["version"])

    async def _audit_refusal(self, entry: store.AuditEntry) -> None:
        try:
            async with self._pool.acquire() as conn:
                await store.audit_append(conn, entry)
        except DATABASE_ERRORS:
            raise
        except asyncpg.PostgresError:
            log.exception("vault_audit_failed", operation=entry.operation)
            record_resolve("audit_unavailable")
            raise audit_unavailable() from None
        record_resolve(entry.outcome)


def parse_actor(workspace: str, user: str, role: str) -> Actor:
    """Check the principal the control plane forwarded."""
    if role not in ROLES:
        raise invalid_argument("principal.role", f"principal.role {role!r} is not a role.")
    return Actor(
        parse_workspace_name(workspace, "principal.workspace"),
        parse_user_name(user, "principal.user"),
        role,
    )
