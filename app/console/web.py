"""What every console page shares: the console-only cookie session, CSRF, who is signed
in, HTML error pages and the strict Content-Security-Policy."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from apiflask import APIBlueprint
from flask import (
    Blueprint,
    current_app,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask.sessions import NullSession, SecureCookieSessionInterface, SessionInterface
from flask_limiter.errors import RateLimitExceeded
from flask_wtf.csrf import CSRFError, CSRFProtect
from sqlalchemy import exc as sa_exc
from werkzeug.exceptions import HTTPException

from app.auth.accounts import browser_sessions
from app.http.blueprints import module_blueprint
from app.kernel.db import get_session
from app.kernel.errors import ProblemError, is_transient

log = logging.getLogger(__name__)

# The only paths that ever see a cookie. Everything else (the API above all) keeps the
# app's cookie-free session interface.
CONSOLE_PREFIXES = ("/account", "/console")

# No inline script or style anywhere; htmx and the stylesheet are served from here.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)

HTMX = "htmx-2.0.11.min.js"
PICO = "pico-2.1.1.min.css"

csrf = CSRFProtect()
static_bp = Blueprint(
    "console_static", __name__, static_folder="static", static_url_path="/console/static"
)


def is_console_path(path: str) -> bool:
    return any(path == p or path.startswith(p + "/") for p in CONSOLE_PREFIXES)


class ConsoleCookieSession(SecureCookieSessionInterface):
    """Flask's signed cookie, holding only the browser session's secret and the CSRF
    token; who is signed in is decided server-side (app.auth.accounts.browser_sessions).

    HttpOnly and SameSite=Lax always; Secure with the `__Host-` prefix in production (the
    prefix makes the browser refuse it without Secure, a Domain or a Path other than /)."""

    def _production(self, app: Any) -> bool:
        return bool(app.config.get("CONSOLE_COOKIE_SECURE"))

    def get_cookie_name(self, app: Any) -> str:
        return "__Host-console" if self._production(app) else "console"

    def get_cookie_domain(self, app: Any) -> None:
        return None

    def get_cookie_path(self, app: Any) -> str:
        return "/"

    def get_cookie_httponly(self, app: Any) -> bool:
        return True

    def get_cookie_secure(self, app: Any) -> bool:
        return self._production(app)

    def get_cookie_samesite(self, app: Any) -> str:
        return "Lax"


class ConsoleOnlySessions(SessionInterface):
    """The console's cookie session on console paths; `api` (the app's cookie-free one)
    everywhere else, so an /api/ request neither reads nor sets a cookie."""

    def __init__(self, api: SessionInterface) -> None:
        self.api = api
        self.console = ConsoleCookieSession()

    def _for(self, request_: Any) -> SessionInterface:
        return self.console if is_console_path(request_.path) else self.api

    def open_session(self, app: Any, request_: Any) -> Any:
        return self._for(request_).open_session(app, request_)

    def save_session(self, app: Any, session_: Any, response: Any) -> None:
        if isinstance(session_, NullSession):
            return None
        return self._for(request).save_session(app, session_, response)


def init_app(app: Any) -> None:
    production = app.config["APP_ENV"] == "production"
    app.config.setdefault("CONSOLE_COOKIE_SECURE", production)
    app.config.setdefault("CONSOLE_SESSION_TTL", timedelta(hours=12))
    # CSRF is checked by the console's blueprints only: the API takes no cookie, so a
    # cross-site form cannot act as anyone there.
    app.config.setdefault("WTF_CSRF_CHECK_DEFAULT", False)
    app.config.setdefault("WTF_CSRF_TIME_LIMIT", None)  # as long as the session lives
    app.session_interface = ConsoleOnlySessions(app.session_interface)
    csrf.init_app(app)
    app.jinja_env.globals.update(template_globals())


# --- blueprints ------------------------------------------------------------------------


def console_blueprint(module: str, name: str, url_prefix: str) -> APIBlueprint:
    """A blueprint of console pages that run as `module`: the signed-in user in
    `g.console_user`, CSRF checked on every POST, HTML error pages, the console's CSP."""
    bp = module_blueprint(
        module,
        f"app.console.{name}",
        name=f"console_{name}",
        url_prefix=url_prefix,
        enable_openapi=False,
        template_folder="templates",
    )

    @bp.before_request
    def _load_user() -> None:
        g.console_user = None
        secret = session.get("sid")
        if secret:
            g.console_user = browser_sessions.resolve(get_session(), secret)
            if g.console_user is None:
                session.pop("sid", None)  # expired or revoked: forget it
        if request.method == "POST":
            csrf.protect()

    @bp.after_request
    def _headers(response: Any) -> Any:
        response.headers["Content-Security-Policy"] = CSP
        response.headers["Cache-Control"] = "no-store"
        response.headers.setdefault("Vary", "Cookie")
        return response

    @bp.errorhandler(CSRFError)
    def _csrf(error: CSRFError) -> Any:
        return error_page(
            400,
            "This form has expired or did not come from this site",
            "Go back, reload the page and send it again.",
        )

    @bp.errorhandler(RateLimitExceeded)
    def _rate_limited(error: RateLimitExceeded) -> Any:
        retry = getattr(error, "retry_after", None)
        headers = {"Retry-After": str(retry)} if retry else {}
        return error_page(
            429, "Too many attempts", "Wait a minute before trying again.", headers=headers
        )

    @bp.errorhandler(ProblemError)
    def _problem(error: ProblemError) -> Any:
        return error_page(error.status, _title(error.status), error.detail, headers=error.headers)

    @bp.errorhandler(HTTPException)
    def _http(error: HTTPException) -> Any:
        return error_page(error.code or 500, _title(error.code or 500), error.description or "")

    @bp.errorhandler(Exception)
    def _unexpected(error: Exception) -> Any:
        # What the API answers as problem+json (app/http/problems.py), as a page.
        if isinstance(error, sa_exc.SQLAlchemyError) and is_transient(error):
            log.warning(
                "database unavailable: %s", str(error).splitlines()[0] if str(error) else error
            )
            return error_page(
                503,
                "The service is unavailable",
                "The database cannot be reached right now; try again in a moment.",
                headers={"Retry-After": "1"},
            )
        log.exception("unhandled error in the console")
        return error_page(
            500, "Something went wrong", "An unexpected error occurred; it has been logged."
        )

    return bp


