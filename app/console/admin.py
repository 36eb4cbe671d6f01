"""The admin console (run as admin): statistics as charts, user search, a user's page,
license actions with optimistic locking, batches, the audit log, operations. Admins only:
anyone else signed in gets a 403 page."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flask import current_app, flash, redirect, render_template, request, url_for

from app.admin import service
from app.auth import api as auth_api
from app.console import charts
from app.console.web import console_blueprint, current_user, error_page, sign_in_redirect
from app.http.limits import client_ip
from app.kernel.db import get_database, get_session, transaction
from app.kernel.errors import ProblemError
from app.kernel.ownership import OPERATOR, acting_as
from app.kernel.pagination import decode_keyset

bp = console_blueprint("admin", "admin", "/console")

STATUSES = ("active", "suspended", "revoked")
ACTIONS = {"Suspend": "suspended", "Reactivate": "active", "Revoke": "revoked"}


@bp.before_request
def _require_admin() -> Any:
    user = current_user()
    if user is None:
        return sign_in_redirect()
    # The session's user as the database has them now: a demoted admin is out at once.
    if not service.is_admin(get_session(), user.user_id):
        return error_page(403, "Admins only", "This console is for administrators.")
    return None


@bp.get("/")
def overview() -> Any:
    db = get_session()
    users = service.user_stats(db)
    licenses = service.license_stats(db)
    return render_template(
        "console/overview.html",
        users=users,
        licenses=licenses,
        users_chart=charts.bars([(u["plan"], u["user_count"]) for u in users], "Users per plan"),
        new_chart=charts.bars(
            [(u["plan"], u["new_users_30d"]) for u in users], "New users in 30 days"
        ),
        licenses_chart=charts.bars(
            [(x["status"], x["count"]) for x in licenses], "Licenses per status"
        ),
    )


@bp.get("/users")
def users() -> Any:
    email = request.args.get("email", "").strip()[:320]
    plan = request.args.get("plan", "").strip()[:32]
    after = decode_keyset(request.args.get("cursor"), (datetime, str))
    items, next_cursor = service.list_users(
        get_session(), email_prefix=email or None, plan=plan or None, limit=25, after=after
    )
    return render_template(
        "console/users.html",
        items=items,
        next_cursor=next_cursor,
        email=email,
        plan=plan,
        plans=sorted(current_app.extensions["plans"]),
    )


def _user_page(user_id: str, status: int = 200, conflict: dict[str, Any] | None = None) -> Any:
    db = get_session()
    user = service.user_with_licenses(db, user_id)
    if user is None:
        return error_page(404, "No such user", "There is no user with this id.")
    entries, _ = service.search_audit(
        db, service.AuditFilter(user_id=user_id), limit=10, after=None
    )
    page = render_template(
        "console/user.html",
        user=user,
        subscription=auth_api.live_subscription(db, user_id),
        orders=_orders_of(db, user_id),
        audit=entries,
        actions=ACTIONS,
        conflict=conflict,
        now=datetime.now(UTC),
    )
    # A conflict answers a POST with the user's page: with htmx, the address bar shows
    # that page (so a reload reloads it, not the POST).
    headers = {"HX-Replace-Url": url_for(".user", user_id=user_id)} if conflict else {}
    return page, status, headers


def _orders_of(db: Any, user_id: str) -> list[Any]:
    from app.orders import service as orders_service

    with acting_as("orders"):
        items, _ = orders_service.list_orders(db, user_id, limit=10, after=None)
        return [orders_service.order_body(o) for o in items]


@bp.get("/users/<user_id>")
def user(user_id: str) -> Any:
    return _user_page(user_id)


@bp.post("/users/<user_id>/unlock")
def unlock(user_id: str) -> Any:
    db = get_session()
    with transaction(db):
        unlocked = auth_api.unlock_user(
            db, user_id, current_app.config, actor_id=current_user().user_id, ip=client_ip()
        )
    if unlocked is None:
        return error_page(404, "No such user", "There is no user with this id.")
    flash(f"{unlocked.email} can sign in again.", "ok")
    return redirect(url_for(".user", user_id=user_id), code=303)


def _version(raw: str | None) -> int | None:
    try:
        return int(raw or "")
    except ValueError:
        return None


@bp.post("/licenses/<license_id>/status")
def change_license(license_id: str) -> Any:
    """Suspend, Reactivate or Revoke, as PATCH /api/v1/admin/licenses/{id} with If-Match:
    the version the page showed must still be the license's, or nothing changes."""
    db = get_session()
    new_status = ACTIONS.get(request.form.get("action", ""))
    version = _version(request.form.get("version"))
    license_ = auth_api.get_license(db, license_id)
    if license_ is None:
        return error_page(404, "No such license", "There is no license with this id.")
    if new_status is None or version is None:
        return error_page(422, "Unknown action", "Use the page's buttons to change a license.")
    try:
        with transaction(db):
            changed = auth_api.update_license_status(
                db,
                license_id,
                new_status,
                version,
                actor_id=current_user().user_id,
                ip=client_ip(),
            )
    except auth_api.VersionConflict:
        current = auth_api.get_license(db, license_id)
        conflict = {
            "license_id": license_id,
            "message": (
                f"Someone changed {license_.client_id} since this page was loaded: it is "
                f"now {current.status} (version {current.version}). Nothing was changed; "
                "the page below shows it as it is."
            ),
        }
        return _user_page(license_.user_id, status=409, conflict=conflict)
    except auth_api.InvalidTransition as exc:
        return _user_page(
            license_.user_id,
            status=409,
            conflict={"license_id": license_id, "message": exc.detail},
        )
    flash(f"{changed.client_id} is now {changed.status}.", "ok")
    return redirect(url_for(".user", user_id=license_.user_id), code=303)


