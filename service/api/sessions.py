"""Browser sessions: an API key entered once on the login page, then a signed HttpOnly cookie.

The cookie holds the key's SHA-256 (never the key), an expiry and a random session id, signed
with HMAC-SHA256. Every request checks the signature, the expiry, and that the hash is still one
of the configured keys, so removing a key line logs its browsers out at their next request. The
cookie is ``HttpOnly`` (no script reads it), ``SameSite=Strict`` (no other site's page sends it)
and ``Secure`` when the page came over HTTPS.

A request authenticated by the cookie that changes something (POST, DELETE) must also carry the
session's CSRF token in ``X-CSRF-Token`` (pages put it in a ``<meta>`` tag); a bearer-key request
needs none, since no browser adds a bearer header by itself.

The signing secret is ``RTINJURY_SESSION_SECRET``, or a random one kept in
``<storage root>/session-secret`` (mode 0600) so that every API process on that storage accepts
the same cookies and a restart logs nobody out.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from service.config import Settings

log = logging.getLogger(__name__)

COOKIE_NAME = "rtinjury_session"
CSRF_HEADER = "X-CSRF-Token"
SECRET_FILE = "session-secret"
_SECRET_BYTES = 32
#: Methods that change nothing; every other one needs the CSRF token with a cookie session.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True)
class Session:
    """A valid session: whose key (its ``sha256:`` hash), until when, and its CSRF token."""

    key_hash: str
    expires_at: int
    session_id: str

    def csrf_token(self, secret: bytes) -> str:
        return _mac(secret, b"csrf:" + self.session_id.encode("ascii"))

    def csrf_matches(self, secret: bytes, presented: str | None) -> bool:
        return presented is not None and _same_text(self.csrf_token(secret), presented)


def new_session(key_hash: str, lifetime_s: int, now: float | None = None) -> Session:
    expires_at = int((time.time() if now is None else now) + lifetime_s)
    return Session(key_hash, expires_at, secrets.token_urlsafe(16))


def encode_cookie(session: Session, secret: bytes) -> str:
    """``<payload>.<mac>``, both base64url: the payload is JSON of the key hash, expiry and id."""
    document = {"k": session.key_hash, "e": session.expires_at, "s": session.session_id}
    payload = _b64(json.dumps(document, separators=(",", ":")).encode("utf-8"))
    return f"{payload}.{_mac(secret, payload.encode('ascii'))}"


def decode_cookie(value: str | None, secret: bytes, now: float | None = None) -> Session | None:
    """The session a cookie value holds, or None: absent, altered, malformed or expired."""
    if not value or value.count(".") != 1 or len(value) > 1024:
        return None
    payload, mac = value.split(".")
    if not _same_text(_mac(secret, payload.encode("utf-8", "replace")), mac):
        return None
    try:
        document = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        session = Session(str(document["k"]), int(document["e"]), str(document["s"]))
    except (ValueError, KeyError, TypeError, OverflowError, binascii.Error):
        return None
    if session.expires_at <= (time.time() if now is None else now):
        return None
    return session


def session_secret(settings: Settings) -> bytes:
    """The configured secret, else the storage root's (made on first use, readable by us only)."""
    if settings.session_secret is not None:
        return settings.session_secret.get_secret_value().encode("utf-8")
    path = Path(settings.storage_root) / SECRET_FILE
    try:
        return _read_secret(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # O_EXCL: of two processes starting at once, one writes and both read the same secret.
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_secret(path)
    with os.fdopen(descriptor, "w", encoding="ascii") as file:
        file.write(secrets.token_hex(_SECRET_BYTES))
    log.info("made a new session signing secret under the storage root")
    return _read_secret(path)


def _read_secret(path: Path) -> bytes:
    for _ in range(50):
        text = path.read_text(encoding="ascii").strip()
        if text:
            return text.encode("ascii")
        time.sleep(0.01)  # another process made the file and is writing it
    raise RuntimeError(f"{path.name} under the storage root is empty; delete it to make a new one")


def _same_text(expected: str, presented: str) -> bool:
    """Constant-time comparison of strings from the client, which may hold any character
    (``hmac.compare_digest`` refuses non-ASCII ``str``; bytes it compares)."""
    return hmac.compare_digest(expected.encode("utf-8"), presented.encode("utf-8", "replace"))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _mac(secret: bytes, data: bytes) -> str:
    return _b64(hmac.new(secret, data, hashlib.sha256).digest())
