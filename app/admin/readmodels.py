"""The columns of auth's tables that admin reads (admin may read them: docs/ownership.md).

Admin may not import auth's models, so it declares here, as tables of a private MetaData
(not the models'), exactly what it reads, in the owner's schema. A test checks every column
and the schema against the real tables, so a change in auth that breaks admin fails the
build, not production.
"""

from __future__ import annotations

from sqlalchemy import Column, Integer, MetaData, String, Table

from app.kernel.db import UtcDateTime

AUTH = "auth"  # the owner's schema (phase 2); flat layouts translate it away
# Not the models' metadata: migrations and `flask db check` never see these.
_metadata = MetaData()

users = Table(
    "users",
    _metadata,
    Column("user_id", String),
    Column("email", String),
    Column("plan", String),
    Column("role", String),
    Column("failed_logins", Integer),
    Column("locked_until", UtcDateTime),
    Column("created_at", UtcDateTime),
    Column("updated_at", UtcDateTime),
    schema=AUTH,
)

licenses = Table(
    "licenses",
    _metadata,
    Column("license_id", String),
    Column("user_id", String),
    Column("client_id", String),
    Column("status", String),
    Column("created_at", UtcDateTime),
    Column("updated_at", UtcDateTime),
    Column("expires_at", UtcDateTime),
    Column("version", Integer),
    schema=AUTH,
)

subscriptions = Table(
    "subscriptions",
    _metadata,
    Column("subscription_id", String),
    Column("user_id", String),
    Column("plan", String),
    Column("status", String),
    Column("seats", Integer),
    Column("started_at", UtcDateTime),
    Column("renews_at", UtcDateTime),
    schema=AUTH,
)

READ_MODELS = (users, licenses, subscriptions)