@bp.post("/users/<user_id>/licenses/batch")
def batch(user_id: str) -> Any:
    """Change the selected licenses in one all-or-nothing batch (a stale one stops all)."""
    new_status = ACTIONS.get(request.form.get("action", ""))
    selected = request.form.getlist("license")[:1000]
    if new_status is None or not selected:
        flash("Select licenses and an action.", "error")
        return redirect(url_for(".user", user_id=user_id), code=303)
    updates = []
    for value in selected:
        license_id, _, raw_version = value.partition(":")
        version = _version(raw_version)
        if version is None:
            return error_page(422, "Unknown selection", "Use the page's checkboxes.")
        updates.append(auth_api.StatusUpdate(license_id, new_status, version))
    db = get_session()
    for update in updates:  # the page acts on what it shows: this user's licenses only
        license_ = auth_api.get_license(db, update.license_id)
        if license_ is None or license_.user_id != user_id:
            return error_page(422, "Unknown selection", "Select licenses shown on this page.")
    try:
        with transaction(db):
            changed = auth_api.batch_update_license_statuses(
                db, updates, actor_id=current_user().user_id, ip=client_ip()
            )
    except ProblemError as exc:
        conflict = {"license_id": None, "message": f"Nothing was changed: {exc.detail}"}
        return _user_page(user_id, status=exc.status, conflict=conflict)
    flash(f"{len(changed)} license(s) are now {new_status}.", "ok")
    return redirect(url_for(".user", user_id=user_id), code=303)


def _when(raw: str) -> datetime | None:
    if not raw:
        return None
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise ProblemError(
            f"{raw!r} is not a date and time.", status=422, code="validation_error"
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@bp.get("/audit")
def audit() -> Any:
    args = {
        k: request.args.get(k, "").strip()[:64] for k in ("user_id", "action", "since", "until")
    }
    filters = service.AuditFilter(
        user_id=args["user_id"] or None,
        action=args["action"] or None,
        since=_when(args["since"]),
        until=_when(args["until"]),
    )
    after = decode_keyset(request.args.get("cursor"), (datetime, str))
    entries, next_cursor = service.search_audit(get_session(), filters, limit=50, after=after)
    return render_template("console/audit.html", entries=entries, next_cursor=next_cursor, **args)


@bp.get("/operations")
def operations() -> Any:
    from app.kernel.events import outbox
    from app.operations import backups, health

    checks = health.readiness_checks()
    with acting_as(OPERATOR):
        session = get_database().sessions_for("kernel")()
        with session:
            backlog = outbox.outbox_status(session)
    folder = Path(current_app.config["BACKUP_DIR"])
    latest = (
        [(path.name, manifest) for path, manifest in backups.list_backups(folder)[-5:][::-1]]
        if folder.is_dir()
        else []
    )
    return render_template(
        "console/operations.html", checks=checks, backlog=backlog, backups=latest
    )
