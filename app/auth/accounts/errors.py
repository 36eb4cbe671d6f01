"""The problems accounts answer with (problem+json `code`s, statuses, extension members)."""

from __future__ import annotations

from datetime import datetime

from app.kernel.db import utcnow
from app.kernel.errors import Conflict, NotFound, ProblemError, Unauthorized


class EmailTaken(Conflict):
    code = "email_taken"
    detail = "An account with this email already exists."


class InvalidCredentials(Unauthorized):
    code = "invalid_credentials"
    detail = "Invalid email or password."
    headers = {"WWW-Authenticate": "Bearer"}


class AccountLocked(ProblemError):
    status, code = 423, "account_locked"

    def __init__(self, until: datetime, now: datetime | None = None) -> None:
        seconds = max(1, int((until - (now or utcnow())).total_seconds()) + 1)
        super().__init__(
            "Too many failed logins; logging in to this account is locked for a while. "
            "Try again later.",
            headers={"Retry-After": str(seconds)},
            locked_until=until.isoformat(),
        )


class TokenRevoked(Unauthorized):
    code = "token_revoked"
    detail = "The token has been revoked."
    headers = {"WWW-Authenticate": 'Bearer error="invalid_token"'}


class UserNotFound(NotFound):
    code = "user_not_found"


class WrongPassword(ProblemError):
    """The signed-in user's current password, asked again before changing it, is wrong
    (403, not 401: the token is fine, and a client must not take it for an expired one)."""

    status, code = 403, "wrong_password"
    detail = "The current password is wrong."
