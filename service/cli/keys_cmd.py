"""``rtinjury keys``: make API keys and the hash lines the server is configured with.

The server stores only ``sha256:<hex>`` (``RTINJURY_API_KEY_HASHES``), followed by
``;scopes=submit,read`` for a key with fewer than all scopes; the key itself is shown once, to be
handed to the client system.
"""

from __future__ import annotations

import argparse
import secrets
import sys
from typing import Any

from service.cli.output import emit_json, say
from service.keys import ALL_SCOPES, KeyLine, Scope, parse_scopes, scope_names

#: 32 random bytes: 43 URL-safe characters.
KEY_BYTES = 32


def register(commands: Any) -> None:
    parser = commands.add_parser("keys", help="make API keys and their hashes for RTINJURY_API_KEY_HASHES")
    actions = parser.add_subparsers(dest="keys_action", required=True, metavar="ACTION")
    new = actions.add_parser("new", help="print a new random key and its hash line")
    new.add_argument(
        "--scopes",
        type=_scopes,
        default=None,
        metavar="SCOPES",
        help="comma-separated among submit, read, admin (default: all three)",
    )
    new.add_argument("--json", action="store_true", help="print {key, hash, line, owner, scopes} as JSON")
    new.set_defaults(handler=run_new)
    hashed = actions.add_parser("hash", help="read a key on stdin and print its hash line")
    hashed.set_defaults(handler=run_hash)


def _scopes(text: str) -> frozenset[Scope]:
    try:
        return parse_scopes(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def run_new(args: argparse.Namespace) -> int:
    from service.api.auth import hash_api_key, owner_of

    key = secrets.token_urlsafe(KEY_BYTES)
    line = KeyLine(hash_api_key(key), args.scopes or ALL_SCOPES)
    owner = owner_of(line.key_hash)
    if args.json:
        scopes = scope_names(line.scopes)
        emit_json({"key": key, "hash": line.key_hash, "line": str(line), "owner": owner, "scopes": scopes})
        return 0
    say(f"key:    {key}")
    say(f"hash:   {line.key_hash}")
    say(f"scopes: {', '.join(scope_names(line.scopes))}")
    say(f"owner:  {owner}")
    say(f"line:   {line}")
    say()
    say("Give the key to the client (it is not stored anywhere); add the line to the server's")
    say(f"""RTINJURY_API_KEY_HASHES, a JSON list: RTINJURY_API_KEY_HASHES='["{line}"]'""")
    return 0


def run_hash(args: argparse.Namespace) -> int:
    from service.api.auth import hash_api_key
    from worker.errors import InputError

    # One line: the key as printed by `keys new` (surrounding white space is not part of it).
    key = sys.stdin.readline().strip()
    if not key:
        raise InputError('no key on stdin (try: printf %s "$KEY" | rtinjury keys hash)')
    say(hash_api_key(key))
    return 0
