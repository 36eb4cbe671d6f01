"""Problem details (RFC 9457) for every error, rendered in one place.

Domain code raises `ProblemError` subclasses (plain Python, no Flask); `init_app` teaches
the app to render them, framework errors (404, 405, 413, validation) and database failures
as `application/problem+json` with `type`, `title`, `status`, `detail` and a machine-readable
`code`. No response ever carries a stack trace: unexpected errors are logged server-side
and answered with a bare 500.
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
    """An error with an HTTP meaning. Subclasses set `status` and `code`."""

    status: int = 400
    code: str = "bad_request"
    title: str | None = None

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
        self.detail = detail or _phrase(self.status)[1]
        self.headers = headers or {}
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


def _phrase(status: int) -> tuple[str, str]:
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
    default_title, default_detail = _phrase(status)
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + code,
        "title": title or default_title,
        "status": status,
        "detail": detail or default_detail,
        "code": code,
    }
    body.update(extra)
    return body


def validation_errors(detail: Any) -> list[dict[str, Any]]:
    """APIFlask's `{location: {field.path: [msg, …]}}` as `[{loc: [...], msg}]`."""
    errors: list[dict[str, Any]] = []
    if not isinstance(detail, dict):
        return errors
    for location, fields in detail.items():
        if not isinstance(fields, dict):
            errors.append({"loc": [location], "msg": str(fields)})
            continue
        for path, messages in fields.items():
            loc = [location] if path in ("_schema", "") else [location, *str(path).split(".")]
            for msg in messages if isinstance(messages, list) else [messages]:
                errors.append({"loc": loc, "msg": str(msg)})
    return errors


def problem_response(
    status: int,
    code: str | None = None,
    detail: str | None = None,
    *,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> Any:
    """A Flask response carrying a problem+json body."""
    return _respond(problem(status, code, detail, **extra), headers)


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


def problem_body_response(body: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
    """A Flask response for an already built problem body (e.g. a stored one, replayed)."""
    return _respond(body, headers)


def _respond(body: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
    from flask import current_app

    response = current_app.response_class(
        current_app.json.dumps(body), status=body["status"], mimetype=PROBLEM_MEDIA_TYPE
    )
    for name, value in (headers or {}).items():
        if name.lower() != "content-type":
            response.headers[name] = value
    return response


def init_app(app: Any) -> None:
    """Render every error the app can raise as problem+json."""

    @app.error_processor
    def _framework_error(error: Any) -> Any:
        # HTTPError from APIFlask: werkzeug HTTP exceptions, abort(), validation failures.
        status = error.status_code
        extra = dict(error.extra_data or {})
        code = extra.pop("code", None)
        if status == 422 and error.detail:
            extra["errors"] = validation_errors(error.detail)
            detail = "The request body or parameters are invalid."
        else:
            detail = (
                error.message if error.message and error.message != _phrase(status)[0] else None
            )
        return _respond(problem(status, code, detail, **extra), dict(error.headers or {}))

    @app.errorhandler(ProblemError)
    def _domain_error(error: ProblemError) -> Any:
        body = problem(error.status, error.code, error.detail, title=error.title, **error.extra)
        return _respond(body, error.headers)

    @app.errorhandler(sa_exc.OperationalError)
    @app.errorhandler(sa_exc.InterfaceError)
    @app.errorhandler(sa_exc.TimeoutError)
    def _database_unavailable(error: Exception) -> Any:
        if not is_transient(error):
            return _unexpected(error)
        # A lost connection, a refused connect, a pool timeout or a locked SQLite file:
        # the request could not be served now and may succeed shortly.
        log.warning("database unavailable: %s", str(error).splitlines()[0] if str(error) else error)
        body = problem(503, "database_unavailable", "The database is unavailable; retry shortly.")
        return _respond(body, {"Retry-After": "1"})

    @app.errorhandler(sa_exc.DataError)
    def _data_error(error: sa_exc.DataError) -> Any:
        # The database refused a value (a NUL character, a number out of range) that
        # validation let through: the request is at fault, not the server.
        log.info("database refused a value: %s", str(error.orig).splitlines()[0])
        return _respond(problem(422, "invalid_value", "A value in the request cannot be stored."))

    @app.errorhandler(sa_exc.IntegrityError)
    def _integrity_error(error: sa_exc.IntegrityError) -> Any:
        # Services translate the constraints they expect into specific 409s; anything that
        # reaches here is still a conflict with existing data, never a server error.
        log.info("unhandled integrity error: %s", str(error.orig).splitlines()[0])
        return _respond(problem(409, "conflict", "The request conflicts with existing data."))

    @app.errorhandler(Exception)
    def _unexpected(error: Exception) -> Any:
        from werkzeug.exceptions import HTTPException

        if isinstance(error, HTTPException):  # routed here only when json_errors is off
            return _respond(problem(error.code or 500), dict(error.get_headers()))
        log.exception("unhandled error")
        return _respond(problem(500, "internal_error", "An unexpected error occurred."))
