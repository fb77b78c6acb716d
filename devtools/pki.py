"""A development certificate authority for mutual TLS between the platform's services.

`make run` and the tests call `issue_dev_pki`: a fresh CA whose private key only ever lives
in memory, and one certificate per service that serves as both its server and its client
certificate. A certificate names its service in a SPIFFE-style URI SAN
(`spiffe://agentplatform.internal/service/<name>`), which `services.rpc.tls` reads back.

    var/pki/ca.pem                   the CA certificate every service trusts
    var/pki/<service>.pem            the service's certificate (server and client auth)
    var/pki/<service>-key.pem        its private key (mode 600)
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from services.rpc.tls import ServiceTls, service_uri

# Long enough for a development stack or a test session, short enough to be harmless if lost.
_VALIDITY = dt.timedelta(days=7)
_LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class ServiceCertificate:
    """Where one service's certificate and key were written."""

    service: str
    cert_file: Path
    key_file: Path


@dataclass(frozen=True)
class DevPki:
    """A development CA and the certificates it issued."""

    ca_file: Path
    services: dict[str, ServiceCertificate]

    def tls(self, service: str) -> ServiceTls:
        """Load one service's certificate, key and the CA."""
        issued = self.services[service]
        return ServiceTls.load(self.ca_file, issued.cert_file, issued.key_file)

    def env(self, service: str) -> dict[str, str]:
        """Return the AP_TLS_* variables that give `service` its identity."""
        issued = self.services[service]
        return {
            "AP_TLS_CA_FILE": str(self.ca_file),
            "AP_TLS_CERT_FILE": str(issued.cert_file),
            "AP_TLS_KEY_FILE": str(issued.key_file),
        }


def _write(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.chmod(path, mode)  # O_CREAT's mode does not apply to a file that already existed


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Agent Platform (development)"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def issue_dev_pki(directory: Path, services: Sequence[str], *, hosts: Sequence[str] = ()) -> DevPki:
    """Create a CA and one certificate per service in `directory`, replacing older files.

    Each certificate is valid for the loopback names plus `hosts`, so clients that dial a
    service by any of them verify its server certificate.
    """
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("Agent Platform development CA")
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_file = directory / "ca.pem"
    _write(ca_file, ca_cert.public_bytes(serialization.Encoding.PEM), 0o644)
    names = [_san(h) for h in dict.fromkeys([*_LOOPBACK_HOSTS, *hosts])]
    issued = {}
    for service in services:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(service))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.SubjectAlternativeName(
                    [*names, x509.UniformResourceIdentifier(service_uri(service))]
                ),
                critical=False,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
            )
            .sign(ca_key, hashes.SHA256())
        )
        cert_file = directory / f"{service}.pem"
        key_file = directory / f"{service}-key.pem"
        _write(
            key_file,
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
            0o600,
        )
        _write(cert_file, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        issued[service] = ServiceCertificate(service, cert_file, key_file)
    return DevPki(ca_file, issued)
