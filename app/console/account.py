"""The customer portal's auth pages (run as auth): sign in, register, the dashboard with
the licenses, deactivate, the license token, sign out (here or everywhere)."""

from __future__ import annotations

from typing import Any

from flask import Response, current_app, flash, redirect, render_template, request, session, url_for
from pydantic import ValidationError

from app.auth.accounts import browser_sessions, service
from app.auth.accounts.routes import change_password, hasher, lockout_policy
from app.auth.accounts.schemas import LoginIn, PasswordChangeIn, RegisterIn
from app.auth.licensing import errors as licensing_errors
from app.auth.licensing import routes as licensing_routes
from app.auth.licensing import seats
from app.auth.licensing import service as licensing
from app.console.web import (
    console_blueprint,
    current_user,
    form_errors,
    requires_user,
    safe_next,
)
from app.http.limits import client_ip, config_limit, limiter, rate_limit_key
from app.kernel.db import get_session, transaction, utcnow
from app.kernel.emails import normalise_email
from app.kernel.errors import ProblemError

bp = console_blueprint("auth", "account", "/account")


@rate_limit_key
def email_in_form() -> str:
    """The login limit "per account and address", for a form post (the API's key reads JSON)."""
    email = request.form.get("email", "")
    if email.strip():
        import hashlib

        digest = hashlib.sha256(normalise_email(email).encode()).hexdigest()[:32]
        return "acct:" + digest + "@" + client_ip()
    return "ip:" + client_ip()


def _only_posts() -> bool:
    return request.method != "POST"


def _landing(user: Any) -> str:
    return url_for("console_admin.overview") if user.role == "admin" else url_for(".dashboard")


@bp.route("/sign-in", methods=["GET", "POST"])
# Checked in the order applied (bottom up): per address first, as the API's login.
@limiter.limit(
    config_limit("RATELIMIT_LOGIN_PER_ACCOUNT"), key_func=email_in_form, exempt_when=_only_posts
)
@limiter.limit(config_limit("RATELIMIT_LOGIN_PER_IP"), key_func=client_ip, exempt_when=_only_posts)
def sign_in() -> Any:
    user = current_user()
    if user is not None and request.method == "GET":
        return redirect(safe_next(request.args.get("next"), _landing(user)))
    if request.method == "GET":
        return render_template("account/sign_in.html", email="", errors=[])
    email = request.form.get("email", "")
    try:
        body = LoginIn(email=email, password=request.form.get("password", ""))
    except ValidationError:
        return _sign_in_refused(email, "Enter your email and password.", 422)
    db, policy, ip, now = get_session(), lockout_policy(), client_ip(), utcnow()
    # The same checks as POST /api/v1/auth/login: the lockout, then the password.
    attempt = service.check_credentials(
        db, hasher(), body.email, body.password, policy=policy, ip=ip, now=now
    )
    with transaction(db):
        outcome = service.settle_login(db, attempt, policy, ip=ip, now=now)
        if outcome.locked_until is None and outcome.user is not None:
            secret = browser_sessions.start(
                db,
                outcome.user.user_id,
                ttl=current_app.config["CONSOLE_SESSION_TTL"],
                ip=ip,
                user_agent=request.headers.get("User-Agent"),
            )
    if outcome.locked_until is not None:
        locked = service.AccountLocked(outcome.locked_until, now)
        return _sign_in_refused(email, locked.detail, 423, locked.headers)
    if outcome.user is None:
        return _sign_in_refused(email, "The email or the password is wrong.", 401)
    session.clear()  # a fresh session (and CSRF token) for the signed-in browser
    session["sid"] = secret
    return redirect(safe_next(request.args.get("next"), _landing(outcome.user)), code=303)


def _sign_in_refused(
    email: str, message: str, status: int, headers: dict[str, str] | None = None
) -> Any:
    page = render_template("account/sign_in.html", email=email, errors=[message])
    return page, status, headers or {}


