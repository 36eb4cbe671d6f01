"""auth: licenses and subscriptions."""

import sqlalchemy as sa
from alembic import op

from app.kernel.migrations import ref, schema_of

revision: str = "0003"
down_revision: str | None = "0002"

TS = sa.DateTime(timezone=True)
LIVE_LICENSE = sa.text("status != 'revoked'")
LIVE_SUBSCRIPTION = sa.text("status IN ('active', 'past_due')")


def upgrade() -> None:
    op.create_table(
        "subscriptions",
        sa.Column("subscription_id", sa.String(length=40), nullable=False),
        sa.Column(
            "user_id",
            sa.String(length=40),
            sa.ForeignKey(ref("users.user_id"), name=op.f("fk_subscriptions_user_id_users")),
            nullable=False,
        ),
        sa.Column("plan", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("seats", sa.Integer(), nullable=False),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("renews_at", TS, nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("subscription_id", name=op.f("pk_subscriptions")),
        schema=schema_of("subscriptions"),
    )
    op.create_index(
        "ix_subscriptions_user_id_status",
        "subscriptions",
        ["user_id", "status"],
        schema=schema_of("subscriptions"),
    )
    op.create_index(
        "ix_subscriptions_renews_at",
        "subscriptions",
        ["renews_at"],
        schema=schema_of("subscriptions"),
    )
    op.create_index(
        "uq_subscriptions_user_id_live",
        "subscriptions",
        ["user_id"],
        unique=True,
        sqlite_where=LIVE_SUBSCRIPTION,
        postgresql_where=LIVE_SUBSCRIPTION,
        schema=schema_of("subscriptions"),
    )
    op.create_table(
        "licenses",
        sa.Column("license_id", sa.String(length=40), nullable=False),
        sa.Column(
            "user_id",
            sa.String(length=40),
            sa.ForeignKey(ref("users.user_id"), name=op.f("fk_licenses_user_id_users")),
            nullable=False,
        ),
        sa.Column("client_id", sa.String(length=128), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("license_id", name=op.f("pk_licenses")),
        schema=schema_of("licenses"),
    )
    op.create_index(
        "ix_licenses_user_id_status",
        "licenses",
        ["user_id", "status"],
        schema=schema_of("licenses"),
    )
    op.create_index(
        "ix_licenses_client_id", "licenses", ["client_id"], schema=schema_of("licenses")
    )
    op.create_index("ix_licenses_status", "licenses", ["status"], schema=schema_of("licenses"))
    op.create_index(
        "ix_licenses_expires_at", "licenses", ["expires_at"], schema=schema_of("licenses")
    )
    op.create_index(
        "uq_licenses_client_id_live",
        "licenses",
        ["client_id"],
        unique=True,
        sqlite_where=LIVE_LICENSE,
        postgresql_where=LIVE_LICENSE,
        schema=schema_of("licenses"),
    )


def downgrade() -> None:
    op.drop_table("licenses", schema=schema_of("licenses"))
    op.drop_table("subscriptions", schema=schema_of("subscriptions"))
