"""API key lines and scopes: the format of ``RTINJURY_API_KEY_HASHES`` entries.

An entry is ``sha256:<hex>`` (a key with every scope: what deployments configured before scopes
existed) or ``sha256:<hex>;scopes=submit,read``. Kept free of heavy imports: the command line
parses ``--scopes`` with it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

#: How a stored API key looks: the SHA-256 of the key, never the key itself.
KEY_HASH_PATTERN = re.compile(r"^sha256:[0-9a-f]{64}$")
#: What may follow the hash on a key line: ``;scopes=submit,read``.
SCOPES_OPTION = "scopes="


class Scope(StrEnum):
    """What a key may do. ``admin`` includes the other two, across every owner's jobs."""

    SUBMIT = "submit"
    READ = "read"
    ADMIN = "admin"


ALL_SCOPES: frozenset[Scope] = frozenset(Scope)


@dataclass(frozen=True)
class KeyLine:
    """One entry of ``RTINJURY_API_KEY_HASHES``: a key's hash and what the key may do."""

    key_hash: str
    scopes: frozenset[Scope] = ALL_SCOPES

    def __str__(self) -> str:
        if self.scopes == ALL_SCOPES:
            return self.key_hash
        return f"{self.key_hash};{SCOPES_OPTION}{','.join(scope_names(self.scopes))}"


def scope_names(scopes: frozenset[Scope]) -> list[str]:
    """The scopes in their documented order (submit, read, admin)."""
    return [scope.value for scope in Scope if scope in scopes]


def parse_scopes(text: str) -> frozenset[Scope]:
    """``submit,read`` as scopes.

    Raises
    ------
    ValueError
        An empty list or a name that is not a scope.
    """
    names = [name.strip().lower() for name in text.split(",") if name.strip()]
    unknown = sorted(set(names) - {scope.value for scope in Scope})
    if unknown:
        raise ValueError(f"unknown scope(s) {', '.join(unknown)}; scopes are {', '.join(Scope)}")
    if not names:
        raise ValueError(f"no scope given; scopes are {', '.join(Scope)}")
    return frozenset(Scope(name) for name in names)


def parse_key_line(line: str) -> KeyLine:
    """``sha256:<hex>`` (every scope, what existing deployments have) or
    ``sha256:<hex>;scopes=submit,read``.

    Raises
    ------
    ValueError
        The hash is not ``sha256:<64 hex>``, or the option is not ``scopes=<names>``. The message
        never repeats the line: a pasted plaintext key must not reach a log.
    """
    key_hash, separator, option = line.strip().lower().partition(";")
    key_hash = key_hash.strip()
    if not KEY_HASH_PATTERN.match(key_hash):
        raise ValueError("not of the form 'sha256:<64 hex>[;scopes=submit,read,admin]'")
    if not separator:
        return KeyLine(key_hash)
    option = option.strip()
    if not option.startswith(SCOPES_OPTION):
        raise ValueError("after ';' comes 'scopes=<names>' (e.g. ';scopes=submit,read')")
    return KeyLine(key_hash, parse_scopes(option.removeprefix(SCOPES_OPTION)))
