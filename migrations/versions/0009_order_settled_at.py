"""orders: settled_at, when an order's payment was settled (purchase or renewal).

The order a subscription's terms come from is its latest settled one (ADR 0006); order ids
follow the claim, not the settlement, so they cannot say which.
"""

import sqlalchemy as sa
from alembic import op

from app.kernel.migrations import schema_of

revision: str = "0009"
down_revision: str | None = "0008"


def upgrade() -> None:
    schema = schema_of("orders")
    op.add_column("orders", sa.Column("settled_at", sa.DateTime(timezone=True)), schema=schema)
    # Paid (or since cancelled) orders were settled when they were last updated as paid.
    orders = sa.table(
        "orders",
        sa.column("settled_at"),
        sa.column("updated_at"),
        sa.column("status"),
        schema=schema,
    )
    op.execute(
        orders.update()
        .where(orders.c.status.in_(("paid", "cancelling", "cancelled")))
        .values(settled_at=orders.c.updated_at)
    )


def downgrade() -> None:
    with op.batch_alter_table("orders", schema=schema_of("orders")) as batch:
        batch.drop_column("settled_at")
