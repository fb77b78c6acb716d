"""Who may call the gateway: the control plane administers, workers list and call tools."""

from __future__ import annotations

from collections.abc import Mapping

from services.rpc.internal_auth import (
    ServiceIdentifier,
    service_identity_required,
    service_not_allowed,
)

_PREFIX = "/agentplatform.gateway.v1.GatewayService/"
WORKER_METHODS = frozenset({_PREFIX + "ListRunTools", _PREFIX + "CallTool"})


class GatewayAuthenticator:
    """Admit registry administration from the control plane and tool calls from workers."""

    def __init__(self, identifier: ServiceIdentifier) -> None:
        self._identifier = identifier

    async def __call__(self, method: str, metadata: Mapping[str, str]) -> str:
        service = self._identifier.identify(metadata)
        if service is None:
            raise service_identity_required()
        allowed = "worker" if method in WORKER_METHODS else "control_plane"
        if service != allowed:
            raise service_not_allowed(service)
        return service
