"""The vault's Prometheus metrics.

`docs/operations.md` says what each one means and how to read it.
"""

from __future__ import annotations

from prometheus_client import Counter

RESOLVE_OUTCOMES = (
    "ok",
    "not_found",
    "denied",
    "invalid_argument",
    "decrypt_failed",
    "key_unavailable",
    "audit_unavailable",
)

VAULT_RESOLVES = Counter(
    "ap_vault_resolves",
    "ResolveSecret calls answered, by outcome: ok, not_found, denied, invalid_argument, "
    "decrypt_failed, key_unavailable (each one audited) and audit_unavailable (refused "
    "because the audit record could not be written).",
    ["outcome"],
)

# Known label values start at 0, so a rate() over an outcome that has not happened yet works.
for _outcome in RESOLVE_OUTCOMES:
    VAULT_RESOLVES.labels(_outcome)


def record_resolve(outcome: str) -> None:
    """Count one ResolveSecret by how it ended (one of RESOLVE_OUTCOMES)."""
    VAULT_RESOLVES.labels(outcome).inc()
