"""Service identity for internal APIs: a per-deployment shared token (no mTLS configured)."""

from __future__ import annotations

import hmac
from collections.abc import Mapping

import grpc

from services.rpc.errors import ApiError, Reason

INTERNAL_TOKEN_HEADER = "x-ap-internal-token"


class InternalTokenAuthenticator:
    """Admit only callers presenting the deployment's internal token."""

    def __init__(self, token: str) -> None:
        self._token = token.encode()

    async def __call__(self, method: str, metadata: Mapping[str, str]) -> str:
        presented = metadata.get(INTERNAL_TOKEN_HEADER, "").encode()
        if not hmac.compare_digest(presented, self._token):
            raise ApiError(
                grpc.StatusCode.UNAUTHENTICATED,
                Reason.SERVICE_IDENTITY_REQUIRED,
                "This internal API accepts only platform services.",
            )
        return "service"
