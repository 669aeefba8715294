"""Outbound DICOM TLS: the client context for a destination with ``tls = true``.

TLS 1.2 or newer; the peer's certificate is always checked, against the destination's
``ca_certificates`` or else the system's trusted CAs, and so is the name in it (``server_name``, or the
``host`` the node connects to — a DNS name or an IP address in the certificate's subjectAltName). A
client certificate is presented when ``certificate`` and ``private_key`` are given. There is no
fallback: when the handshake fails, nothing is sent.
"""

from __future__ import annotations

import ssl

from dicom_node.config import Destination


def client_ssl_context(destination: Destination) -> ssl.SSLContext:
    """A verifying TLS 1.2+ client context for ``destination``."""
    if destination.ca_certificates is not None:
        context = ssl.create_default_context(cafile=str(destination.ca_certificates))
    else:
        context = ssl.create_default_context()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    if destination.certificate is not None and destination.private_key is not None:
        context.load_cert_chain(certfile=str(destination.certificate), keyfile=str(destination.private_key))
    return context


def tls_arguments(destination: Destination) -> tuple[ssl.SSLContext, str] | None:
    """pynetdicom's ``tls_args`` for ``destination``: ``None`` (plain TCP) unless it says ``tls = true``."""
    if not destination.tls:
        return None
    return client_ssl_context(destination), destination.server_name or destination.host
