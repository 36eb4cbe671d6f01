"""The licensing HTTP API: activate, validate, list/get/deactivate, JWKS."""

from __future__ import annotations

from typing import Any

import jwt as pyjwt
from flask import current_app
from flask_jwt_extended import get_jwt

from app.auth import bp, root_bp
from app.auth.accounts import service as accounts
from app.auth.accounts.passwords import hasher_from_config
from app.auth.licensing import service as licensing
from app.auth.licensing import signing
from app.auth.licensing.schemas import (
    ActivatedLicenseOut,
    ActivateIn,
    DeactivateIn,
    JwksOut,
    LicenseOut,
    LicensePage,
    ValidateIn,
    ValidateOut,
)
from app.http.bearer import verify_jwt_in_request
from app.http.limits import client_ip, email_in_body, jwt_subject_key, token_in_body
from app.http.routes import BEARER, PUBLIC, Callers, Endpoints, Limit, keyset, page
from app.kernel import metrics
from app.kernel.db import get_session, transaction, utcnow
from app.kernel.errors import ProblemError, Unauthorized
from app.kernel.pagination import PageQuery
from app.kernel.web import NO_STORE

api, root_api = Endpoints(bp), Endpoints(root_bp)

# Who may activate: the view checks a Bearer token, or email and password in the body.
BEARER_OR_PASSWORD = Callers(check=None, security=[{"BearerAuth": []}, {}], problems=(401,))
# Each limited route counts per client address, then per account or per token.
ACTIVATE_LIMITS = (
    Limit("RATELIMIT_ACTIVATE_PER_IP", client_ip),
    Limit("RATELIMIT_ACTIVATE_PER_ACCOUNT", jwt_subject_key(refresh=False, fallback=email_in_body)),
)
VALIDATE_LIMITS = (
    Limit("RATELIMIT_VALIDATE_PER_IP", client_ip),
    Limit("RATELIMIT_VALIDATE_PER_TOKEN", token_in_body),
)
ALREADY_HELD = {
    "description": "The user already holds the live license for this client",
    "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/ActivatedLicenseOut"}}
    },
}


def license_token(license_: Any, now: Any) -> str:
    """A token for the license as it is now: it expires with the license, or after
    LICENSE_TOKEN_TTL_DAYS if that comes first (ADR 0007)."""
    ttl = current_app.config["LICENSE_TOKEN_TTL"]
    return signing.license_keys().sign(
        license_id=license_.license_id,
        user_id=license_.user_id,
        client_id=license_.client_id,
        expires_at=min(license_.expires_at, now + ttl),
        issued_at=now,
        version=license_.version,
    )


def _signed(license_: Any) -> dict[str, Any]:
    token = license_token(license_, utcnow())
    return {**LicenseOut.model_validate(license_).model_dump(), "token": token}


