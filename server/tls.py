"""The server's TLS: its certificate and key, the CA for client certificates, and reloads.

Files are read and checked at start (a missing file, a key that does not match its
certificate, or an unreadable CA stops the server, naming the file). grpc serves them
through `dynamic_ssl_server_credentials`: grpc asks for the current certificates at each
new TLS handshake, so `reload()` (SIGHUP) swaps them for connections made afterwards.
That is what grpc allows: connections already open keep the session they negotiated,
and the calls on them go on undisturbed; nothing in flight is dropped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from .config import TLSSettings
from .errors import FileError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Files:
    """The PEM bytes of one generation of the server's TLS files."""

    cert: bytes
    key: bytes
    client_ca: bytes | None


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise FileError(f"cannot read the TLS {what} {path}: {exc.strerror}") from None


def _load(settings: TLSSettings) -> _Files:
    """Read and check the files: the key must match the certificate."""
    assert settings.cert_file is not None and settings.key_file is not None
    cert_pem = _read(settings.cert_file, "certificate")
    key_pem = _read(settings.key_file, "key")
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        raise FileError(f"{settings.cert_file} is not a PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise FileError(f"{settings.key_file} is not an unencrypted PEM private key") from None
    public = serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*public) != cert.public_key().public_bytes(*public):
        raise FileError(f"{settings.key_file} is not the key of {settings.cert_file}")
    client_ca = None
    if settings.client_ca_file is not None:
        client_ca = _read(settings.client_ca_file, "client CA")
        try:
            x509.load_pem_x509_certificates(client_ca)
        except ValueError:
            raise FileError(f"{settings.client_ca_file} is not a PEM CA bundle") from None
    return _Files(cert_pem, key_pem, client_ca)


def _configuration(files: _Files) -> grpc.ServerCertificateConfiguration:
    return grpc.ssl_server_certificate_configuration(
        [(files.key, files.cert)], root_certificates=files.client_ca
    )


class ServerTLS:
    """The TLS credentials of a server, reloadable for new handshakes."""

    def __init__(self, settings: TLSSettings) -> None:
        self.settings = settings
        self._files = _load(settings)
        self._pending: grpc.ServerCertificateConfiguration | None = None
        self._last_error = ""  # said once, not at every periodic check

    def credentials(self) -> grpc.ServerCredentials:
        """Credentials for add_secure_port; mutual TLS when a client CA is set."""
        return grpc.dynamic_ssl_server_credentials(
            _configuration(self._files),
            self._fetch,
            require_client_authentication=self._files.client_ca is not None,
        )

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """Called by grpc at each handshake: new files once after a reload, else None."""
        pending, self._pending = self._pending, None
        return pending

    def reload(self) -> bool:
        """Read the files again; new handshakes use them if they changed and are valid."""
        try:
            files = _load(self.settings)
        except FileError as exc:
            if str(exc) != self._last_error:
                log.error("TLS files not reloaded: %s; serving the previous ones", exc)  # noqa: TRY400
            self._last_error = str(exc)
            return False
        self._last_error = ""
        if files == self._files:
            return False
        self._files = files
        self._pending = _configuration(files)
        log.info("TLS certificates reloaded; new connections use them")
        return True
