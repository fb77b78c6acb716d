"""Mutual TLS between services: credentials from PEM files, identities from certificates.

A service's certificate names it in a URI SAN, `spiffe://agentplatform.internal/service/<name>`;
the same certificate serves as its server certificate and as its client certificate. A
server built with `ServiceTls.server_credentials()` completes a handshake only with a client
whose certificate chains to the deployment's CA; `peer_service()` then names that client.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

SPIFFE_PREFIX = "spiffe://agentplatform.internal/service/"


def service_uri(service: str) -> str:
    """Return the URI SAN that names a service in its certificate."""
    return SPIFFE_PREFIX + service


@dataclass(frozen=True)
class ServiceTls:
    """A service's certificate, its private key and the CA it trusts, as PEM bytes."""

    ca: bytes
    cert: bytes
    key: bytes = field(repr=False)

    @classmethod
    def load(cls, ca_file: Path, cert_file: Path, key_file: Path) -> ServiceTls:
        """Read the three PEM files; OSError names the one that could not be read."""
        return cls(ca_file.read_bytes(), cert_file.read_bytes(), key_file.read_bytes())

    def server_credentials(self) -> grpc.ServerCredentials:
        """Return credentials that serve TLS and require a client certificate from the CA."""
        return grpc.ssl_server_credentials(
            [(self.key, self.cert)], root_certificates=self.ca, require_client_auth=True
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """Return credentials that verify the server against the CA and present our certificate."""
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca, private_key=self.key, certificate_chain=self.cert
        )


def peer_service(context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
    """Name the platform service whose verified client certificate made this call, if any."""
    ids = list(context.auth_context().get("peer_spiffe_id", ()))
    if len(ids) != 1:
        return None
    uri = ids[0].decode("utf-8", errors="replace")
    if not uri.startswith(SPIFFE_PREFIX):
        return None
    return uri.removeprefix(SPIFFE_PREFIX) or None