def _activation_user(session: Any, body: ActivateIn, now: Any) -> tuple[str | None, Any]:
    """Who is activating: the Bearer token's user, or (email, password) checked like a login."""
    if verify_jwt_in_request(optional=True):
        if body.email is not None or body.password is not None:
            raise Unauthorized("Send either a Bearer token or email and password, not both.")
        return get_jwt()["sub"], None
    if body.email is None or body.password is None:
        raise Unauthorized(
            "A Bearer token, or email and password, is required.",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return None, accounts.check_credentials(
        session,
        hasher_from_config(current_app.config),
        body.email,
        body.password,
        policy=accounts.LockoutPolicy.from_config(current_app.config),
        ip=client_ip(),
        now=now,
    )


@bp.post("/licenses/activate")
@api.endpoint(
    BEARER_OR_PASSWORD,
    "licensing_activate",
    limits=ACTIVATE_LIMITS,
    responses={200: ALREADY_HELD},
    problems=(409, 422, 423, 429),
)
@api.io(body=ActivateIn, output=ActivatedLicenseOut, status=201, description="A new license")
def activate(json_data: ActivateIn) -> Any:
    """Activate a license for a client (idempotent for the same user and client)"""
    session, now = get_session(), utcnow()
    signing.license_keys()  # 503 signing_unavailable now, before a seat is taken for nothing
    user_id, attempt = _activation_user(session, json_data, now)
    with transaction(session):
        if attempt is not None:
            outcome = accounts.settle_login(
                session,
                attempt,
                accounts.LockoutPolicy.from_config(current_app.config),
                ip=client_ip(),
                now=now,
            )
            user_id = outcome.user.user_id if outcome.user is not None else None
        if user_id is not None:
            try:
                activation = licensing.activate(
                    session, user_id, json_data.client_id, ip=client_ip()
                )
            except ProblemError as exc:
                metrics.LICENSE_ACTIVATIONS.labels(exc.code).inc()
                raise
    if attempt is not None and user_id is None:
        if outcome.locked_until is not None:
            raise accounts.AccountLocked(outcome.locked_until, now)
        raise accounts.InvalidCredentials()
    metrics.LICENSE_ACTIVATIONS.labels("created" if activation.created else "existing").inc()
    return _signed(activation.license), 201 if activation.created else 200, NO_STORE


@bp.post("/licenses/validate")
@api.endpoint(PUBLIC, "licensing_validate", limits=VALIDATE_LIMITS, problems=(400, 422, 429))
@api.io(body=ValidateIn, output=ValidateOut)
def validate(json_data: ValidateIn) -> Any:
    """Check a license token against the current license (always 200 when well-formed)"""
    checked_at = utcnow()
    keys = signing.license_keys()
    verdict = licensing.validate(
        get_session(),
        keys,
        json_data.token,
        json_data.client_id,
        now=checked_at,
        token_ttl=current_app.config["LICENSE_TOKEN_TTL"],
    )
    metrics.LICENSE_VALIDATIONS.labels(verdict.code).inc()
    answer = {
        "valid": verdict.valid,
        "code": verdict.code,
        "license": verdict.license,
        "checked_at": checked_at,
        # README, "Signed verdicts": what an app verifies instead of trusting plain JSON.
        "verdict": keys.sign_verdict(
            issued_at=checked_at,
            ttl_seconds=signing.VERDICT_TTL_SECONDS,
            code=verdict.code,
            license_id=verdict.license_id,
            client_id=json_data.client_id,
            nonce=json_data.nonce,
        ),
    }
    if verdict.stale:
        answer["token"] = license_token(verdict.license, checked_at)
    return answer


@bp.post("/licenses/deactivate")
@api.endpoint(
    PUBLIC,
    "licensing_deactivate_from_app",
    limits=VALIDATE_LIMITS,  # the app's budget for its license: validate's
    problems=(404, 422, 429),
    summary="Deactivate a license from the app that holds it: its token and client id, "
    "no password (revoked, seat freed)",
)
@api.io(body=DeactivateIn, output=LicenseOut)
def deactivate_from_app(json_data: DeactivateIn) -> Any:
    # A token that is not ours, a license that is gone, a client id that is not the
    # license's: one 404, so this route tells nobody more than validate does.
    try:
        claims = signing.license_keys().verify(json_data.token)
    except pyjwt.InvalidTokenError:
        raise licensing.LicenseNotFound() from None
    if claims["client_id"] != json_data.client_id:
        raise licensing.LicenseNotFound()
    with transaction(get_session()) as session:
        license_ = licensing.deactivate(
            session,
            claims["user_id"],
            claims["license_id"],
            ip=client_ip(),
            client_id=json_data.client_id,
            reason="deactivated_from_app",
        )
    return license_


@bp.get("/licenses")
@api.endpoint(BEARER, "licensing_list", problems=(422,))
@api.io(query=PageQuery, output=LicensePage)
def list_mine(query_data: PageQuery) -> Any:
    """My licenses, newest first"""
    return page(licensing.list_licenses(get_session(), get_jwt()["sub"], **keyset(query_data, str)))


@bp.get("/licenses/<license_id>")
@api.endpoint(BEARER, "licensing_get", problems=(404,))
@api.io(output=LicenseOut)
def get_one(license_id: str) -> Any:
    """One license (its owner or an admin)"""
    claims = get_jwt()
    license_ = licensing.get_license(get_session(), license_id)
    if license_.user_id != claims["sub"] and claims.get("role") != "admin":
        raise licensing.LicenseNotFound()  # never reveal that someone else's license exists
    return license_


@bp.delete("/licenses/<license_id>")
@api.endpoint(BEARER, "licensing_deactivate", problems=(404,))
@api.io(output=LicenseOut)
def deactivate(license_id: str) -> Any:
    """Deactivate my license: revoked, seat freed"""
    with transaction(get_session()) as session:
        license_ = licensing.deactivate(session, get_jwt()["sub"], license_id, ip=client_ip())
    return license_


@root_bp.get("/.well-known/jwks.json")
@root_api.endpoint(PUBLIC, "licensing_jwks")
@root_api.io(output=JwksOut)
def jwks() -> Any:
    """Public keys that verify license tokens offline (several during rotation)"""
    max_age = current_app.config["JWKS_MAX_AGE"]
    return signing.license_keys().jwks(), 200, {"Cache-Control": f"public, max-age={max_age}"}
