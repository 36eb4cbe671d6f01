"""Every error the app can raise, rendered as problem+json (RFC 9457) in one place.

Framework errors (404, 405, 413, validation), the kernel's `ProblemError`s and database
failures become `application/problem+json` with `type`, `title`, `status`, `detail` and a
machine-readable `code` (bodies built by `app.kernel.errors.problem`). No response ever
carries a stack trace: unexpected errors are logged server-side and answered with a bare 500.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import current_app
from sqlalchemy import exc as sa_exc
from werkzeug.exceptions import HTTPException

from app.kernel.errors import (
    PROBLEM_MEDIA_TYPE,
    ProblemError,
    is_transient,
    problem,
    status_phrase,
)

log = logging.getLogger(__name__)


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


def problem_body_response(body: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
    """A Flask response for an already built problem body (e.g. a stored one, replayed)."""
    return _respond(body, headers)


def _respond(body: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
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
                error.message
                if error.message and error.message != status_phrase(status)[0]
                else None
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
        if isinstance(error, HTTPException):  # routed here only when json_errors is off
            return _respond(problem(error.code or 500), dict(error.get_headers()))
        log.exception("unhandled error")
        return _respond(problem(500, "internal_error", "An unexpected error occurred."))