def _title(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def error_page(status: int, title: str, detail: str, headers: dict[str, str] | None = None) -> Any:
    return (
        render_template("error.html", status=status, title=title, detail=detail),
        status,
        (headers or {}),
    )


def current_user() -> browser_sessions.SignedIn | None:
    return g.get("console_user")


def sign_in_redirect() -> Any:
    return redirect(url_for("console_account.sign_in", next=request.full_path.rstrip("?")))


def safe_next(target: str | None, default: str) -> str:
    """Only a path on this site (no scheme, no host, no `//`): no open redirect."""
    if not target:
        return default
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return default
    if "\\" in target or not is_console_path(parts.path):
        return default
    return target


def requires_user(view: Callable[..., Any]) -> Callable[..., Any]:
    import functools

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if current_user() is None:
            return sign_in_redirect()
        return view(*args, **kwargs)

    return wrapper


def form_errors(exc: Any) -> list[str]:
    """Pydantic's errors as short sentences for the form."""
    messages = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err.get("loc", ()) if p != "__root__")
        msg = str(err.get("msg", "is invalid")).removeprefix("Value error, ")
        messages.append(f"{field.capitalize()}: {msg}" if field else msg)
    return messages


def template_globals() -> dict[str, Any]:
    return {
        "htmx_file": HTMX,
        "pico_file": PICO,
        "console_user": current_user,
        "app_env": lambda: current_app.config["APP_ENV"],
    }
