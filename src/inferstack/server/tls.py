"""TLS for both ports: gRPC server credentials and an aiohttp SSL context (the clients' side
is in client/channels.py). Files are read once, at start-up; a missing or unreadable file is
an error naming it."""

from __future__ import annotations

import ssl
from pathlib import Path

import grpc

from inferstack.core.errors import InvalidArgumentError
from inferstack.server.settings import TlsSettings


def read_pem(path: Path | str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise InvalidArgumentError(f"{what} {path}: {exc.strerror or exc}") from exc


def grpc_server_credentials(tls: TlsSettings) -> grpc.ServerCredentials:
    """The server's key pair; with `client_ca`, client certificates are required and
    verified against it."""
    pair = (read_pem(tls.key, "tls.key"), read_pem(tls.cert, "tls.cert"))
    client_ca = read_pem(tls.client_ca, "tls.client_ca") if tls.client_ca else None
    return grpc.ssl_server_credentials(
        [pair], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def http_ssl_context(tls: TlsSettings) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    read_pem(tls.cert, "tls.cert")  # a clear error naming the file, not ssl's errno
    read_pem(tls.key, "tls.key")
    try:
        context.load_cert_chain(tls.cert, tls.key)
        if tls.client_ca is not None:
            read_pem(tls.client_ca, "tls.client_ca")
            context.load_verify_locations(cafile=tls.client_ca)
            context.verify_mode = ssl.CERT_REQUIRED
    except ssl.SSLError as exc:
        raise InvalidArgumentError(f"tls: cannot use {tls.cert} / {tls.key}: {exc}") from exc
    return context
