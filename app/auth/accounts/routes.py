"""The accounts HTTP API: register, login, refresh, logout, me."""

from __future__ import annotations

from datetime import timedelta
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
from app.http.bearer import verify_jwt_in_request
from app.http.limits import client_ip, email_in_body, jwt_subject_key
from app.http.routes import BEARER, PUBLIC, Callers, Endpoints, Limit
from app.kernel.db import get_session, transaction, utcnow
from app.kernel.web import BEARER_AUTH, NO_STORE

api = Endpoints(bp)

# Who may refresh: the view verifies the refresh token (as Bearer) itself; its rotation
# decides reuse, which a revoked token is not.
REFRESH_BEARER = Callers(check=None, security=BEARER_AUTH, problems=(401,))
# Each limited route counts per client address, then per account: the body's email, or
# the verified token's user (else the address).
REGISTER_LIMITS = (
    Limit("RATELIMIT_REGISTER_PER_IP", client_ip),
    Limit("RATELIMIT_REGISTER_PER_ACCOUNT", email_in_body),
)
LOGIN_LIMITS = (
    Limit("RATELIMIT_LOGIN_PER_IP", client_ip),
    Limit("RATELIMIT_LOGIN_PER_ACCOUNT", email_in_body),
)
REFRESH_LIMITS = (
    Limit("RATELIMIT_REFRESH_PER_IP", client_ip),
    Limit("RATELIMIT_REFRESH_PER_ACCOUNT", jwt_subject_key(refresh=True, fallback=client_ip)),
)
# The current password asked again is a login attempt: the login's rates.
PASSWORD_LIMITS = (
    Limit("RATELIMIT_LOGIN_PER_IP", client_ip),
    Limit("RATELIMIT_LOGIN_PER_ACCOUNT", jwt_subject_key(refresh=False, fallback=client_ip)),
)


def hasher() -> Hasher:
    return hasher_from_config(current_app.config)


def lockout_policy() -> service.LockoutPolicy:
    return service.LockoutPolicy.from_config(current_app.config)


@bp.post("/auth/register")
@api.endpoint(PUBLIC, "auth_register", limits=REGISTER_LIMITS, problems=(409, 422, 429))
@api.io(body=RegisterIn, output=UserOut, status=201)
def register(json_data: RegisterIn) -> Any:
    """Create an account"""
    password_hash = hasher().hash(json_data.password)  # slow on purpose; outside the transaction
    session = get_session()
    with transaction(session):
        user = service.register(session, json_data.email, password_hash, ip=client_ip())
    return user


@bp.post("/auth/login")
@api.endpoint(PUBLIC, "auth_login", limits=LOGIN_LIMITS, problems=(401, 422, 423, 429))
@api.io(body=LoginIn, output=TokenPairOut)
def login(json_data: LoginIn) -> Any:
    """Log in: an access and a refresh token"""
    outcome = attempt_login(get_session(), json_data.email, json_data.password)
    if outcome.user is None:
        raise service.InvalidCredentials()
    return tokens.issue_pair(outcome.user, issued_at=outcome.issued_at), 200, NO_STORE


@bp.post("/auth/refresh")
@api.endpoint(REFRESH_BEARER, "auth_refresh", limits=REFRESH_LIMITS, problems=(429,))
@api.io(output=TokenPairOut)
def refresh() -> Any:
    """Exchange a refresh token (as Bearer) for a new pair; the old one is spent"""
    # Revocation is decided by rotate_refresh itself: a spent token is reuse, not just "revoked".
    verify_jwt_in_request(refresh=True, skip_revocation_check=True)
    claims = get_jwt()
    session = get_session()
    with transaction(session):
        outcome = revocations.rotate_refresh(
            session,
            jti=claims["jti"],
            family=claims["fam"],
            user_id=claims["sub"],
            issued_ms=tokens.issued_ms_of(claims),
            expires_at=tokens.expiry_of(claims),
            family_expires_at=tokens.family_expiry(),
            ip=client_ip(),
        )
    if outcome.password_changed:
        raise service.TokenRevoked("The password was changed since; log in again.")
    if outcome.reuse_detected:
        raise service.TokenRevoked("This refresh token was already used; its session is revoked.")
    if outcome.user is None:
        raise service.TokenRevoked()
    pair = tokens.issue_pair(outcome.user, family=claims["fam"], issued_at=outcome.issued_at)
    return pair, 200, NO_STORE


@bp.post("/auth/logout")
@api.endpoint(BEARER, "auth_logout")
@api.io(output={}, status=204)
def logout() -> Any:
    """Revoke this access token and its refresh family"""
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
@api.endpoint(BEARER, "auth_me")
@api.io(output=MeOut)
def me() -> Any:
    """The current user, plan, subscription and seats"""
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


def attempt_login(session: Any, email: str, password: str) -> service.LoginOutcome:
    """A login attempt: the lockout, then the password, settled (counted, audited) in its
    own transaction. Its outcome: the user (and when its tokens are issued), or no user for
    a wrong email or password; AccountLocked while the address or the account is locked."""
    policy, ip, now = lockout_policy(), client_ip(), utcnow()
    attempt = service.check_credentials(
        session, hasher(), email, password, policy=policy, ip=ip, now=now
    )
    with transaction(session):
        outcome = service.settle_login(session, attempt, policy, ip=ip, now=now)
    if outcome.locked_until is not None:
        raise service.AccountLocked(outcome.locked_until, now)
    return outcome


def check_current_password(session: Any, email: str, password: str) -> None:
    """The current password, asked again, is a login attempt: the same lockout, the same
    audit entries. Raises AccountLocked or WrongPassword."""
    if attempt_login(session, email, password).user is None:
        raise service.WrongPassword()


def change_password(session: Any, user_id: str, current: str, new: str) -> service.PasswordChanged:
    """Check the current password, then set the new one and end every session."""
    user = service.get_user(session, user_id)
    check_current_password(session, user.email, current)
    new_hash = hasher().hash(new)  # slow on purpose; outside the transaction
    with transaction(session):
        return service.change_password(
            session,
            user_id,
            new_hash,
            tokens_expire_by=tokens.family_expiry(),
            ip=client_ip(),
        )


@bp.post("/auth/password")
@api.endpoint(BEARER, "auth_change_password", limits=PASSWORD_LIMITS, problems=(403, 422, 423, 429))
@api.io(body=PasswordChangeIn, output=TokenPairOut)
def password(json_data: PasswordChangeIn) -> Any:
    """Change the password: every other session ends; answers with a new token pair"""
    session = get_session()
    changed = change_password(
        session, get_jwt()["sub"], json_data.current_password, json_data.new_password
    )
    # A millisecond after the marker: every token issued until it is revoked, not this pair.
    issued_at = changed.changed_at + timedelta(milliseconds=1)
    return tokens.issue_pair(changed.user, issued_at=issued_at), 200, NO_STORE
