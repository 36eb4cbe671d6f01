"""Admin's business logic. Plain Python: takes a Session, never commits.

Statistics are SQL aggregates; lists use keyset pagination on indexed columns; auth's
tables are read through `readmodels` (admin may read them, never write them).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, delete, func, insert, literal, select
from sqlalchemy.orm import Session

from app.admin.events import AuditRecorded
from app.admin.models import AuditLog, AuditLogArchive
from app.admin.readmodels import licenses, users
from app.kernel.db import UtcDateTime, utcnow
from app.kernel.emails import normalise_email
from app.kernel.events import Envelope
from app.kernel.pagination import newest_first, page_of

AUDIT_RECORDED = AuditRecorded.TYPE
AUDIT_FIELDS = ("log_id", "user_id", "actor_id", "action", "details", "ip_address")


def audit_entry(event: AuditRecorded) -> AuditLog:
    """The entry an `audit.recorded` event carries, as a row (not yet in any session)."""
    return AuditLog(
        **{name: getattr(event, name) for name in AUDIT_FIELDS}, timestamp=event.timestamp
    )


def apply_audit_event(session: Session, envelope: Envelope) -> None:
    """Write the entry an `audit.recorded` event carries (admin's consumer, phase 3)."""
    session.add(audit_entry(AuditRecorded.from_payload(envelope.payload)))


# --- statistics ----------------------------------------------------------------------


def user_stats(session: Session, now: datetime | None = None) -> list[dict[str, Any]]:
    """Users per plan, with how many joined in the last 30 days (one GROUP BY)."""
    since = (now or utcnow()) - timedelta(days=30)
    new = func.sum(case((users.c.created_at >= since, 1), else_=0))
    stmt = (
        select(users.c.plan, func.count().label("user_count"), new.label("new_users_30d"))
        .group_by(users.c.plan)
        .order_by(users.c.plan)
    )
    return [
        {"plan": r.plan, "user_count": r.user_count, "new_users_30d": int(r.new_users_30d or 0)}
        for r in session.execute(stmt)
    ]


def license_stats(session: Session) -> list[dict[str, Any]]:
    """Licenses per status, with the oldest and newest issue time (one GROUP BY)."""
    stmt = (
        select(
            licenses.c.status,
            func.count().label("count"),
            func.min(licenses.c.created_at).label("oldest"),
            func.max(licenses.c.created_at).label("newest"),
        )
        .group_by(licenses.c.status)
        .order_by(licenses.c.status)
    )
    return [dict(r._mapping) for r in session.execute(stmt)]


# --- users ---------------------------------------------------------------------------


def is_admin(session: Session, user_id: str) -> bool:
    """True when the user exists and currently has the admin role."""
    return session.scalar(select(users.c.role).where(users.c.user_id == user_id)) == "admin"


def _prefix_range(column: Any, prefix: str) -> Any:
    """`column` starts with `prefix`, written as a range so the B-tree index serves it."""
    # The bound is the prefix with its last character moved one code point on. The last
    # code point cannot move, so trailing ones are dropped first (none left: no bound),
    # and the surrogates, which no stored string holds, are stepped over.
    stem = prefix.rstrip(chr(sys.maxunicode))
    if not stem:
        return column >= prefix
    following = ord(stem[-1]) + 1
    if 0xD800 <= following <= 0xDFFF:
        following = 0xE000
    return and_(column >= prefix, column < stem[:-1] + chr(following))


USER_COLUMNS = (
    users.c.user_id,
    users.c.email,
    users.c.plan,
    users.c.role,
    users.c.created_at,
    users.c.failed_logins,
    users.c.locked_until,
)


def list_users(
    session: Session,
    *,
    email_prefix: str | None,
    plan: str | None,
    limit: int,
    after: tuple[datetime, str] | None,
) -> tuple[list[dict[str, Any]], str | None]:
    """Users, newest first, filtered by email prefix and plan; keyset (created_at, user_id)."""
    stmt = select(*USER_COLUMNS)
    prefix = normalise_email(email_prefix or "")  # as emails are stored
    if prefix:
        stmt = stmt.where(_prefix_range(users.c.email, prefix))
    if plan:
        stmt = stmt.where(users.c.plan == plan)
    stmt = newest_first(stmt, (users.c.created_at, users.c.user_id), after, limit)
    rows = [dict(r._mapping) for r in session.execute(stmt)]
    return page_of(rows, limit, lambda u: (u["created_at"], u["user_id"]))


LICENSE_COLUMNS = (  # the fields of auth's one license shape (auth.api.LicenseOut)
    licenses.c.license_id,
    licenses.c.user_id,
    licenses.c.client_id,
    licenses.c.status,
    licenses.c.created_at,
    licenses.c.expires_at,
    licenses.c.version,
)


def user_with_licenses(session: Session, user_id: str) -> dict[str, Any] | None:
    """One user and all their licenses, in a single LEFT JOIN query."""
    stmt = (
        select(*USER_COLUMNS, *[c.label(f"license_{c.name}") for c in LICENSE_COLUMNS])
        .select_from(users.outerjoin(licenses, licenses.c.user_id == users.c.user_id))
        .where(users.c.user_id == user_id)
        .order_by(licenses.c.license_id.desc())
    )
    rows = session.execute(stmt).all()
    if not rows:
        return None
    first = rows[0]._mapping
    user = {c.name: first[c.name] for c in USER_COLUMNS}
    user["licenses"] = [
        {c.name: r._mapping[f"license_{c.name}"] for c in LICENSE_COLUMNS}
        for r in rows
        if r._mapping["license_license_id"] is not None
    ]
    return user


# --- audit search --------------------------------------------------------------------


@dataclass(frozen=True)
class AuditFilter:
    user_id: str | None = None
    action: str | None = None
    since: datetime | None = None
    until: datetime | None = None


def search_audit(
    session: Session, filters: AuditFilter, *, limit: int, after: tuple[datetime, str] | None
) -> tuple[list[AuditLog], str | None]:
    """Audit entries newest first. The keyset (timestamp, log_id) keeps pages stable while
    new entries arrive: they sort before the cursor, never into a later page."""
    stmt = select(AuditLog)
    if filters.user_id:
        stmt = stmt.where(AuditLog.user_id == filters.user_id)
    if filters.action:
        stmt = stmt.where(AuditLog.action == filters.action)
    if filters.since:
        stmt = stmt.where(AuditLog.timestamp >= filters.since)
    if filters.until:
        stmt = stmt.where(AuditLog.timestamp < filters.until)
    stmt = newest_first(stmt, (AuditLog.timestamp, AuditLog.log_id), after, limit)
    rows = session.scalars(stmt).all()
    return page_of(rows, limit, lambda e: (e.timestamp, e.log_id))


# --- archive -------------------------------------------------------------------------

ARCHIVED_COLUMNS = ("log_id", "user_id", "actor_id", "action", "details", "ip_address", "timestamp")


def archive_batch(session: Session, cutoff: datetime, batch_size: int) -> int:
    """Move up to `batch_size` entries older than `cutoff` to the archive (inside the
    caller's transaction: copy and delete commit together). Returns how many moved."""
    ids = list(
        session.scalars(
            select(AuditLog.log_id)
            .where(AuditLog.timestamp < cutoff)
            .order_by(AuditLog.timestamp, AuditLog.log_id)
            .limit(batch_size)
        )
    )
    if not ids:
        return 0
    archived_at = literal(utcnow(), UtcDateTime)
    source = select(*[getattr(AuditLog, c) for c in ARCHIVED_COLUMNS], archived_at).where(
        AuditLog.log_id.in_(ids)
    )
    session.execute(insert(AuditLogArchive).from_select([*ARCHIVED_COLUMNS, "archived_at"], source))
    session.execute(
        delete(AuditLog)
        .where(AuditLog.log_id.in_(ids))
        .execution_options(synchronize_session=False)
    )
    return len(ids)
