"""Bearer API keys: only their SHA-256 is configured, and a presented key is compared in constant time.

Keys are long random strings (``rtinjury keys new``), so one round of SHA-256 is enough: there
is nothing to brute-force that a slow hash would protect. A job's ``owner`` is the first 12 hex
digits of its key's hash: enough to tell clients apart, useless to recover the key.
"""

from __future__ import annotations

import hashlib
import hmac
import logging

from fastapi.security import HTTPAuthorizationCredentials

from service.api.errors import ServiceProblem
from service.config import Settings

log = logging.getLogger(__name__)

HASH_PREFIX = "sha256:"
OWNER_DIGITS = 12
_CHALLENGE = {"WWW-Authenticate": "Bearer"}
_INVALID_CHALLENGE = {"WWW-Authenticate": 'Bearer error="invalid_token"'}


def hash_api_key(key: str) -> str:
    """``sha256:<hex>``: the line that goes into ``RTINJURY_API_KEY_HASHES``."""
    return HASH_PREFIX + hashlib.sha256(key.encode("utf-8")).hexdigest()


def owner_of(key_hash: str) -> str:
    return key_hash.removeprefix(HASH_PREFIX)[:OWNER_DIGITS]


def accepted_hashes(settings: Settings) -> list[str]:
    """The configured hashes plus the development key's, if one is set."""
    hashes = list(settings.api_key_hashes)
    if settings.api_key is not None:
        hashes.append(hash_api_key(settings.api_key.get_secret_value()))
    return hashes


def authenticate(credentials: HTTPAuthorizationCredentials | None, settings: Settings) -> str:
    """The owner id of a valid bearer key.

    Raises
    ------
    ServiceProblem
        ``unauthorized``: no key is configured, none was sent, or it matches none configured.
    """
    hashes = accepted_hashes(settings)
    if not hashes:
        raise ServiceProblem(
            "unauthorized",
            "no API key is configured on this server: set RTINJURY_API_KEY_HASHES to a JSON list of "
            "'sha256:<hex>' lines made with `rtinjury keys new` (or RTINJURY_API_KEY in development)",
            headers=_CHALLENGE,
        )
    if credentials is None or not credentials.credentials:
        raise ServiceProblem(
            "unauthorized", "send an API key as 'Authorization: Bearer <key>'", headers=_CHALLENGE
        )
    presented = hash_api_key(credentials.credentials)
    # Compare against every hash, without stopping at a match, so timing says nothing.
    matches = [hmac.compare_digest(presented, known) for known in hashes]
    if not any(matches):
        log.info("request with an unknown API key refused")
        raise ServiceProblem("unauthorized", "the API key is not valid", headers=_INVALID_CHALLENGE)
    return owner_of(presented)
