"""kernel: the outbox stores each event's envelope; webhooks: endpoints and deliveries.

The envelope: payload version, aggregate type and version. Webhooks: the endpoints, the
events they receive and their deliveries.

Events already in the outbox get payload version 1 and no aggregate type or version.
"""

import sqlalchemy as sa
from alembic import op

from app.kernel.migrations import schema_of

revision: str = "0011"
down_revision: str | None = "0010"

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    schema = schema_of("event_outbox")
    op.add_column(
        "event_outbox",
        sa.Column("event_version", sa.Integer(), server_default="1", nullable=False),
        schema=schema,
    )
    op.add_column("event_outbox", sa.Column("aggregate_type", sa.String(length=40)), schema=schema)
    op.add_column("event_outbox", sa.Column("aggregate_version", sa.Integer()), schema=schema)
    op.create_table(
        "webhook_endpoints",
        sa.Column("webhook_id", sa.String(length=40), nullable=False),
        sa.Column("url", sa.String(length=2048), nullable=False),
        sa.Column("description", sa.String(length=500), nullable=False),
        sa.Column("events", sa.JSON(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("disabled_reason", sa.String(length=200)),
        sa.Column("secret", sa.Text(), nullable=False),
        sa.Column("previous_secret", sa.Text()),
        sa.Column("previous_secret_expires_at", TS),
        sa.Column("failing_since", TS),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("webhook_id", name=op.f("pk_webhook_endpoints")),
        schema=schema_of("webhook_endpoints"),
    )
    deliveries = schema_of("webhook_deliveries")
    op.create_table(
        "webhook_deliveries",
        sa.Column("delivery_id", sa.String(length=40), nullable=False),
        sa.Column("webhook_id", sa.String(length=40), nullable=False),
        sa.Column("event_id", sa.String(length=40), nullable=False),
        sa.Column("event_type", sa.String(length=100), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", TS, nullable=False),
        sa.Column("lease_until", TS),
        sa.Column("leased_by", sa.String(length=100)),
        sa.Column("last_attempt_at", TS),
        sa.Column("last_status_code", sa.Integer()),
        sa.Column("last_latency_ms", sa.Integer()),
        sa.Column("last_error", sa.String(length=500)),
        sa.Column("last_response", sa.String(length=1000)),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("delivery_id", name=op.f("pk_webhook_deliveries")),
        schema=deliveries,
    )
    op.create_index(
        "ix_webhook_deliveries_due",
        "webhook_deliveries",
        ["status", "next_attempt_at"],
        schema=deliveries,
    )
    op.create_index(
        "ix_webhook_deliveries_endpoint",
        "webhook_deliveries",
        ["webhook_id", "created_at", "delivery_id"],
        schema=deliveries,
    )


def downgrade() -> None:
    op.drop_table("webhook_deliveries", schema=schema_of("webhook_deliveries"))
    op.drop_table("webhook_endpoints", schema=schema_of("webhook_endpoints"))
    with op.batch_alter_table("event_outbox", schema=schema_of("event_outbox")) as batch:
        batch.drop_column("aggregate_version")
        batch.drop_column("aggregate_type")
        batch.drop_column("event_version")
