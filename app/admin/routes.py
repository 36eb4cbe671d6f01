"""admin's HTTP API. Every route requires a valid access token of a user whose role is
admin — checked once for the whole blueprint, so a new route cannot forget it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from flask import current_app, request
from flask_jwt_extended import get_jwt

from app.admin import bp, service
from app.admin.schemas import (
    AuditPage,
    AuditQuery,
    BatchStatusIn,
    BatchStatusOut,
    LicensePatchIn,
    LicenseStatsOut,
    UserDetailOut,
    UserPage,
    UserQuery,
    UserStatsOut,
)
from app.auth import api as auth_api
from app.http.blueprints import admin_only
from app.http.limits import client_ip
from app.http.openapi import request_headers, response_headers
from app.http.routes import ADMIN, Endpoints, keyset, page
from app.kernel.db import get_session, transaction
from app.kernel.errors import NotFound, ProblemError


class PreconditionRequired(ProblemError):
    status, code = 428, "precondition_required"


class PreconditionFailed(ProblemError):
    status, code = 412, "version_conflict"


admin_only(bp, service.is_admin)
api = Endpoints(bp)


@bp.get("/stats/users")
@api.endpoint(ADMIN, "admin_user_stats")
@api.io(output=UserStatsOut)
def user_stats() -> Any:
    """Users per plan, with new users in the last 30 days"""
    return {"items": service.user_stats(get_session())}


@bp.get("/stats/licenses")
@api.endpoint(ADMIN, "admin_license_stats")
@api.io(output=LicenseStatsOut)
def license_stats() -> Any:
    """Licenses per status, with the oldest and newest"""
    return {"items": service.license_stats(get_session())}


@bp.get("/users")
@api.endpoint(ADMIN, "admin_list_users", problems=(422,))
@api.io(query=UserQuery, output=UserPage)
def list_users(query_data: UserQuery) -> Any:
    """Users, newest first; filter by email prefix and plan"""
    found = service.list_users(
        get_session(),
        email_prefix=query_data.email,
        plan=query_data.plan,
        **keyset(query_data, datetime, str),
    )
    return page(found)


@bp.get("/users/<user_id>")
@api.endpoint(ADMIN, "admin_get_user", problems=(404,))
@api.io(output=UserDetailOut)
def get_user(user_id: str) -> Any:
    """One user with all their licenses"""
    user = service.user_with_licenses(get_session(), user_id)
    if user is None:
        raise NotFound("No such user.", code="user_not_found")
    return user


@bp.post("/users/<user_id>/unlock")
@api.endpoint(ADMIN, "admin_unlock_user", problems=(404,))
@api.io(output=UserDetailOut)
def unlock_user(user_id: str) -> Any:
    """Lift a user's login locks (every address, and the account): audited"""
    session = get_session()
    with transaction(session):
        unlocked = auth_api.unlock_user(
            session, user_id, current_app.config, actor_id=get_jwt()["sub"], ip=client_ip()
        )
    if unlocked is None:
        raise NotFound("No such user.", code="user_not_found")
    return service.user_with_licenses(session, user_id)


@bp.get("/audit-logs")
@api.endpoint(ADMIN, "admin_list_audit_logs", problems=(422,))
@api.io(query=AuditQuery, output=AuditPage)
def audit_logs(query_data: AuditQuery) -> Any:
    """Audit entries, newest first; filter by user, action and time"""
    filters = service.AuditFilter(
        user_id=query_data.user_id,
        action=query_data.action,
        since=query_data.since,
        until=query_data.until,
    )
    return page(service.search_audit(get_session(), filters, **keyset(query_data, datetime, str)))


# An ETag is the license's version, quoted; If-Match takes exactly one, never `*`.
ETAG = {
    "description": 'The license\'s version, e.g. "3": send it back as If-Match to change it',
    "required": True,
    "schema": {"type": "string", "pattern": r'^"[1-9][0-9]{0,8}"$'},
}


def _etag(version: int) -> dict[str, str]:
    return {"ETag": f'"{version}"'}


@bp.get("/licenses/<license_id>")
@api.endpoint(ADMIN, "admin_get_license", problems=(404,))
@api.io(output=auth_api.LicenseOut)
@response_headers(200, ETag=ETAG)
def get_license(license_id: str) -> Any:
    """One license, with its version as ETag"""
    license_ = auth_api.get_license(get_session(), license_id)
    if license_ is None:
        raise auth_api.LicenseNotFound()
    return license_, 200, _etag(license_.version)


def _expected_version() -> int:
    header = request.headers.get("If-Match")
    if header is None or header.strip() == "*":
        raise PreconditionRequired(
            'Send If-Match with the ETag from GET (e.g. If-Match: "3") to change a license.'
        )
    tags = [t.strip() for t in header.split(",")]
    if len(tags) != 1 or not (tags[0].startswith('"') and tags[0].endswith('"')):
        raise PreconditionFailed("If-Match must carry exactly one ETag from this API.")
    try:
        return int(tags[0].strip('"'))
    except ValueError:
        raise PreconditionFailed("If-Match does not match the license's ETag.") from None


@bp.patch("/licenses/<license_id>")
@api.endpoint(ADMIN, "admin_update_license", problems=(404, 409, 412, 422, 428))
@api.io(body=LicensePatchIn, output=auth_api.LicenseOut)
@request_headers(
    {
        "name": "If-Match",
        "required": True,
        "description": 'The ETag from GET, e.g. "3": a change made meanwhile is a 412.',
        "schema": ETAG["schema"],
    }
)
@response_headers(200, ETag=ETAG)
def patch_license(license_id: str, json_data: LicensePatchIn) -> Any:
    """Change a license's status (If-Match required)"""
    expected = _expected_version()
    session = get_session()
    with transaction(session):  # a stale version is auth's VersionConflict: 412
        license_ = auth_api.update_license_status(
            session,
            license_id,
            json_data.status,
            expected,
            actor_id=get_jwt()["sub"],
            ip=client_ip(),
        )
    return license_, 200, _etag(license_.version)


@bp.post("/licenses/batch-status")
@api.endpoint(ADMIN, "admin_batch_license_status", problems=(404, 409, 412, 422))
@api.io(body=BatchStatusIn, output=BatchStatusOut)
def batch_status(json_data: BatchStatusIn) -> Any:
    """Change up to 1000 licenses' status: all or nothing"""
    updates = [auth_api.StatusUpdate(u.license_id, u.status, u.version) for u in json_data.updates]
    session = get_session()
    with transaction(session):
        changed = auth_api.batch_update_license_statuses(
            session, updates, actor_id=get_jwt()["sub"], ip=client_ip()
        )
    return {"items": changed}
