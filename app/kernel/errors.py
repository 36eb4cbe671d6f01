"""Problem details (RFC 9457): the errors domain code raises, and their bodies.

Domain code raises `ProblemError` subclasses (plain Python, no Flask); `problem()` builds the
`application/problem+json` body (`type`, `title`, `status`, `detail` and a machine-readable
`code`). The HTTP layer renders them, and every other error, in one place
(`app.http.problems`).
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from sqlalchemy import exc as sa_exc

log = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_TYPE_BASE = "/problems/"

# The code a bare HTTP status gets when nothing more specific was said.
DEFAULT_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    412: "precondition_failed",
    413: "payload_too_large",
    414: "uri_too_long",
    415: "unsupported_media_type",
    422: "validation_error",
    428: "precondition_required",
    429: "rate_limited",
    431: "headers_too_large",
    500: "internal_error",
    502: "bad_gateway",
    503: "service_unavailable",
}


class ProblemError(Exception):
    """An error with an HTTP meaning. Subclasses set `status` and `code`, and may set the
    `detail` and `headers` an instance has when it is not given its own."""

    status: int = 400
    code: str = "bad_request"
    title: str | None = None
    detail: str | None = None  # None: the status's description
    headers: dict[str, str] = {}

    def __init__(
        self,
        detail: str | None = None,
        *,
        code: str | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code
        self.detail = detail or self.detail or status_phrase(self.status)[1]
        self.headers = headers or dict(self.headers)
        self.extra = {key: value for key, value in extra.items() if value is not None}
        super().__init__(self.detail)


class NotFound(ProblemError):
    status, code = 404, "not_found"


class Conflict(ProblemError):
    status, code = 409, "conflict"


class Forbidden(ProblemError):
    status, code = 403, "forbidden"


class Unauthorized(ProblemError):
    status, code = 401, "unauthorized"


class MalformedJSON(ProblemError):
    status, code = 400, "malformed_json"


def status_phrase(status: int) -> tuple[str, str]:
    """(title, description) of an HTTP status; generic ones for statuses Python doesn't name."""
    try:
        known = HTTPStatus(status)
        return known.phrase, known.description
    except ValueError:
        if status < 500:
            return "Client Error", "The request failed."
        return "Server Error", "The server failed."


def problem(
    status: int,
    code: str | None = None,
    detail: str | None = None,
    title: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The problem+json body for a status and code."""
    code = code or DEFAULT_CODES.get(status, "error")
    default_title, default_detail = status_phrase(status)
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + code,
        "title": title or default_title,
        "status": status,
        "detail": detail or default_detail,
        "code": code,
    }
    body.update(extra)
    return body


# SQLite reports both outages and programming errors as OperationalError; only these are
# outages (locked/busy, a file it cannot open, I/O errors, a full disk).
_SQLITE_TRANSIENT = ("locked", "busy", "unable to open", "disk i/o", "disk is full", "readonly")


def is_transient(error: Exception) -> bool:
    """True for database errors that mean "unavailable now", not "this request is wrong"."""
    if isinstance(error, (sa_exc.TimeoutError, sa_exc.InterfaceError)):
        return True
    if isinstance(error, sa_exc.DBAPIError) and error.connection_invalidated:
        return True
    if isinstance(error, sa_exc.OperationalError):
        orig = getattr(error, "orig", None)
        if type(orig).__module__.startswith("sqlite3"):
            message = str(orig).lower()
            return any(marker in message for marker in _SQLITE_TRANSIENT)
        return True  # psycopg: connection failures, shutdowns, statement timeouts
    return False
