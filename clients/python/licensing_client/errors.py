"""Typed exceptions: one per kind of problem+json answer, plus the two an app acts on
(`ServiceUnreachable`: fall back offline; `UntrustedAnswer`: the answer was not the service's)."""

from __future__ import annotations

from typing import Any


class LicensingError(Exception):
    """Base of everything this library raises."""


class ServiceUnreachable(LicensingError):
    """No usable answer: a network error, a timeout, or a 5xx after the retries."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class UntrustedAnswer(LicensingError):
    """An answer whose signed verdict is missing, forged, stale or for another request."""


class ApiError(LicensingError):
    """The service refused the request: an RFC 9457 problem (`code` is the stable part)."""

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        self.status = status
        self.problem = problem
        self.code: str = str(problem.get("code") or f"http_{status}")
        self.title: str = str(problem.get("title") or "")
        self.detail: str = str(problem.get("detail") or "")
        super().__init__(f"{status} {self.code}: {self.detail or self.title}")


class InvalidRequest(ApiError):
    """400 or 422: the request is malformed (a bug in the caller, not a license state)."""


class Unauthorized(ApiError):
    """401: wrong email or password, or a missing, expired or revoked access token."""


class Forbidden(ApiError):
    """403."""


class NotFound(ApiError):
    """404: no such license, or not this caller's (the service does not say which)."""


class Conflict(ApiError):
    """409: `client_id_taken` or `seat_limit_reached` (see `code`)."""


class AccountLocked(ApiError):
    """423: too many failed logins; `locked_until` says until when."""

    @property
    def locked_until(self) -> str | None:
        return self.problem.get("locked_until")


class RateLimited(ApiError):
    """429 after the retries (or with a Retry-After longer than the client waits)."""

    def __init__(self, status: int, problem: dict[str, Any], retry_after: float | None) -> None:
        super().__init__(status, problem)
        self.retry_after = retry_after


class ServerError(ApiError, ServiceUnreachable):
    """5xx: the service is there but cannot answer; treated as unreachable by `check()`."""

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        ApiError.__init__(self, status, problem)
        self.status = status


_BY_STATUS: dict[int, type[ApiError]] = {
    400: InvalidRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    422: InvalidRequest,
    423: AccountLocked,
}


def error_for(status: int, problem: dict[str, Any], retry_after: float | None = None) -> ApiError:
    if status == 429:
        return RateLimited(status, problem, retry_after)
    if status >= 500:
        return ServerError(status, problem)
    return _BY_STATUS.get(status, ApiError)(status, problem)
