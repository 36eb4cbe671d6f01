"""orders: orders and idempotency_keys."""

import sqlalchemy as sa
from alembic import op

from app.kernel.migrations import schema_of

revision: str = "0005"
down_revision: str | None = "0004"

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "orders",
        sa.Column("order_id", sa.String(length=40), nullable=False),
        sa.Column("user_id", sa.String(length=40), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("plan", sa.String(length=32), nullable=False),
        sa.Column("seats", sa.Integer(), nullable=False),
        sa.Column("amount_cents", sa.Integer(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("payment_method", sa.String(length=128), nullable=False),
        sa.Column("charge_id", sa.String(length=64)),
        sa.Column("refund_id", sa.String(length=64)),
        sa.Column("failure_code", sa.String(length=64)),
        sa.Column("subscription_id", sa.String(length=40)),
        sa.Column("renewal_key", sa.String(length=100)),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("order_id", name=op.f("pk_orders")),
        sa.UniqueConstraint("renewal_key", name=op.f("uq_orders_renewal_key")),
        schema=schema_of("orders"),
    )
    op.create_index(
        "ix_orders_user_id_order_id", "orders", ["user_id", "order_id"], schema=schema_of("orders")
    )
    op.create_index(
        "ix_orders_subscription_id", "orders", ["subscription_id"], schema=schema_of("orders")
    )
    op.create_index("ix_orders_status", "orders", ["status"], schema=schema_of("orders"))
    op.create_table(
        "idempotency_keys",
        sa.Column("user_id", sa.String(length=40), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("order_id", sa.String(length=40), nullable=False),
        sa.Column("response_status", sa.Integer()),
        sa.Column("response_body", sa.JSON()),
        sa.Column("locked_until", TS, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("user_id", "key", name=op.f("pk_idempotency_keys")),
        schema=schema_of("idempotency_keys"),
    )
    op.create_index(
        op.f("ix_idempotency_keys_created_at"),
        "idempotency_keys",
        ["created_at"],
        schema=schema_of("idempotency_keys"),
    )
    op.create_index(
        op.f("ix_idempotency_keys_order_id"),
        "idempotency_keys",
        ["order_id"],
        schema=schema_of("idempotency_keys"),
    )


def downgrade() -> None:
    op.drop_table("idempotency_keys", schema=schema_of("idempotency_keys"))
    op.drop_table("orders", schema=schema_of("orders"))
