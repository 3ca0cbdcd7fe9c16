"""TLS contexts for DICOM (PS3.15 B.1, the BCP 195 TLS profile): the node's server side and the
client side of a send to a destination.

Both refuse anything older than TLS 1.2 and load their files up front, so a wrong path, a file
that holds no certificate or a key that does not belong to its certificate is one clear message
naming the setting, at start-up, instead of a handshake failure on the first association.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker.errors import InputError

MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2


@dataclass(frozen=True)
class NamedFile:
    """A PEM file and the name a user knows it by (``RTINJURY_NODE_TLS_CERT``, ``tls.ca_file``)."""

    name: str
    path: Path


class TlsConfigError(InputError):
    """A TLS file is missing, unreadable or does not hold what its setting says."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="tls-config")


def server_context(
    cert: NamedFile, key: NamedFile, ca: NamedFile | None, *, require_client_cert: bool
) -> ssl.SSLContext:
    """The context an SCP wraps accepted connections with; it leaves the handshake to the caller.

    pynetdicom wraps each accepted socket in its accept loop: a handshake there would make every
    other caller wait for a peer that connects and says nothing. The node completes it in the
    association's own thread instead (``SSLSocket.do_handshake``, with a timeout).

    Without ``ca`` no client certificate is asked for; with it, a presented certificate must
    chain to ``ca``, and with ``require_client_cert`` (mutual TLS, ``ca`` needed) one must be
    presented.
    """
    context = _DeferredHandshakeContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = MINIMUM_VERSION
    _load_identity(context, cert, key)
    if ca is not None:
        _load_ca(context, ca)
    context.verify_mode = (
        ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL if ca is not None else ssl.CERT_NONE
    )
    return context


def client_context(ca: NamedFile, identity: tuple[NamedFile, NamedFile] | None = None) -> ClientContext:
    """The context an SCU connects with: the peer's certificate must chain to ``ca`` and name the
    host it is reached at; ``identity`` (certificate, key) is ours, for a peer that asks for one."""
    context = ClientContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname
    context.minimum_version = MINIMUM_VERSION
    _load_ca(context, ca)
    if identity is not None:
        _load_identity(context, *identity)
    return context


def handshake_failure(error: BaseException) -> str:
    """Why a handshake failed, in a few words (``the peer's certificate is not trusted (...)``)."""
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"the peer's certificate is not trusted ({error.verify_message})"
    if isinstance(error, TimeoutError):
        return "no TLS handshake before the timeout"
    if isinstance(error, ConnectionError | ssl.SSLEOFError):
        return "the peer closed the connection during the TLS handshake (is TLS on at its end?)"
    if isinstance(error, ssl.SSLError):
        return f"TLS handshake failed ({error.reason or error.strerror or type(error).__name__})"
    return f"TLS handshake failed ({type(error).__name__})"


class _RecordingSocket(ssl.SSLSocket):
    """An SSL socket that tells its context why its handshake failed."""

    def do_handshake(self, block: bool = False) -> None:
        try:
            super().do_handshake(block)
        except OSError as error:
            context = self.context
            if isinstance(context, ClientContext):
                context.handshake_error = error
            raise


class ClientContext(ssl.SSLContext):
    """A client context that keeps the last handshake error: pynetdicom only logs it, and a send
    that fails must say why (an untrusted certificate, no TLS on the other side)."""

    sslsocket_class = _RecordingSocket
    handshake_error: OSError | None = None


class _DeferredHandshakeContext(ssl.SSLContext):
    """Wraps sockets without handshaking (``do_handshake_on_connect=False``), whatever is asked."""

    def wrap_socket(self, sock: socket.socket, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        kwargs["do_handshake_on_connect"] = False
        if len(args) >= 2:  # (server_side, do_handshake_on_connect, ...) given by position
            args = (args[0], False, *args[2:])
        return super().wrap_socket(sock, *args, **kwargs)


def _load_identity(context: ssl.SSLContext, cert: NamedFile, key: NamedFile) -> None:
    _check_readable(cert)
    _check_readable(key)
    _check_holds_certificate(cert)
    try:
        context.load_cert_chain(cert.path, key.path, password=_refuse_encrypted_key)
    except _EncryptedKeyError:
        raise TlsConfigError(
            f"{key.name}: {key.path} is an encrypted private key; give it unencrypted "
            "(readable by the service's user only)"
        ) from None
    except ssl.SSLError as error:
        if error.reason == "KEY_VALUES_MISMATCH":
            raise TlsConfigError(f"{key.name} does not match the certificate in {cert.name}") from None
        raise TlsConfigError(f"{key.name}: {key.path} holds no PEM private key") from None


def _load_ca(context: ssl.SSLContext, ca: NamedFile) -> None:
    _check_readable(ca)
    try:
        context.load_verify_locations(cafile=ca.path)
    except ssl.SSLError:
        raise TlsConfigError(f"{ca.name}: {ca.path} holds no PEM certificate") from None


def _check_readable(file: NamedFile) -> None:
    try:
        with file.path.open("rb") as handle:
            handle.read(1)
    except OSError as error:
        raise TlsConfigError(f"{file.name}: cannot read {file.path} ({error.strerror})") from None


def _check_holds_certificate(cert: NamedFile) -> None:
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=cert.path)
    except ssl.SSLError:
        raise TlsConfigError(f"{cert.name}: {cert.path} holds no PEM certificate") from None


class _EncryptedKeyError(Exception):
    pass


def _refuse_encrypted_key() -> str:
    # Without a callback OpenSSL would prompt on the terminal, hanging a service with none.
    raise _EncryptedKeyError
