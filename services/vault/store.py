"""All of the vault's SQL. Functions are named noun first: `secret_get`, `audit_append`…"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from services.rpc.db import Connection
from services.rpc.names import SecretRef

Record = asyncpg.Record

_SECRET_COLUMNS = "s.id, s.workspace_id, s.name, s.version, s.create_time, s.update_time"


def _match(ref: SecretRef) -> tuple[str, Any]:
    """Return the secrets-row condition for a reference by id or by uid, and its value."""
    if ref.uid is not None:
        return "s.id = $2", ref.uid
    return "s.name = $2", ref.secret_id


# -- master-key versions -------------------------------------------------------------------


async def master_key_version_register(
    conn: Connection, versions: Sequence[tuple[int, bytes]]
) -> None:
    """Record master-key versions (version, key check) the database did not know yet."""
    await conn.executemany(
        "INSERT INTO master_key_versions (version, key_check) VALUES ($1, $2)"
        " ON CONFLICT (version) DO UPDATE SET key_check = EXCLUDED.key_check"
        " WHERE master_key_versions.key_check IS NULL",
        versions,
    )


async def master_key_version_list(conn: Connection) -> list[Record]:
    """List every known version with its key check, times and how many data keys it wraps."""
    return await conn.fetch(
        "SELECT k.version, k.key_check, k.create_time, k.retire_time,"
        " (SELECT count(*) FROM secret_versions v WHERE v.master_key_version = k.version)"
        "   AS data_key_count"
        " FROM master_key_versions k ORDER BY k.version"
    )


async def master_key_versions_referenced(conn: Connection) -> list[int]:
    """Return every master-key version some data key is wrapped under."""
    # A loose index scan: one probe per distinct version instead of reading every row.
    rows = await conn.fetch(
        "WITH RECURSIVE v AS ("
        "  (SELECT master_key_version AS version FROM secret_versions"
        "   ORDER BY master_key_version LIMIT 1)"
        "  UNION ALL"
        "  SELECT (SELECT master_key_version FROM secret_versions"
        "          WHERE master_key_version > v.version ORDER BY master_key_version LIMIT 1)"
        "  FROM v WHERE v.version IS NOT NULL"
        ") SELECT version FROM v WHERE version IS NOT NULL"
    )
    return [r["version"] for r in rows]


async def master_key_rotation_lock(conn: Connection) -> None:
    """Serialise rotations across vault replicas until the transaction ends."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext('ap_vault_rotate'))")


async def master_key_version_usable(conn: Connection, version: int) -> bool:
    """Share-lock a version for a write under it; False when it is retired or unknown.

    The lock makes a concurrent retirement wait for this write, then count it.
    """
    row = await conn.fetchrow(
        "SELECT retire_time FROM master_key_versions WHERE version = $1 FOR SHARE", version
    )
    return row is not None and row["retire_time"] is None


async def master_key_version_retire_if_unused(conn: Connection, version: int) -> bool:
    """Retire a version if no data key is wrapped under it any more; say whether it was."""
    locked = await conn.fetchrow(
        "SELECT retire_time FROM master_key_versions WHERE version = $1 FOR UPDATE", version
    )
    if locked is None or locked["retire_time"] is not None:
        return False
    # A new statement: under READ COMMITTED it sees every write that held the share lock.
    if await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM secret_versions WHERE master_key_version = $1)", version
    ):
        return False
    await conn.execute(
        "UPDATE master_key_versions SET retire_time = now() WHERE version = $1", version
    )
    return True


# -- secrets -------------------------------------------------------------------------------


async def secret_get(conn: Connection, workspace_id: uuid.UUID, ref: SecretRef) -> Record | None:
    """Get a secret's metadata by id or uid, within one workspace."""
    condition, value = _match(ref)
    return await conn.fetchrow(
        f"SELECT {_SECRET_COLUMNS} FROM secrets s WHERE s.workspace_id = $1 AND {condition}",
        workspace_id,
        value,
    )


async def secret_list(
    conn: Connection, workspace_id: uuid.UUID, *, after: str | None, limit: int
) -> list[Record]:
    """List a workspace's secrets ordered by id, after a keyset cursor."""
    return await conn.fetch(
        f"SELECT {_SECRET_COLUMNS} FROM secrets s"
        " WHERE s.workspace_id = $1 AND ($2::text IS NULL OR s.name > $2)"
        " ORDER BY s.name LIMIT $3",
        workspace_id,
        after,
        limit,
    )


async def secret_delete(conn: Connection, workspace_id: uuid.UUID, ref: SecretRef) -> Record | None:
    """Delete a secret and, by cascade, every version; return what was deleted."""
    condition, value = _match(ref)
    return await conn.fetchrow(
        f"DELETE FROM secrets s WHERE s.workspace_id = $1 AND {condition}"
        f" RETURNING {_SECRET_COLUMNS}",
        workspace_id,
        value,
    )


