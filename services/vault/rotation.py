"""Master-key rotation without downtime: add a version, re-wrap data keys, retire the old one.

    rotate ──► new version in the key file and the database, active at once (new puts use it)
       │
       ▼
    re-wrap pass: batches of data keys not under the active version, each batch one
       │          transaction (FOR UPDATE SKIP LOCKED), so an interrupted pass loses nothing
       │          and a restarted vault (any replica) resumes from what is left
       ▼
    retire every older version that no data key is wrapped under any more

Only wrapped data keys change; value ciphertexts are never touched. Resolves keep working
throughout: a row is either still under its old version or already under the new one, and
the keyring holds both until the old one is retired.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg
import grpc
import structlog

from services.rpc.db import Connection
from services.rpc.errors import ApiError, Reason
from services.vault import store
from services.vault.crypto import MasterKeyMissing, Sealed, SealError, rewrap
from services.vault.keyring import Keyring, KeyringError, MasterKey
from services.vault.secrets import Actor, KeyHolder, stored

log = structlog.get_logger()

# After a failed pass (the database was unreachable), how long until the next try.
_RETRY_SECONDS = 5.0


@dataclass(frozen=True)
class VersionStatus:
    """One master-key version as the status reports it."""

    version: int
    state: str  # "active", "decrypt_only" or "retired"
    data_key_count: int
    in_key_file: bool
    create_time: datetime
    retire_time: datetime | None


@dataclass(frozen=True)
class KeyStatus:
    """The master-key versions and whether a re-wrap is running."""

    active_version: int
    versions: list[VersionStatus]
    rewrap_running: bool


async def check_keyring(conn: Connection, keyring: Keyring) -> None:
    """Register the keyring's versions; refuse a keyring the database's rows cannot use.

    Raises KeyringError when the database holds data keys under a version the keyring lacks,
    when a version's key differs from the one the database was written with, or when the
    active version is retired.
    """
    await store.master_key_version_register(
        conn, [(v, keyring.keys[v].check) for v in keyring.versions]
    )
    known = {r["version"]: r for r in await store.master_key_version_list(conn)}
    for version in keyring.versions:
        if known[version]["key_check"] != keyring.keys[version].check:
            raise KeyringError(
                f"master-key version {version} in the key file is not the key this database "
                "was written with; restore the original key file"
            )
    missing = sorted(set(await store.master_key_versions_referenced(conn)) - set(keyring.keys))
    if missing:
        raise KeyringError(
            f"the database has data keys wrapped under master-key version(s) {missing}, which "
            "the key file lacks; restore them to the key file"
        )
    if known[keyring.active_version]["retire_time"] is not None:
        raise KeyringError(
            f"the active master-key version {keyring.active_version} is retired; make a newer "
            "version active"
        )


@dataclass(frozen=True)
class Batch:
    """What one re-wrap batch did, and the cursor after it (None: nothing left to scan)."""

    moved: int
    failed: int
    after: tuple[uuid.UUID, int] | None


_REFUSALS = {"DECRYPTION_FAILED": "decrypt_failed", "MASTER_KEY_UNAVAILABLE": "key_unavailable"}


def _rewrap(row: asyncpg.Record, keyring: Keyring, target: MasterKey) -> Sealed | str:
    """Re-wrap a stored version under `target`, or return the reason it cannot be."""
    sealed, binding = stored(row)
    if not row["master_key_known"] or row["master_key_retired"]:
        # Never launder a row that names a retired or unknown version under the new key.
        return "MASTER_KEY_UNAVAILABLE"
    try:
        return rewrap(sealed, binding, keyring, target)
    except SealError:
        return "DECRYPTION_FAILED"
    except MasterKeyMissing:
        return "MASTER_KEY_UNAVAILABLE"


def _read_only(message: str) -> ApiError:
    return ApiError(grpc.StatusCode.FAILED_PRECONDITION, Reason.MASTER_KEYS_READ_ONLY, message)


class Rotation:
    """Rotate the master key and run the background re-wrap."""

    def __init__(self, pool: asyncpg.Pool, keys: KeyHolder, *, batch_size: int) -> None:
        self._pool = pool
        self._keys = keys
        self._batch_size = batch_size
        self._wanted = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._running = False
        self._rotating = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._retry: asyncio.TimerHandle | None = None

    def start(self) -> None:
        """Start the re-wrap worker with a pass, which resumes an interrupted re-wrap."""
        self._task = asyncio.create_task(self._work(), name="vault-rewrap")
        self.kick()

    async def stop(self) -> None:
        """Stop the worker; a batch in flight rolls back and is redone by the next pass."""
        if self._retry is not None:
            self._retry.cancel()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def kick(self) -> None:
        """Ask for a re-wrap pass."""
        self._idle.clear()
        self._wanted.set()

    async def wait_idle(self) -> None:
        """Wait until no pass is running or asked for."""
        await self._idle.wait()

    async def rotate(self, actor: Actor | None) -> None:
        """Add a master-key version, make it active, and start re-wrapping under it."""
        keyring = self._keys.keyring
        if keyring.path is None:
            raise _read_only(
                "The vault's master keys come from AP_VAULT_MASTER_KEYS: add a version there "
                "and make it active, then restart the vault; the re-wrap starts by itself."
            )
        async with self._rotating, self._pool.acquire() as conn, conn.transaction():
            await store.master_key_rotation_lock(conn)
            known = [r["version"] for r in await store.master_key_version_list(conn)]
            rotated = self._keys.keyring.with_new_version(at_least=max(known, default=0) + 1)
            # The key reaches the file before any data key is wrapped under it.
            try:
                await asyncio.to_thread(rotated.save)
            except OSError as err:
                raise _read_only(
                    f"The vault cannot write its key file ({err.strerror}): add a version "
                    "there, make it active and restart the vault; the re-wrap starts by itself."
                ) from None
            new = rotated.active
            await store.master_key_version_register(conn, [(new.version, new.check)])
            await store.audit_append(
                conn,
                store.AuditEntry(
                    operation="rotate",
                    outcome="ok",
                    actor_service="control_plane",
                    actor_user=actor.user_id if actor else None,
                    master_key_version=new.version,
                ),
            )
        self._keys.keyring = rotated
        log.info("vault_master_key_rotated", active_version=new.version)
        self.kick()

    async def status(self) -> KeyStatus:
        """Report every known version, its state and the data keys it still wraps."""
        keyring = self._keys.keyring
        async with self._pool.acquire() as conn:
            rows = await store.master_key_version_list(conn)
        versions = []
        for row in rows:
            if row["retire_time"] is not None:
                state = "retired"
            elif row["version"] == keyring.active_version:
                state = "active"
            else:
                state = "decrypt_only"
            versions.append(
                VersionStatus(
                    row["version"],
                    state,
                    row["data_key_count"],
                    keyring.get(row["version"]) is not None,
                    row["create_time"],
                    row["retire_time"],
                )
            )
        return KeyStatus(keyring.active_version, versions, self._running)

    def _retry_later(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
        self._retry = asyncio.get_running_loop().call_later(_RETRY_SECONDS, self.kick)

    async def _work(self) -> None:
        while True:
            await self._wanted.wait()
            self._wanted.clear()
            self._running = True
            try:
                await self.rewrap_pass()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                log.exception("vault_rewrap_failed", retry_in_seconds=_RETRY_SECONDS)
                self._retry_later()
            finally:
                self._running = False
            if not self._wanted.is_set():
                self._idle.set()

    @property
    def running(self) -> bool:
        """Say whether a re-wrap pass is running."""
        return self._running

    async def rewrap_pass(self) -> None:
        """Re-wrap every data key not under the active version, then retire what is unused.

        Rows another transaction held were skipped; if any remain besides those that cannot
        be re-wrapped, another pass is scheduled.
        """
        after: tuple[uuid.UUID, int] | None = None
        moved = failed = 0
        while True:
            batch = await self.rewrap_batch(after)
            moved, failed, after = moved + batch.moved, failed + batch.failed, batch.after
            if after is None:
                break
        if moved or failed:
            log.info("vault_rewrap_pass_done", data_keys=moved, failed=failed)
        await self._retire_unused()
        async with self._pool.acquire() as conn:
            behind = await store.secret_version_count_behind(
                conn, self._keys.keyring.active_version
            )
        if behind > failed:
            self._retry_later()

    async def rewrap_batch(self, after: tuple[uuid.UUID, int] | None) -> Batch:
        """Re-wrap one batch, after a cursor, in one transaction."""
        keyring = self._keys.keyring
        target = keyring.active
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await store.secret_version_rewrap_batch(
                conn, target.version, after, self._batch_size
            )
            moved = []
            for row in rows:
                sealed, binding = stored(row)
                rewrapped = _rewrap(row, keyring, target)
                if isinstance(rewrapped, str):
                    await store.audit_append(
                        conn,
                        store.AuditEntry(
                            operation="rewrap",
                            outcome=_REFUSALS[rewrapped],
                            reason=rewrapped,
                            actor_service="vault",
                            workspace_id=binding.workspace_id,
                            secret_uid=binding.secret_uid,
                            secret_name=binding.secret_id,
                            version=binding.version,
                            master_key_version=sealed.master_key_version,
                        ),
                    )
                    continue
                moved.append(
                    (
                        binding.secret_uid,
                        binding.version,
                        sealed.master_key_version,
                        rewrapped.wrapped_key,
                        target.version,
                    )
                )
            if moved:
                await store.secret_version_rewrapped(conn, moved)
                await store.audit_append(
                    conn,
                    store.AuditEntry(
                        operation="rewrap",
                        outcome="ok",
                        actor_service="vault",
                        master_key_version=target.version,
                        detail={"data_keys": len(moved)},
                    ),
                )
        cursor = (rows[-1]["id"], rows[-1]["version"]) if len(rows) == self._batch_size else None
        return Batch(len(moved), len(rows) - len(moved), cursor)

    async def _retire_unused(self) -> None:
        active = self._keys.keyring.active_version
        async with self._pool.acquire() as conn:
            for row in await store.master_key_version_list(conn):
                if row["version"] >= active or row["retire_time"] is not None:
                    continue
                async with conn.transaction():
                    if await store.master_key_version_retire_if_unused(conn, row["version"]):
                        await store.audit_append(
                            conn,
                            store.AuditEntry(
                                operation="retire",
                                outcome="ok",
                                actor_service="vault",
                                master_key_version=row["version"],
                            ),
                        )
                        log.info("vault_master_key_retired", version=row["version"])
