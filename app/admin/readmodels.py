"""The columns of auth's tables that admin reads (DESIGN §2: admin may read them).

Admin may not import auth's models, so it declares here, as lightweight table clauses
outside the metadata, exactly what it reads. A test checks every column against the real
tables, so a change in auth that breaks admin fails the build, not production.
"""

from __future__ import annotations

from sqlalchemy import Integer, String, column, table

from app.kernel.db import UtcDateTime

users = table(
    "users",
    column("user_id", String),
    column("email", String),
    column("plan", String),
    column("role", String),
    column("failed_logins", Integer),
    column("locked_until", UtcDateTime),
    column("created_at", UtcDateTime),
    column("updated_at", UtcDateTime),
)

licenses = table(
    "licenses",
    column("license_id", String),
    column("user_id", String),
    column("client_id", String),
    column("status", String),
    column("created_at", UtcDateTime),
    column("updated_at", UtcDateTime),
    column("expires_at", UtcDateTime),
    column("version", Integer),
)

subscriptions = table(
    "subscriptions",
    column("subscription_id", String),
    column("user_id", String),
    column("plan", String),
    column("status", String),
    column("seats", Integer),
    column("started_at", UtcDateTime),
    column("renews_at", UtcDateTime),
)

READ_MODELS = (users, licenses, subscriptions)