@bp.route("/register", methods=["GET", "POST"])
@limiter.limit(
    config_limit("RATELIMIT_REGISTER_PER_IP"), key_func=client_ip, exempt_when=_only_posts
)
def register() -> Any:
    if request.method == "GET":
        return render_template("account/register.html", email="", errors=[])
    email = request.form.get("email", "")
    try:
        body = RegisterIn(email=email, password=request.form.get("password", ""))
    except ValidationError as exc:
        page = render_template("account/register.html", email=email, errors=form_errors(exc))
        return page, 422
    password_hash = hasher().hash(body.password)
    db = get_session()
    try:
        with transaction(db):
            service.register(db, body.email, password_hash, ip=client_ip())
    except service.EmailTaken as exc:
        page = render_template("account/register.html", email=email, errors=[exc.detail])
        return page, 409
    flash("Your account is ready: sign in.", "ok")
    return redirect(url_for(".sign_in"), code=303)


@bp.post("/sign-out")
def sign_out() -> Any:
    secret = session.get("sid")
    if secret:
        db = get_session()
        with transaction(db):
            browser_sessions.end(db, secret, ip=client_ip())
    return _signed_out("You are signed out.")


@bp.post("/sign-out-everywhere")
@requires_user
def sign_out_everywhere() -> Any:
    db = get_session()
    with transaction(db):
        browser_sessions.end_all(db, current_user().user_id, ip=client_ip())
    return _signed_out("You are signed out on every browser.")


def _signed_out(message: str) -> Any:
    """This browser forgets its session (and CSRF token) and goes to the sign-in page."""
    session.clear()
    flash(message, "ok")
    return redirect(url_for(".sign_in"), code=303)


@bp.get("/")
@requires_user
def dashboard() -> Any:
    user = current_user()
    db = get_session()
    account = service.get_user(db, user.user_id)
    licenses, _ = licensing.list_licenses(db, user.user_id, limit=100, after=None)
    return render_template(
        "account/dashboard.html",
        subscription=seats.live_subscription(db, user.user_id),
        seats=seats.seats_for(db, account),
        licenses=licenses,
        now=utcnow(),
    )


@bp.post("/licenses/<license_id>/deactivate")
@requires_user
def deactivate(license_id: str) -> Any:
    """POST /api/v1/licenses/{id} DELETE's service: revoked, seat freed, audited."""
    db = get_session()
    with transaction(db):
        license_ = licensing.deactivate(db, current_user().user_id, license_id, ip=client_ip())
    flash(f"{license_.client_id} is deactivated: its seat is free.", "ok")
    return redirect(url_for(".dashboard"), code=303)


@bp.get("/licenses/<license_id>/token")
@requires_user
def license_token(license_id: str) -> Any:
    """The license's token, signed now (as activation answers it), as a file to keep."""
    db = get_session()
    license_ = licensing.get_license(db, license_id)
    if license_.user_id != current_user().user_id:
        raise licensing_errors.LicenseNotFound()
    if license_.status != "active":
        raise ProblemError(
            "Only an active license has a token to download.",
            status=409,
            code="license_not_active",
        )
    token = licensing_routes.license_token(license_, utcnow())
    if request.args.get("view") == "1":
        return render_template("account/token.html", license=license_, token=token)
    return Response(
        token + "\n",
        mimetype="application/jwt",
        headers={"Content-Disposition": f'attachment; filename="{license_.license_id}.jwt"'},
    )


@bp.route("/password", methods=["GET", "POST"])
@requires_user
def password() -> Any:
    """POST /api/v1/auth/password's service: every session ends (browsers and API tokens),
    this browser's too, and this browser carries on with a new one, so that no copy of a
    cookie taken before the change still signs anyone in."""
    if request.method == "GET":
        return render_template("account/password.html", errors=[])
    try:
        body = PasswordChangeIn(
            current_password=request.form.get("current_password", ""),
            new_password=request.form.get("new_password", ""),
        )
    except ValidationError as exc:
        return render_template("account/password.html", errors=form_errors(exc)), 422
    db, user_id = get_session(), current_user().user_id
    try:
        change_password(db, user_id, body.current_password, body.new_password)
    except (service.WrongPassword, service.AccountLocked) as exc:
        page = render_template("account/password.html", errors=[exc.detail])
        return page, exc.status, exc.headers
    with transaction(db):
        secret = browser_sessions.start(
            db,
            user_id,
            ttl=current_app.config["CONSOLE_SESSION_TTL"],
            ip=client_ip(),
            user_agent=request.headers.get("User-Agent"),
        )
    session.clear()  # a new session (and CSRF token) for this browser
    session["sid"] = secret
    flash("Your password is changed; every other session is signed out.", "ok")
    return redirect(url_for(".dashboard"), code=303)
