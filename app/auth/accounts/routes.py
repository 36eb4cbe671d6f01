"""The accounts HTTP API: register, login, refresh, logout, me."""

from __future__ import annotations

from typing import Any

from flask import current_app
from flask_jwt_extended import get_jwt

from app.auth import bp
from app.auth.accounts import revocations, service, tokens
from app.auth.accounts.passwords import Hasher, hasher_from_config
from app.auth.accounts.schemas import (
    LoginIn,
    MeOut,
    PasswordChangeIn,
    RegisterIn,
    TokenPairOut,
    UserOut,
)
from app.auth.licensing import service as licensing
from app.http.bearer import jwt_required, verify_jwt_in_request
from app.http.limits import client_ip, config_limit, email_in_body, jwt_subject_key, limiter
from app.http.openapi import problem_responses
from app.kernel.db import get_session, transaction, utcnow
from app.kernel.web import BEARER_AUTH, NO_STORE


def hasher() -> Hasher:
    return hasher_from_config(current_app.config)


def lockout_policy() -> service.LockoutPolicy:
    return service.LockoutPolicy.from_config(current_app.config)


@bp.post("/auth/register")
@limiter.limit(config_limit("RATELIMIT_REGISTER_PER_IP"), key_func=client_ip)
@limiter.limit(config_limit("RATELIMIT_REGISTER_PER_ACCOUNT"), key_func=email_in_body)
@bp.input(RegisterIn)
@bp.output(UserOut, status_code=201)
@bp.doc(
    summary="Create an account",
    operation_id="auth_register",
    responses=problem_responses(409, 422, 429),
)
def register(json_data: RegisterIn) -> Any:
    password_hash = hasher().hash(json_data.password)  # slow on purpose; outside the transaction
    session = get_session()
    with transaction(session):
        user = service.register(session, json_data.email, password_hash, ip=client_ip())
    return user


@bp.post("/auth/login")
@limiter.limit(config_limit("RATELIMIT_LOGIN_PER_IP"), key_func=client_ip)
@limiter.limit(config_limit("RATELIMIT_LOGIN_PER_ACCOUNT"), key_func=email_in_body)
@bp.input(LoginIn)
@bp.output(TokenPairOut)
@bp.doc(
    summary="Log in: an access and a refresh token",
    operation_id="auth_login",
    responses=problem_responses(401, 422, 423, 429),
)
def login(json_data: LoginIn) -> Any:
    session, policy, ip, now = get_session(), lockout_policy(), client_ip(), utcnow()
    attempt = service.check_credentials(
        session, hasher(), json_data.email, json_data.password, policy=policy, ip=ip, now=now
    )
    with transaction(session):
        outcome = service.settle_login(session, attempt, policy, ip=ip, now=now)
    if outcome.locked_until is not None:
        raise service.AccountLocked(outcome.locked_until, now)
    if outcome.user is None:
        raise service.InvalidCredentials()
    return tokens.issue_pair(outcome.user), 200, NO_STORE


@bp.post("/auth/refresh")
@limiter.limit(config_limit("RATELIMIT_REFRESH_PER_IP"), key_func=client_ip)
@limiter.limit(
    config_limit("RATELIMIT_REFRESH_PER_ACCOUNT"),
    key_func=jwt_subject_key(refresh=True, fallback=client_ip),
)
@bp.output(TokenPairOut)
@bp.doc(
    summary="Exchange a refresh token (as Bearer) for a new pair; the old one is spent",
    operation_id="auth_refresh",
    security=BEARER_AUTH,
    responses=problem_responses(401, 429),
)
def refresh() -> Any:
    # Revocation is decided by rotate_refresh itself: a spent token is reuse, not just "revoked".
    verify_jwt_in_request(refresh=True, skip_revocation_check=True)
    claims = get_jwt()
    session = get_session()
    if revocations.issued_before_password_change(
        session, claims["sub"], tokens.issued_ms_of(claims)
    ):
        raise service.TokenRevoked("The password was changed since; log in again.")
    with transaction(session):
        outcome = revocations.rotate_refresh(
            session,
            jti=claims["jti"],
            family=claims["fam"],
            user_id=claims["sub"],
            expires_at=tokens.expiry_of(claims),
            family_expires_at=tokens.family_expiry(),
            ip=client_ip(),
        )
    if outcome.reuse_detected:
        raise service.TokenRevoked("This refresh token was already used; its session is revoked.")
    if outcome.user is None:
        raise service.TokenRevoked()
    return tokens.issue_pair(outcome.user, family=claims["fam"]), 200, NO_STORE


