"""admin: audit_logs_archive; audit search indexes that also give the order."""

import sqlalchemy as sa
from alembic import op

from app.kernel.migrations import schema_of

revision: str = "0004"
down_revision: str | None = "0003"

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "audit_logs_archive",
        sa.Column("log_id", sa.String(length=40), nullable=False),
        sa.Column("user_id", sa.String(length=40)),
        sa.Column("actor_id", sa.String(length=40)),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("details", sa.JSON()),
        sa.Column("ip_address", sa.String(length=45)),
        sa.Column("timestamp", TS, nullable=False),
        sa.Column("archived_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("log_id", name=op.f("pk_audit_logs_archive")),
        schema=schema_of("audit_logs_archive"),
    )
    op.create_index(
        op.f("ix_audit_logs_archive_timestamp"),
        "audit_logs_archive",
        ["timestamp"],
        schema=schema_of("audit_logs_archive"),
    )
    op.create_index(
        op.f("ix_audit_logs_archive_user_id"),
        "audit_logs_archive",
        ["user_id"],
        schema=schema_of("audit_logs_archive"),
    )
    # Newest-first pages, overall or per user or per action, straight from an index.
    op.create_index(
        "ix_audit_logs_timestamp_log_id",
        "audit_logs",
        ["timestamp", "log_id"],
        schema=schema_of("audit_logs"),
    )
    op.create_index(
        "ix_audit_logs_user_id_timestamp_log_id",
        "audit_logs",
        ["user_id", "timestamp", "log_id"],
        schema=schema_of("audit_logs"),
    )
    op.create_index(
        "ix_audit_logs_action_timestamp_log_id",
        "audit_logs",
        ["action", "timestamp", "log_id"],
        schema=schema_of("audit_logs"),
    )
    # The single-column ones are prefixes of those.
    op.drop_index("ix_audit_logs_action", table_name="audit_logs", schema=schema_of("audit_logs"))
    op.drop_index(
        "ix_audit_logs_timestamp", table_name="audit_logs", schema=schema_of("audit_logs")
    )
    op.drop_index("ix_audit_logs_user_id", table_name="audit_logs", schema=schema_of("audit_logs"))


def downgrade() -> None:
    op.create_index(
        "ix_audit_logs_user_id", "audit_logs", ["user_id"], schema=schema_of("audit_logs")
    )
    op.create_index(
        "ix_audit_logs_timestamp", "audit_logs", ["timestamp"], schema=schema_of("audit_logs")
    )
    op.create_index(
        "ix_audit_logs_action", "audit_logs", ["action"], schema=schema_of("audit_logs")
    )
    op.drop_index(
        "ix_audit_logs_action_timestamp_log_id",
        table_name="audit_logs",
        schema=schema_of("audit_logs"),
    )
    op.drop_index(
        "ix_audit_logs_user_id_timestamp_log_id",
        table_name="audit_logs",
        schema=schema_of("audit_logs"),
    )
    op.drop_index(
        "ix_audit_logs_timestamp_log_id", table_name="audit_logs", schema=schema_of("audit_logs")
    )
    op.drop_table("audit_logs_archive", schema=schema_of("audit_logs_archive"))
