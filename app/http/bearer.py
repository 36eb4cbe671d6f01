"""Bearer tokens at the HTTP edge: the JWT manager, and each token verified once per request.

A route with a per-account rate limit verifies its token twice with flask-jwt-extended
alone: once in the limit's key function (the account to count) and once in the view. Both
go through `verify_jwt_in_request` here, which remembers the request's last verification
and answers a repeat of it without decoding, verifying and looking up the revocation list
again. Only successes are remembered: a token refused once is checked again (and refused
by the view with its problem response). Everything goes through flask-jwt-extended's
public API (`verify_jwt_in_request`, `get_jwt`, `jwt_required`'s arguments).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import flask_jwt_extended
from flask import current_app, g, has_request_context
from flask_jwt_extended import JWTManager

jwt = JWTManager()

_VERIFIED = "http_bearer_verified"  # g: (arguments, result) of the last verification


def verify_jwt_in_request(
    optional: bool = False,
    fresh: bool = False,
    refresh: bool = False,
    locations: Any = None,
    verify_type: bool = True,
    skip_revocation_check: bool = False,
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """flask-jwt-extended's `verify_jwt_in_request`, done at most once per request for the
    same arguments. A check that skips the revocation list is also answered by an earlier
    one that consulted it."""
    asked = (optional, fresh, refresh, _hashable(locations), verify_type)
    last = g.get(_VERIFIED)
    if last is not None:
        (done, revocation_checked), result = last
        if done == asked and (revocation_checked or skip_revocation_check):
            return result
    result = flask_jwt_extended.verify_jwt_in_request(
        optional=optional,
        fresh=fresh,
        refresh=refresh,
        locations=locations,
        verify_type=verify_type,
        skip_revocation_check=skip_revocation_check,
    )
    setattr(g, _VERIFIED, ((asked, not skip_revocation_check), result))
    return result


def jwt_required(**arguments: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """flask-jwt-extended's `jwt_required` (the same keyword arguments), verifying through
    `verify_jwt_in_request` above."""
    inspect.signature(verify_jwt_in_request).bind(**arguments)  # a wrong one fails here

    def decorate(view: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(view)
        def verified(*args: Any, **kwargs: Any) -> Any:
            verify_jwt_in_request(**arguments)
            return current_app.ensure_sync(view)(*args, **kwargs)

        return verified

    return decorate


def verified_subject(*, refresh: bool) -> str | None:
    """The `sub` of the request's valid token, or None when it has none or an invalid one.

    An access token is checked in full (revocation list included), as the views check it,
    so their own check is answered from this one; a refresh token skips the revocation
    list, as the refresh view does (rotation decides reuse itself).
    """
    try:
        verified = verify_jwt_in_request(
            optional=not refresh, refresh=refresh, skip_revocation_check=refresh
        )
    except Exception:  # refused by the view; limited by the fallback meanwhile
        return None
    return str(verified[1]["sub"]) if verified else None


def current_subject() -> str | None:
    """The `sub` of the token this request verified, if it verified one (for the access
    log): never verifies anything itself."""
    if not has_request_context():
        return None
    try:
        claims = flask_jwt_extended.get_jwt()
    except RuntimeError:  # no token was verified in this request
        return None
    subject = claims.get("sub")
    return None if subject is None else str(subject)


def _hashable(locations: Any) -> Any:
    return tuple(locations) if isinstance(locations, list) else locations


def init_app(app: Any) -> None:
    jwt.init_app(app)