@bp.post("/auth/logout")
@jwt_required()
@bp.output({}, status_code=204)
@bp.doc(
    summary="Revoke this access token and its refresh family",
    operation_id="auth_logout",
    security=BEARER_AUTH,
    responses=problem_responses(401),
)
def logout() -> Any:
    claims = get_jwt()
    session = get_session()
    with transaction(session):
        revocations.logout(
            session,
            jti=claims["jti"],
            family=claims.get("fam"),
            user_id=claims["sub"],
            access_expires_at=tokens.expiry_of(claims),
            family_expires_at=tokens.family_expiry(),
            ip=client_ip(),
        )
    return ""


@bp.get("/auth/me")
@jwt_required()
@bp.output(MeOut)
@bp.doc(
    summary="The current user, plan, subscription and seats",
    operation_id="auth_me",
    security=BEARER_AUTH,
    responses=problem_responses(401),
)
def me() -> Any:
    session = get_session()
    user = service.get_user(session, get_jwt()["sub"])
    return {
        "user_id": user.user_id,
        "email": user.email,
        "plan": user.plan,
        "role": user.role,
        "created_at": user.created_at,
        "subscription": licensing.live_subscription(session, user.user_id),
        "seats": licensing.seats_for(session, user),
    }


def check_current_password(session: Any, email: str, password: str) -> None:
    """The current password, asked again, is a login attempt: the same lockout, the same
    audit entries. Raises AccountLocked or WrongPassword."""
    policy, ip, now = lockout_policy(), client_ip(), utcnow()
    attempt = service.check_credentials(
        session, hasher(), email, password, policy=policy, ip=ip, now=now
    )
    with transaction(session):
        outcome = service.settle_login(session, attempt, policy, ip=ip, now=now)
    if outcome.locked_until is not None:
        raise service.AccountLocked(outcome.locked_until, now)
    if outcome.user is None:
        raise service.WrongPassword()


def change_password(session: Any, user_id: str, current: str, new: str) -> Any:
    """Check the current password, then set the new one and end every session."""
    user = service.get_user(session, user_id)
    check_current_password(session, user.email, current)
    new_hash = hasher().hash(new)  # slow on purpose; outside the transaction
    with transaction(session):
        return service.change_password(
            session,
            user_id,
            new_hash,
            now=utcnow(),
            tokens_expire_by=tokens.family_expiry(),
            ip=client_ip(),
        )


@bp.post("/auth/password")
@jwt_required()
@limiter.limit(config_limit("RATELIMIT_LOGIN_PER_IP"), key_func=client_ip)
@limiter.limit(
    config_limit("RATELIMIT_LOGIN_PER_ACCOUNT"),
    key_func=jwt_subject_key(refresh=False, fallback=client_ip),
)
@bp.input(PasswordChangeIn)
@bp.output(TokenPairOut)
@bp.doc(
    summary="Change the password: every other session ends; answers with a new token pair",
    operation_id="auth_change_password",
    security=BEARER_AUTH,
    responses=problem_responses(401, 403, 422, 423, 429),
)
def password(json_data: PasswordChangeIn) -> Any:
    session = get_session()
    user = change_password(
        session, get_jwt()["sub"], json_data.current_password, json_data.new_password
    )
    return tokens.issue_pair(user), 200, NO_STORE
