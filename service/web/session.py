"""Who is looking at a page: the caller of the session cookie, or a redirect to the login page.

The pages use the same keys and scopes as the REST API (``service.api.auth``); logging in
needs a key with the ``read`` scope (or ``admin``), since every page shows jobs or results.
"""

from __future__ import annotations

import logging

from fastapi import Request, Response

from service.api.auth import Caller, accepted_keys, caller_of_hash, hash_api_key
from service.api.deps import get_session_secret
from service.api.errors import LoginRequired
from service.api.sessions import COOKIE_NAME, Session, decode_cookie, encode_cookie, new_session
from service.config import Settings
from service.keys import Scope

log = logging.getLogger(__name__)

HOME_PATH = "/ui/jobs"


class LoginRefused(Exception):
    """The key entered on the login page is unknown or may not read: said on the page, no detail."""


def page_session(request: Request) -> tuple[Caller, Session]:
    """The caller and session of a page request.

    Raises
    ------
    LoginRequired
        No cookie, an altered or expired one, or one of a key no longer configured.
    """
    settings: Settings = request.app.state.settings
    session = decode_cookie(request.cookies.get(COOKIE_NAME), get_session_secret(request))
    caller = caller_of_hash(session.key_hash, accepted_keys(settings)) if session is not None else None
    if session is None or caller is None or not caller.may(Scope.READ):
        query = f"?{request.url.query}" if request.url.query else ""
        raise LoginRequired(safe_next(request.url.path + query))
    request.state.caller = caller
    return caller, session


def log_in(request: Request, response: Response, key: str) -> None:
    """Check ``key`` and set the session cookie on ``response``.

    Raises
    ------
    LoginRefused
        The key matches no configured line, or its scopes do not include ``read``.
    """
    settings: Settings = request.app.state.settings
    key_hash = hash_api_key(key.strip())
    caller = caller_of_hash(key_hash, accepted_keys(settings))
    if caller is None or not caller.may(Scope.READ):
        log.info("web login refused")
        raise LoginRefused
    session = new_session(key_hash, settings.session_lifetime_s)
    response.set_cookie(
        COOKIE_NAME,
        encode_cookie(session, get_session_secret(request)),
        max_age=settings.session_lifetime_s,
        path="/",
        secure=_secure_cookie(request, settings),
        httponly=True,
        samesite="strict",
    )
    log.info("web login of owner %s", caller.owner)


def _secure_cookie(request: Request, settings: Settings) -> bool:
    if settings.session_cookie_secure is not None:
        return settings.session_cookie_secure
    return request.url.scheme == "https"


def log_out(response: Response) -> None:
    response.delete_cookie(COOKIE_NAME, path="/", httponly=True, samesite="strict")


#: Not pages to come back to: the static files and the log-out action.
_NOT_PAGES = ("/ui/static/", "/ui/logout", "/ui/login")


def safe_next(path: str | None) -> str:
    """Where to go after logging in: one of our own pages, never another site (``//host``)."""
    if not path or not path.startswith("/ui/") or "\\" in path or path.startswith(_NOT_PAGES):
        return HOME_PATH
    return path


def current_session(request: Request) -> Session | None:
    """The request's valid session, or None (no redirect: for the log-out action)."""
    return decode_cookie(request.cookies.get(COOKIE_NAME), get_session_secret(request))
