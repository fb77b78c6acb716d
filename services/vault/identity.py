"""Who may call the vault: the control plane administers, the gateway resolves, nobody else.

ResolveSecret is let through to the servicer whoever calls, because a refused resolve must be
audited like a granted one; `Secrets.resolve` refuses every caller but the gateway.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from services.rpc.internal_auth import (
    ServiceIdentifier,
    service_identity_required,
    service_not_allowed,
)

ADMINISTRATOR = "control_plane"
RESOLVE_METHOD = "/agentplatform.vault.v1.VaultService/ResolveSecret"


@dataclass(frozen=True)
class Caller:
    """The platform service making a vault call; None when it proved no identity."""

    service: str | None


class VaultAuthenticator:
    """Admit administration from the control plane only; pass resolves on to be audited."""

    def __init__(self, identifier: ServiceIdentifier) -> None:
        self._identifier = identifier

    async def __call__(self, method: str, metadata: Mapping[str, str]) -> Caller:
        service = self._identifier.identify(metadata)
        if method == RESOLVE_METHOD:
            return Caller(service)
        if service is None:
            raise service_identity_required()
        if service != ADMINISTRATOR:
            raise service_not_allowed(service)
        return Caller(service)
