"""TLS between nodes: mutual authentication against a private cluster CA.

Clients reach the node over ``--ws ssl:…`` / ``--http ssl:…`` endpoint
descriptions and need nothing from here. The PB link between nodes is
different: both ends must prove membership of the cluster, so both present a
certificate signed by the cluster CA (``--cluster-ca``) and both refuse a peer
whose certificate that CA did not sign. Hostnames are not checked: the CA is
private to the cluster, so its signature is what makes a peer a member.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.internet import endpoints, ssl
from twisted.protocols.tls import TLSMemoryBIOFactory

__all__ = ["ClusterTLS", "ClusterTLSError", "load_cluster_tls"]


class ClusterTLSError(ValueError):
    """A cluster CA, certificate or key file cannot be used."""


@dataclass
class ClusterTLS:
    """The cluster CA and this node's identity; builds both ends' TLS options."""

    ca: ssl.Certificate
    identity: ssl.PrivateCertificate

    def options(self) -> ssl.CertificateOptions:
        """Present our certificate, require the peer's, trust only the cluster CA.

        The same options serve the listening and the connecting side.
        """
        options: ssl.CertificateOptions = self.identity.options(self.ca)
        return options

    def wrap_server_factory(self, factory: Any) -> TLSMemoryBIOFactory:
        """Wrap the PB server factory so it speaks TLS on a plain ``tcp:`` endpoint."""
        return TLSMemoryBIOFactory(self.options(), False, factory)

    def wrap_client_endpoint(self, endpoint: Any) -> Any:
        """Wrap a plain client endpoint to another node in mutual TLS."""
        return endpoints.wrapClientTLS(self.options(), endpoint)


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise ClusterTLSError(f"{what} {path}: {exc.strerror or exc}") from None


def load_cluster_tls(ca_path: str, cert_path: str, key_path: str | None = None) -> ClusterTLS:
    """Load PEM files; the key may sit in the certificate file (``key_path`` None)."""
    ca_pem = _read(ca_path, "--cluster-ca")
    cert_pem = _read(cert_path, "--cluster-cert")
    key_pem = _read(key_path, "--cluster-key") if key_path else cert_pem
    try:
        ca = ssl.Certificate.loadPEM(ca_pem)
    except Exception as exc:
        raise ClusterTLSError(f"--cluster-ca {ca_path}: not a PEM certificate ({exc})") from None
    try:
        identity = ssl.PrivateCertificate.loadPEM(cert_pem + b"\n" + key_pem)
    except Exception as exc:
        raise ClusterTLSError(
            f"--cluster-cert {cert_path}: not a PEM certificate with its key ({exc})"
        ) from None
    return ClusterTLS(ca, identity)
