"""Service identity for internal APIs: a client certificate (mTLS) or a per-deployment token.

Two ways for an internal caller to say which platform service it is:

- mutual TLS: the server requires a client certificate from the deployment's CA, and the
  certificate's URI SAN names the service (`services.rpc.tls`);
- tokens, where TLS is off: the caller sends `x-ap-internal-token`, and the server maps each
  token it knows to one service. The worker's dispatch token (`AP_INTERNAL_TOKEN`) is one
  such token; the vault knows only its own two (`AP_VAULT_ADMIN_TOKEN`, `AP_VAULT_RESOLVE_TOKEN`).
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Mapping
from typing import Generic, TypeVar

import grpc
import structlog

from services.rpc.errors import ApiError, Reason, forwarded_error
from services.rpc.interceptors import current_call_context
from services.rpc.settings import SettingsError
from services.rpc.tls import ServiceTls, peer_service

log = structlog.get_logger()

INTERNAL_TOKEN_HEADER = "x-ap-internal-token"


def service_identity_required() -> ApiError:
    """Build the error for a call that carries no valid service identity."""
    return ApiError(
        grpc.StatusCode.UNAUTHENTICATED,
        Reason.SERVICE_IDENTITY_REQUIRED,
        "This internal API accepts only platform services.",
    )


def service_not_allowed(service: str) -> ApiError:
    """Build the error for a platform service calling a method that is not meant for it."""
    return ApiError(
        grpc.StatusCode.PERMISSION_DENIED,
        Reason.SERVICE_NOT_ALLOWED,
        f"The {service} service may not make this call.",
        metadata={"service": service},
    )


class InternalTokenAuthenticator:
    """Admit only callers presenting the deployment's internal token."""

    def __init__(self, token: str) -> None:
        self._token = token.encode()

    async def __call__(self, method: str, metadata: Mapping[str, str]) -> str:
        presented = metadata.get(INTERNAL_TOKEN_HEADER, "").encode()
        if not hmac.compare_digest(presented, self._token):
            raise service_identity_required()
        return "service"


class ServiceIdentifier:
    """Name the platform service making the running call, from its certificate or its token.

    With `mtls`, only the verified client certificate counts and tokens are ignored; without
    it, the token must match one of `tokens` (service name → token).
    """

    def __init__(self, *, mtls: bool, tokens: Mapping[str, str] | None = None) -> None:
        self._mtls = mtls
        self._tokens = [(service, token.encode()) for service, token in (tokens or {}).items()]

    def identify(self, metadata: Mapping[str, str]) -> str | None:
        """Return the calling service's name, or None when the call proves none."""
        if self._mtls:
            return peer_service(current_call_context())
        presented = metadata.get(INTERNAL_TOKEN_HEADER, "").encode()
        found = None
        # Compare with every token, so the time taken does not tell which one nearly matched.
        for service, token in self._tokens:
            if hmac.compare_digest(presented, token):
                found = service
        return found


def internal_channel(
    address: str, tls: ServiceTls | None, token: str | None, *, needs: str
) -> tuple[grpc.aio.Channel, tuple[tuple[str, str], ...]]:
    """Open a channel to an internal API as this service: mTLS when configured, else a token.

    Returns the channel and the metadata every call on it carries. `needs` names the token
    setting for the error raised when neither identity is configured.
    """
    if tls is not None:
        return grpc.aio.secure_channel(address, tls.channel_credentials()), ()
    if token is None:
        raise SettingsError(f"calling {address} needs AP_TLS_* (mTLS) or {needs}")
    return grpc.aio.insecure_channel(address), ((INTERNAL_TOKEN_HEADER, token),)


StubT = TypeVar("StubT")
T = TypeVar("T")


class InternalClient(Generic[StubT]):
    """A channel to another service's internal API, as this service, forwarding its errors."""

    def __init__(
        self,
        *,
        service: str,
        address: str,
        tls: ServiceTls | None,
        token: str | None,
        needs: str,
        stub: Callable[[grpc.aio.Channel], StubT],
        timeout: float,
    ) -> None:
        """Open the channel (inside the running loop): mTLS when configured, else the token."""
        self._service = service
        self._timeout = timeout
        self._channel, self._metadata = internal_channel(address, tls, token, needs=needs)
        self.stub = stub(self._channel)

    async def call(self, method: Callable[..., Awaitable[T]], request: object) -> T:
        """Call a method; its errors reach our caller as the other service put them."""
        try:
            return await method(request, metadata=self._metadata, timeout=self._timeout)
        except grpc.aio.AioRpcError as err:
            forwarded = forwarded_error(err, self._service)
            if forwarded.code == grpc.StatusCode.INTERNAL:
                log.error(
                    "internal_call_failed",
                    service=self._service,
                    code=err.code().name,
                    details=err.details(),
                )
            raise forwarded from None

    async def close(self) -> None:
        """Close the channel."""
        await self._channel.close(None)
