"""Who the client is and how it trusts the server: a bearer token and TLS from PEM files.

The token travels as call metadata (`authorization: Bearer <token>`) that the
client adds itself, rather than as grpc call credentials, which grpc refuses on
plaintext channels (scout on loopback needs none of TLS but may still want the
token). The token is secret: it appears in no repr, message or log of ours.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import grpc

__all__ = ["TLS", "bearer_metadata"]

AUTHORIZATION = "authorization"


def bearer_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """Build the authorization header; refuse a token grpc could not send, without showing it."""
    if token is None:
        return ()
    if not token or not all("!" <= ch <= "~" for ch in token):
        # Never quote the token: this message may end up in a log.
        raise ValueError("the token must be non-empty printable ASCII without spaces")
    return ((AUTHORIZATION, f"Bearer {token}"),)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TLS:
    """TLS to the scout server, from PEM files read when the channel opens.

    ca_file    CA bundle that verifies the server; None: grpc's default roots
               (its bundled roots, or GRPC_DEFAULT_SSL_ROOTS_FILE_PATH)
    cert_file  client certificate for mutual TLS (needs key_file)
    key_file   its private key
    """

    ca_file: str | Path | None = None
    cert_file: str | Path | None = None
    key_file: str | Path | None = None

    def __post_init__(self) -> None:
        """A certificate without its key (or the reverse) is a mistake, not a choice."""
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("mutual TLS needs both cert_file and key_file")

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """Read the files now (OSError names a missing one) and make grpc's credentials."""
        root = Path(self.ca_file).read_bytes() if self.ca_file is not None else None
        cert = Path(self.cert_file).read_bytes() if self.cert_file is not None else None
        key = Path(self.key_file).read_bytes() if self.key_file is not None else None
        return grpc.ssl_channel_credentials(
            root_certificates=root, private_key=key, certificate_chain=cert
        )
