"""JWT access and refresh tokens (flask-jwt-extended), wired to auth's revocation list.

Access tokens are short-lived and carry the user's role. Every login starts a token
*family* (`fam` claim) shared by the refresh tokens that rotate from it and the access
tokens they mint, so one revocation of the family ends all of them at once.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import current_app
from flask_jwt_extended import create_access_token, create_refresh_token

from app.auth import MODULE
from app.auth.accounts import revocations
from app.auth.models import User
from app.http.bearer import jwt
from app.http.problems import problem_response
from app.kernel.db import get_session, utcnow
from app.kernel.ownership import acting_as

BEARER = {"WWW-Authenticate": "Bearer"}
INVALID = {"WWW-Authenticate": 'Bearer error="invalid_token"'}


def access_ttl() -> timedelta:
    return current_app.config["JWT_ACCESS_TOKEN_EXPIRES"]


def refresh_ttl() -> timedelta:
    return current_app.config["JWT_REFRESH_TOKEN_EXPIRES"]


def issue_pair(
    user: User, family: str | None = None, *, issued_at: datetime | None = None
) -> dict[str, Any]:
    """A new access + refresh token pair; a new family unless one is given (rotation).

    `issued_at` is when the login or refresh that grants it held the user's lock: a
    password change that commits after it marks a later moment, so it revokes this pair
    even when the pair is signed after the change."""
    family = family or str(uuid.uuid4())
    # When, to the millisecond (`iat` is whole seconds): a password change revokes every
    # token issued until it, and not the pair it answers with a millisecond later.
    issued = {"fam": family, "ims": issued_ms(issued_at or utcnow())}
    access = create_access_token(
        identity=user.user_id, additional_claims={"role": user.role, **issued}
    )
    refresh = create_refresh_token(identity=user.user_id, additional_claims=issued)
    return {
        "access_token": access,
        "refresh_token": refresh,
        "token_type": "Bearer",
        "expires_in": int(access_ttl().total_seconds()),
    }


def issued_ms(moment: datetime) -> int:
    return revocations.issued_ms_at(moment)


def issued_ms_of(claims: dict[str, Any]) -> int:
    """When a token was issued, in epoch milliseconds (tokens from before `ims`: `iat`)."""
    return int(claims.get("ims", claims.get("iat", 0) * 1000))


def expiry_of(claims: dict[str, Any]) -> datetime:
    return datetime.fromtimestamp(claims["exp"], UTC)


def family_expiry() -> datetime:
    """No token of a family outlives this: its newest refresh token expires by then."""
    return datetime.now(UTC) + refresh_ttl()


@jwt.token_in_blocklist_loader
def _is_revoked(_header: dict, claims: dict) -> bool:
    with acting_as(MODULE):
        return revocations.is_revoked(
            get_session(),
            claims["jti"],
            claims.get("fam"),
            user_id=claims.get("sub"),
            issued_ms=issued_ms_of(claims),
        )


def _refusal(code: str, detail: str, headers: dict[str, str]) -> Callable[..., Any]:
    """A flask-jwt-extended callback answering 401 with this problem; what it is passed (the
    token's header and claims, or a reason: bad signature, wrong type, alg none…) stays
    server-side."""
    return lambda *_passed: problem_response(401, code, detail, headers=headers)


# How a refused token is answered, for each of flask-jwt-extended's reasons.
jwt.revoked_token_loader(_refusal("token_revoked", "The token has been revoked.", INVALID))
jwt.expired_token_loader(_refusal("token_expired", "The token has expired.", INVALID))
jwt.invalid_token_loader(_refusal("invalid_token", "The token is invalid.", INVALID))
jwt.unauthorized_loader(_refusal("unauthorized", "A Bearer token is required.", BEARER))
jwt.user_lookup_error_loader(
    _refusal("invalid_token", "The token's user no longer exists.", INVALID)
)
jwt.token_verification_failed_loader(_refusal("invalid_token", "The token is invalid.", INVALID))
jwt.needs_fresh_token_loader(_refusal("fresh_token_required", "Log in again to do this.", INVALID))


def init_app(app: Any) -> None:
    """Token settings with their defaults; the callbacks above are registered at import."""
    app.config.setdefault("JWT_ALGORITHM", "HS256")
    app.config.setdefault("JWT_DECODE_ALGORITHMS", ["HS256"])
    app.config.setdefault("JWT_TOKEN_LOCATION", ["headers"])
