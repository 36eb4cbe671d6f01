"""Bearer tokens at the HTTP edge: the JWT manager, and each token verified once per request.

A route with a per-account rate limit verifies its token twice with flask-jwt-extended
alone: once in the limit's key function (the account to count) and once in the view. Both
go through `verify_jwt_in_request` here, which remembers the request's last verification
and answers a repeat of it without decoding, verifying and looking up the revocation list
again. Only successes are remembered: a token refused once is checked again (and refused
by the view with its problem response). Everything goes through flask-jwt-extended's
public API (`verify_jwt_in_request`, `get_jwt`, `jwt_required`'s arguments), except for
the remembered tokens below.

A client sends the same access token with every request until it expires, and decoding
it (four parses of the token by PyJWT, the HMAC, the claims' checks) costs more than the
rest of the check: `RememberingJWTManager` keeps the claims of the tokens it verified,
keyed by the exact token string and the decoding settings (the key among them), and
answers a repeat after checking only the time claims (`exp`, `nbf`, `iat`) again, as PyJWT
would. Everything after decoding — the token type, the revocation list, freshness — runs
on every request as before. Only successes are kept; bounded (oldest out), per process.
flask-jwt-extended then parses the token once more for its header (handed to the
revocation and freshness checks and kept for `get_jwt_header`): for a remembered token the
header is remembered with the claims (parsed once; PyJWT's parse checks every character
of the token, a tenth of an activation's token check), a copy handed out each time.
A token is decoded only as it was issued (`app.kernel.jws`): another spelling of the same
signed bytes is refused before PyJWT sees it, so it is never remembered either.
"""

from __future__ import annotations

import functools
import inspect
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import flask_jwt_extended
import flask_jwt_extended.view_decorators
import jwt as pyjwt
from flask import current_app, g, has_request_context, request
from flask_jwt_extended import JWTManager
from flask_jwt_extended.config import config
from flask_jwt_extended.default_callbacks import default_decode_key_callback as _DEFAULT_KEY
from jwt import DecodeError

from app.kernel.jws import written_canonically

REMEMBERED_TOKENS = 1024  # per process: a worker's recently active sessions


class RememberingJWTManager(JWTManager):
    """flask-jwt-extended's manager, remembering the tokens it decoded (module docstring)."""

    def __init__(self, *args: Any, remember: int = REMEMBERED_TOKENS, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._remember = remember
        # token: (decoding settings, claims, not before, expiry, header)
        self._decoded: dict[str, tuple[Any, dict[str, Any], int, int | None, dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def _decode_jwt_from_config(
        self, encoded_token: str, csrf_value: Any = None, allow_expired: bool = False
    ) -> dict:
        remembering = not (
            csrf_value or allow_expired or self._decode_key_callback is not _DEFAULT_KEY
        )
        if remembering:
            settings = _decode_settings()
            known = self._decoded.get(encoded_token)
            if known is not None and known[0] == settings and _in_time(known[2], known[3]):
                return dict(known[1])  # a copy: callers may change theirs
        if not written_canonically(encoded_token):  # only tokens that pass are remembered
            raise DecodeError("Not the token as it was signed")
        claims = super()._decode_jwt_from_config(encoded_token, csrf_value, allow_expired)
        if remembering:
            header = pyjwt.get_unverified_header(encoded_token)
            self._keep(encoded_token, (settings, dict(claims), *_time_bounds(claims), header))
        return claims

    def unverified_header(self, encoded_token: str) -> dict[str, Any]:
        """flask-jwt-extended's `get_unverified_jwt_headers`: a remembered token's header
        (a copy), else the token parsed as it would have parsed it."""
        known = self._decoded.get(encoded_token)
        if known is None:
            return pyjwt.get_unverified_header(encoded_token)
        return dict(known[4])

    def _keep(self, token: str, entry: Any) -> None:
        with self._lock:
            self._decoded.pop(token, None)
            if len(self._decoded) >= self._remember:
                del self._decoded[next(iter(self._decoded))]  # the oldest
            self._decoded[token] = entry


def _decode_settings() -> tuple[Any, ...]:
    """Everything besides the token that decides whether it decodes (the key is the
    configured one: with a `decode_key_loader`, nothing is remembered)."""
    return (
        config.decode_key,
        config.decode_algorithms,
        config.decode_audience,
        config.decode_issuer,
        config.identity_claim_key,
        config.verify_sub,
    )


def _time_bounds(claims: dict[str, Any]) -> tuple[int, int | None]:
    """(not before, expiry) of claims PyJWT accepted: `iat`, `nbf` and `exp` as integers."""
    starts = [int(claims[name]) for name in ("iat", "nbf") if name in claims]
    return max(starts, default=0), int(claims["exp"]) if "exp" in claims else None


def _in_time(not_before: int, expires: int | None) -> bool:
    """PyJWT's time checks, with its clock and the configured leeway."""
    leeway = config.leeway
    if isinstance(leeway, timedelta):
        leeway = leeway.total_seconds()
    now = datetime.now(tz=UTC).timestamp()
    return not_before <= now + leeway and (expires is None or expires > now - leeway)


jwt = RememberingJWTManager()

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
    _scheme_as_configured(request.environ)
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


def _scheme_as_configured(environ: dict[str, Any]) -> None:
    """The Authorization header's scheme spelled as flask-jwt-extended compares it
    (`Bearer`, case-sensitively): RFC 9110 makes a scheme's name case-insensitive, and some
    clients send `bearer`."""
    header = environ.get("HTTP_AUTHORIZATION")
    scheme = config.header_type
    if header and scheme and not header.startswith(scheme):
        given, space, rest = header.partition(" ")
        if space and given.lower() == scheme.lower():
            environ["HTTP_AUTHORIZATION"] = f"{scheme} {rest}"


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
    # Where flask-jwt-extended's request check looks the header up, after decoding.
    flask_jwt_extended.view_decorators.get_unverified_jwt_headers = jwt.unverified_header
