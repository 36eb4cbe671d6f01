"""HTTP plumbing shared by the modules: a blueprint that runs its requests as its module."""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import logging
from collections.abc import Callable
from typing import Any

from apiflask import APIBlueprint
from flask import current_app, g, request
from werkzeug.exceptions import HTTPException

from app.kernel import ownership

log = logging.getLogger(__name__)


def module_blueprint(
    module: str, import_name: str, *, name: str | None = None, **options: Any
) -> APIBlueprint:
    """An APIBlueprint whose requests run as `module` for the ownership guard."""
    ownership.registry.module(module)  # the module must have declared itself first
    bp = APIBlueprint(name or module, import_name, **options)

    @bp.before_request
    def _enter_module() -> None:
        g._acting_token = ownership._acting.set(module)

    @bp.teardown_request
    def _leave_module(_exc: BaseException | None) -> None:
        token = g.pop("_acting_token", None)
        if token is not None:
            try:
                ownership._acting.reset(token)
            except ValueError:  # reset from another context: just clear it
                ownership._acting.set(None)

    return bp


# The headers of a response that carries tokens: no cache (browser, proxy) may keep it.
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}

# The OpenAPI security requirement of routes that take an access token.
BEARER_AUTH: list[dict[str, list[str]]] = [{"BearerAuth": []}]


def rate_limit_key(key: Callable[[], str]) -> Callable[[], str]:
    """A rate-limit key function made total: it never raises and returns ASCII.

    flask-limiter takes any exception from a key function for a storage failure and
    switches every later request to fresh in-memory counters, so one hostile body would
    reset every limit. Whatever the body, header or encoding, the wrapped key answers: a
    failure (logged on one line, no traceback) falls back to the client's address, and a
    key that is not plain ASCII (Redis keys are bytes) is replaced by its digest.
    """

    @functools.wraps(key)
    def total() -> str:
        try:
            value = key()
        except HTTPException:  # a body too large to read: the view answers it (413)
            return "ip:" + client_ip()
        except Exception as exc:
            log.warning(
                "rate-limit key %s failed (%s); keyed by address", key.__name__, type(exc).__name__
            )
            return "ip:" + client_ip()
        if not value.isascii() or not value.isprintable():
            return "h:" + _digest(value)
        return value

    return total


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def jwt_subject_key(*, refresh: bool, fallback: Callable[[], str]) -> Callable[[], str]:
    """A rate-limit key "per account": the user of a *verified* token, else `fallback()`.

    Only a verified token counts: an unverified `sub` would let anyone spend another
    user's budget. An invalid token is refused by the view itself.
    """

    def key() -> str:
        from flask_jwt_extended import get_jwt, verify_jwt_in_request

        try:
            verified = verify_jwt_in_request(
                optional=not refresh, refresh=refresh, skip_revocation_check=True
            )
        except Exception:  # rejected by the view; limited by the fallback meanwhile
            verified = None
        return "user:" + str(get_jwt()["sub"]) if verified else fallback()

    key.__name__ = f"jwt_subject_key_{'refresh' if refresh else 'access'}"
    return rate_limit_key(key)


def client_ip() -> str:
    """The client's address (after ProxyFix has applied the trusted hops), in canonical
    form; "unknown" when what the proxy passed on is not an address."""
    try:
        parsed = ipaddress.ip_address(request.remote_addr or "")
    except ValueError:
        return "unknown"
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        parsed = parsed.ipv4_mapped  # one client, one spelling: ::ffff:10.0.0.1 is 10.0.0.1
    address = str(parsed)
    return address if len(address) <= 45 else "unknown"  # an IPv6 scope id can be long


def _json_member(name: str) -> str | None:
    """A string member of a JSON object body, or None (any other body, any other type)."""
    data = request.get_json(silent=True)
    value = data.get(name) if isinstance(data, dict) else None
    return value if isinstance(value, str) else None


@rate_limit_key
def email_in_body() -> str:
    """Rate-limit key "per account": the normalised email of a JSON body *and* the client's
    address, else the address. Counting per account alone would let one address spend the
    owner's budget and keep them out from anywhere; the account-wide defence against many
    addresses is the login lockout's ceiling (docs/adr/0008-login-lockout.md)."""
    from app.kernel.emails import normalise_email

    email = _json_member("email")
    if email and email.strip():
        return "acct:" + _digest(normalise_email(email)) + "@" + client_ip()
    return "ip:" + client_ip()


@rate_limit_key
def token_in_body() -> str:
    """Rate-limit key "per token": a digest of the JSON body's token, else the IP."""
    token = _json_member("token")
    if token:
        return "tok:" + _digest(token)
    return "ip:" + client_ip()


def config_limit(name: str) -> Callable[[], str]:
    """A rate limit read from the app's configuration at request time."""
    return lambda: current_app.config[name]
