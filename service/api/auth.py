"""Bearer API keys: only their SHA-256 is configured, and a presented key is compared in constant time.

Keys are long random strings (``rtinjury keys new``), so one round of SHA-256 is enough: there
is nothing to brute-force that a slow hash would protect. A job's ``owner`` is the first 12 hex
digits of its key's hash: enough to tell clients apart, useless to recover the key. Each key
line carries the key's scopes (``submit``, ``read``, ``admin``); a key authenticates as a
``Caller``: its owner id and scopes.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from dataclasses import dataclass

from fastapi.security import HTTPAuthorizationCredentials

from service.api.errors import ServiceProblem
from service.config import Settings
from service.keys import ALL_SCOPES, KeyLine, Scope, scope_names

log = logging.getLogger(__name__)

HASH_PREFIX = "sha256:"
OWNER_DIGITS = 12
_CHALLENGE = {"WWW-Authenticate": "Bearer"}
_INVALID_CHALLENGE = {"WWW-Authenticate": 'Bearer error="invalid_token"'}


def hash_api_key(key: str) -> str:
    """``sha256:<hex>``: the key's line in ``RTINJURY_API_KEY_HASHES`` (all scopes; see ``service.keys``)."""
    return HASH_PREFIX + hashlib.sha256(key.encode("utf-8")).hexdigest()


def owner_of(key_hash: str) -> str:
    return key_hash.removeprefix(HASH_PREFIX)[:OWNER_DIGITS]


@dataclass(frozen=True)
class Caller:
    """Who sent a request: the owner id of its key and what the key may do.

    Attributes
    ----------
    owner : str
        First 12 hex digits of the key's hash (the ``owner`` of the jobs it submits).
    scopes : frozenset of Scope
        ``admin`` includes ``submit`` and ``read``, on every owner's jobs.
    """

    owner: str
    scopes: frozenset[Scope]

    @property
    def is_admin(self) -> bool:
        return Scope.ADMIN in self.scopes

    @property
    def tenant(self) -> str | None:
        """The owner whose jobs this caller sees; None for an admin, who sees every job."""
        return None if self.is_admin else self.owner

    def may(self, scope: Scope) -> bool:
        return self.is_admin or scope in self.scopes

    def scope_list(self) -> str:
        return ", ".join(scope_names(self.scopes))


#: What each scope allows, for the ``forbidden`` problem's detail.
_SCOPE_ACTIONS = {
    Scope.SUBMIT: "submit, refine, deliver or delete jobs (scope submit)",
    Scope.READ: "read jobs, their results or the metrics (scope read)",
    Scope.ADMIN: "see other keys' jobs, the DICOM node's studies or the audit trail (scope admin)",
}


def forbidden(caller: Caller, scope: Scope, action: str | None = None) -> ServiceProblem:
    """The ``forbidden`` problem (403) of a caller without ``scope``."""
    action = action or _SCOPE_ACTIONS[scope]
    log.info("request of owner %s refused: scope %s missing", caller.owner, scope.value)
    return ServiceProblem("forbidden", f"this key may not {action}; it has scopes {caller.scope_list()}")


def check_scope(caller: Caller, scope: Scope) -> Caller:
    """``caller`` if it may act with ``scope`` (admin may everything).

    Raises
    ------
    ServiceProblem
        ``forbidden``: the key lacks the scope.
    """
    if not caller.may(scope):
        raise forbidden(caller, scope)
    return caller


def accepted_keys(settings: Settings) -> list[KeyLine]:
    """The configured key lines plus the development key's (every scope), if one is set."""
    keys = list(settings.api_keys)
    if settings.api_key is not None:
        keys.append(KeyLine(hash_api_key(settings.api_key.get_secret_value()), ALL_SCOPES))
    return keys


def authenticate(credentials: HTTPAuthorizationCredentials | None, settings: Settings) -> Caller:
    """The caller of a valid bearer key: its owner id and scopes.

    Raises
    ------
    ServiceProblem
        ``unauthorized``: no key is configured, none was sent, or it matches none configured.
    """
    keys = accepted_keys(settings)
    if not keys:
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
    caller = caller_of_hash(hash_api_key(credentials.credentials), keys)
    if caller is None:
        log.info("request with an unknown API key refused")
        raise ServiceProblem("unauthorized", "the API key is not valid", headers=_INVALID_CHALLENGE)
    return caller


def caller_of_hash(presented: str, keys: list[KeyLine]) -> Caller | None:
    """The caller of the key whose ``sha256:`` hash is ``presented``, or None if no line has it."""
    # Compare against every hash, without stopping at a match, so timing says nothing.
    matches = [hmac.compare_digest(presented, known.key_hash) for known in keys]
    if not any(matches):
        return None
    # A hash listed twice (a site adding scopes on a second line) gets the scopes of both.
    scopes = frozenset().union(*(known.scopes for known, hit in zip(keys, matches, strict=True) if hit))
    return Caller(owner_of(presented), scopes)
