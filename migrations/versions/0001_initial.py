"""Kernel tables (event_outbox, event_inbox), auth's users, admin's audit_logs."""

import sqlalchemy as sa
from alembic import op

from app.kernel.migrations import schema_of

revision: str = "0001"
down_revision: str | None = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "event_outbox",
        sa.Column("event_id", sa.String(length=40), nullable=False),
        sa.Column("event_type", sa.String(length=100), nullable=False),
        sa.Column("aggregate_id", sa.String(length=40)),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("published_at", TS),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_event_outbox")),
        schema=schema_of("event_outbox"),
    )
    op.create_index(
        "ix_event_outbox_published_at_created_at",
        "event_outbox",
        ["published_at", "created_at"],
        schema=schema_of("event_outbox"),
    )
    op.create_table(
        "event_inbox",
        sa.Column("consumer", sa.String(length=50), nullable=False),
        sa.Column("event_id", sa.String(length=40), nullable=False),
        sa.Column("processed_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("consumer", "event_id", name=op.f("pk_event_inbox")),
        schema=schema_of("event_inbox"),
    )
    op.create_table(
        "users",
        sa.Column("user_id", sa.String(length=40), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("password_hash", sa.String(length=255), nullable=False),
        sa.Column("plan", sa.String(length=32), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_users")),
        sa.UniqueConstraint("email", name=op.f("uq_users_email")),
        schema=schema_of("users"),
    )
    op.create_index(op.f("ix_users_created_at"), "users", ["created_at"], schema=schema_of("users"))
    op.create_index(
        "ix_users_plan_created_at", "users", ["plan", "created_at"], schema=schema_of("users")
    )
    op.create_table(
        "audit_logs",
        sa.Column("log_id", sa.String(length=40), nullable=False),
        sa.Column("user_id", sa.String(length=40)),
        sa.Column("actor_id", sa.String(length=40)),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("details", sa.JSON()),
        sa.Column("ip_address", sa.String(length=45)),
        sa.Column("timestamp", TS, nullable=False),
        sa.PrimaryKeyConstraint("log_id", name=op.f("pk_audit_logs")),
        schema=schema_of("audit_logs"),
    )
    op.create_index(
        op.f("ix_audit_logs_action"), "audit_logs", ["action"], schema=schema_of("audit_logs")
    )
    op.create_index(
        op.f("ix_audit_logs_timestamp"), "audit_logs", ["timestamp"], schema=schema_of("audit_logs")
    )
    op.create_index(
        op.f("ix_audit_logs_user_id"), "audit_logs", ["user_id"], schema=schema_of("audit_logs")
    )


def downgrade() -> None:
    op.drop_table("audit_logs", schema=schema_of("audit_logs"))
    op.drop_table("users", schema=schema_of("users"))
    op.drop_table("event_inbox", schema=schema_of("event_inbox"))
    op.drop_table("event_outbox", schema=schema_of("event_outbox"))