async def secret_lock(conn: Connection, workspace_id: uuid.UUID, name: str) -> Record | None:
    """Lock a secret for a new version, creating none."""
    return await conn.fetchrow(
        f"SELECT {_SECRET_COLUMNS} FROM secrets s"
        " WHERE s.workspace_id = $1 AND s.name = $2 FOR UPDATE",
        workspace_id,
        name,
    )


async def secret_insert(conn: Connection, workspace_id: uuid.UUID, name: str) -> Record | None:
    """Create a secret at version 0 and lock it; None when a concurrent put created it first."""
    return await conn.fetchrow(
        "INSERT INTO secrets AS s (id, workspace_id, name, version) VALUES ($1, $2, $3, 0)"
        f" ON CONFLICT (workspace_id, name) DO NOTHING RETURNING {_SECRET_COLUMNS}",
        uuid.uuid4(),
        workspace_id,
        name,
    )


async def secret_version_add(
    conn: Connection,
    secret_uid: uuid.UUID,
    version: int,
    *,
    format: int,
    nonce: bytes,
    ciphertext: bytes,
    wrapped_key: bytes,
    master_key_version: int,
    request_id: str | None,
    created_by: uuid.UUID | None,
) -> Record:
    """Store a new version and make it the secret's newest; return the secret's metadata."""
    await conn.execute(
        "INSERT INTO secret_versions (secret_id, version, format, nonce, ciphertext,"
        " wrapped_key, master_key_version, request_id, created_by)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        secret_uid,
        version,
        format,
        nonce,
        ciphertext,
        wrapped_key,
        master_key_version,
        request_id,
        created_by,
    )
    row = await conn.fetchrow(
        "UPDATE secrets s SET version = $2, update_time = now() WHERE s.id = $1"
        f" RETURNING {_SECRET_COLUMNS}",
        secret_uid,
        version,
    )
    assert row is not None
    return row


# A version, what unseals it, and the state of the master key it is wrapped under; the outer
# join keeps a row that names an unknown version, so that it fails as such.
_VERSION_COLUMNS = (
    "s.id, s.workspace_id, s.name, s.create_time, v.create_time AS update_time,"
    " v.version, v.format, v.nonce, v.ciphertext, v.wrapped_key, v.master_key_version,"
    " k.version IS NOT NULL AS master_key_known, k.retire_time IS NOT NULL AS master_key_retired"
)
_VERSION_FROM = (
    "secrets s JOIN secret_versions v ON v.secret_id = s.id"
    " LEFT JOIN master_key_versions k ON k.version = v.master_key_version"
)


async def secret_version_by_request(
    conn: Connection, workspace_id: uuid.UUID, name: str, request_id: str
) -> Record | None:
    """Find the version a put with this request id stored, with what unseals it."""
    return await conn.fetchrow(
        f"SELECT {_VERSION_COLUMNS} FROM {_VERSION_FROM}"
        " WHERE s.workspace_id = $1 AND s.name = $2 AND v.request_id = $3",
        workspace_id,
        name,
        request_id,
    )


@dataclass(frozen=True)
class ResolveRequest:
    """One secret version to read for a resolve, and the run it is for."""

    workspace_id: uuid.UUID
    ref: SecretRef
    version: int
    run: str


# What each row of secret_versions_resolve holds: the request's index, the version's columns
# (NULL when not found), the audit record's outcome so far and its id.
_JUDGED_COLUMNS = (
    "id, workspace_id, name, create_time, update_time, version, format, nonce, ciphertext,"
    " wrapped_key, master_key_version, master_key_known, master_key_retired"
)


