"""admin: audit_logs_archive; audit search indexes that also give the order."""

import sqlalchemy as sa
from alembic import op

from app.kernel.migrations import schema_of

revision: str = "0004"
down_revision: str | None = "0003"

TS = sa.DateTime(timezone=True)
ARCHIVE_INDEXES = {
    "ix_audit_logs_archive_timestamp": ["timestamp"],
    "ix_audit_logs_archive_user_id": ["user_id"],
}
# Newest-first pages, overall or per user or per action, straight from an index...
PAGE_INDEXES = {
    "ix_audit_logs_timestamp_log_id": ["timestamp", "log_id"],
    "ix_audit_logs_user_id_timestamp_log_id": ["user_id", "timestamp", "log_id"],
    "ix_audit_logs_action_timestamp_log_id": ["action", "timestamp", "log_id"],
}
# ...and the single-column ones they replace are prefixes of those.
PREFIX_INDEXES = {
    "ix_audit_logs_action": ["action"],
    "ix_audit_logs_timestamp": ["timestamp"],
    "ix_audit_logs_user_id": ["user_id"],
}


def upgrade() -> None:
    schema = schema_of("audit_logs")  # admin's schema, the archive's too
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
        schema=schema,
    )
    for name, columns in ARCHIVE_INDEXES.items():
        op.create_index(op.f(name), "audit_logs_archive", columns, schema=schema)
    for name, columns in PAGE_INDEXES.items():
        op.create_index(name, "audit_logs", columns, schema=schema)
    for name in PREFIX_INDEXES:
        op.drop_index(name, table_name="audit_logs", schema=schema)


def downgrade() -> None:
    schema = schema_of("audit_logs")
    for name, columns in reversed(PREFIX_INDEXES.items()):
        op.create_index(name, "audit_logs", columns, schema=schema)
    for name in reversed(PAGE_INDEXES):
        op.drop_index(name, table_name="audit_logs", schema=schema)
    op.drop_table("audit_logs_archive", schema=schema)