async def secret_versions_resolve(
    conn: Connection, requests: Sequence[ResolveRequest], *, actor_service: str
) -> list[Record]:
    """Read versions (0: the newest) and append one audit record each, in one statement.

    One statement is one transaction: if an audit record cannot be written, nothing is read.
    A record's outcome is `ok`, or `not_found` / `key_unavailable` when the row is missing or
    names a retired or unknown master-key version; a failure found only later (decryption)
    is written over it with `audit_outcome_set`. Rows come back in the requests' order.
    """
    by_name = (
        "SELECT r.i, {cols} FROM req r"
        " JOIN secrets s ON s.workspace_id = r.workspace_id AND s.{key} = r.{key}"
        " JOIN secret_versions v ON v.secret_id = s.id"
        "  AND v.version = CASE WHEN r.version = 0 THEN s.version ELSE r.version END"
        " LEFT JOIN master_key_versions k ON k.version = v.master_key_version"
    )
    return await conn.fetch(
        "WITH req AS (SELECT * FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::bigint[],"
        "   $5::text[], $6::text[]) WITH ORDINALITY"
        "  AS r(workspace_id, name, id, version, ref, run, i)),"
        f" found AS ({by_name.format(cols=_VERSION_COLUMNS, key='name')}"
        f"  UNION ALL {by_name.format(cols=_VERSION_COLUMNS, key='id')}),"
        " judged AS (SELECT r.i, r.workspace_id AS asked_workspace, r.ref AS asked_ref,"
        "   r.version AS asked_version, r.run,"
        f"  {', '.join(f'f.{c.strip()}' for c in _JUDGED_COLUMNS.split(','))},"
        "   CASE WHEN f.i IS NULL THEN 'not_found'"
        "    WHEN NOT f.master_key_known OR f.master_key_retired THEN 'key_unavailable'"
        "    ELSE 'ok' END AS outcome,"
        "   nextval(pg_get_serial_sequence('audit_log', 'id')) AS audit_id"
        "  FROM req r LEFT JOIN found f ON f.i = r.i),"
        " audit AS (INSERT INTO audit_log (id, operation, outcome, reason, actor_service,"
        "   workspace_id, secret_uid, secret_name, version, master_key_version, run)"
        "  OVERRIDING SYSTEM VALUE"
        "  SELECT audit_id, 'resolve', outcome, CASE outcome WHEN 'not_found' THEN 'NOT_FOUND'"
        "   WHEN 'key_unavailable' THEN 'MASTER_KEY_UNAVAILABLE' END, $7, asked_workspace, id,"
        "   coalesce(name, asked_ref), coalesce(version, nullif(asked_version, 0)),"
        "   master_key_version, run FROM judged)"
        " SELECT * FROM judged ORDER BY i",
        [r.workspace_id for r in requests],
        [r.ref.secret_id for r in requests],
        [r.ref.uid for r in requests],
        [r.version for r in requests],
        [str(r.ref) for r in requests],
        [r.run for r in requests],
        actor_service,
    )


async def secret_version_rewrap_batch(
    conn: Connection, active: int, after: tuple[uuid.UUID, int] | None, limit: int
) -> list[Record]:
    """Lock the next data keys not wrapped under `active`, skipping rows others hold."""
    return await conn.fetch(
        f"SELECT {_VERSION_COLUMNS} FROM {_VERSION_FROM}"
        " WHERE v.master_key_version <> $1"
        "  AND ($2::uuid IS NULL OR (v.secret_id, v.version) > ($2, $3))"
        " ORDER BY v.secret_id, v.version LIMIT $4"
        " FOR UPDATE OF v SKIP LOCKED",
        active,
        after[0] if after else None,
        after[1] if after else 0,
        limit,
    )


async def secret_version_count_behind(conn: Connection, active: int) -> int:
    """Count the data keys not wrapped under the active master-key version."""
    count: int = await conn.fetchval(
        "SELECT count(*) FROM secret_versions WHERE master_key_version <> $1", active
    )
    return count


async def secret_version_rewrapped(
    conn: Connection,
    rows: Sequence[tuple[uuid.UUID, int, int, bytes, int]],
) -> None:
    """Store re-wrapped data keys: (secret, version, old master key, wrapped key, new one)."""
    await conn.executemany(
        "UPDATE secret_versions SET wrapped_key = $4, master_key_version = $5"
        " WHERE secret_id = $1 AND version = $2 AND master_key_version = $3",
        rows,
    )


# -- audit ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class AuditEntry:
    """One audit record; it names what was done to which secret, never a value."""

    operation: str
    outcome: str
    actor_service: str
    reason: str | None = None
    actor_user: uuid.UUID | None = None
    workspace_id: uuid.UUID | None = None
    secret_uid: uuid.UUID | None = None
    secret_name: str | None = None
    version: int | None = None
    master_key_version: int | None = None
    run: str | None = None
    request_id: str | None = None
    detail: dict[str, Any] | None = None


_AUDIT_FIELDS = list(AuditEntry.__dataclass_fields__)


async def audit_outcome_set(conn: Connection, audit_id: int, outcome: str, reason: str) -> None:
    """Correct a record written before the operation's outcome was known."""
    await conn.execute(
        "UPDATE audit_log SET outcome = $2, reason = $3 WHERE id = $1", audit_id, outcome, reason
    )


async def audit_append(conn: Connection, entry: AuditEntry) -> None:
    """Append one audit record."""
    await conn.execute(
        f"INSERT INTO audit_log ({', '.join(_AUDIT_FIELDS)})"
        f" VALUES ({', '.join(f'${i + 1}' for i in range(len(_AUDIT_FIELDS)))})",
        *(getattr(entry, f) for f in _AUDIT_FIELDS),
    )
