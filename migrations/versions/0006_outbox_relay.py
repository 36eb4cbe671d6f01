"""kernel: the outbox gets its order (seq) and delivery state; the relay's lease table.

The outbox is rebuilt (a new primary key cannot be added in place on SQLite): the rows are
copied oldest first, so `seq` follows their creation order.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from app.kernel.migrations import schema_of

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)
SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
COMMON = (
    "event_id",
    "event_type",
    "aggregate_id",
    "payload",
    "created_at",
    "published_at",
    "attempts",
)


def _outbox(name: str, *, new: bool) -> sa.Table:
    """The outbox table in its new (seq) or old (event_id key) shape, under `name`."""
    schema = schema_of("event_outbox")
    columns = [
        sa.Column("event_type", sa.String(length=100), nullable=False),
        sa.Column("aggregate_id", sa.String(length=40), nullable=True),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("published_at", TS, nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
    ]
    if new:
        return op.create_table(
            name,
            sa.Column("seq", SEQ, sa.Identity(), nullable=False),
            sa.Column("event_id", sa.String(length=40), nullable=False),
            *columns,
            sa.Column("stream_ref", sa.String(length=100), nullable=True),
            sa.Column("confirmed_at", TS, nullable=True),
            sa.PrimaryKeyConstraint("seq", name="pk_event_outbox"),
            sa.UniqueConstraint("event_id", name="uq_event_outbox_event_id"),
            schema=schema,
            sqlite_autoincrement=True,
        )
    return op.create_table(
        name,
        sa.Column("event_id", sa.String(length=40), nullable=False),
        *columns,
        sa.PrimaryKeyConstraint("event_id", name="pk_event_outbox"),
        schema=schema,
    )


def _swap(*, new: bool) -> None:
    """Rename the outbox aside, create it in the other shape, copy the rows, drop the old."""
    schema = schema_of("event_outbox")
    old_index = "ix_event_outbox_published_at_created_at"
    if new:
        op.drop_index(old_index, table_name="event_outbox", schema=schema)
    else:
        op.drop_index("ix_event_outbox_confirmed_at_seq", table_name="event_outbox", schema=schema)
        op.drop_index("ix_event_outbox_published_at_seq", table_name="event_outbox", schema=schema)
    op.rename_table("event_outbox", "event_outbox_old", schema=schema)
    if op.get_bind().dialect.name == "postgresql":
        # The old primary key's index keeps its name through the rename; free the name.
        op.drop_constraint("pk_event_outbox", "event_outbox_old", type_="primary", schema=schema)
        if not new:
            op.drop_constraint(
                "uq_event_outbox_event_id", "event_outbox_old", type_="unique", schema=schema
            )
    target = _outbox("event_outbox", new=new)
    old_columns = COMMON if new else (*COMMON, "seq")
    old = sa.table("event_outbox_old", *(sa.column(name) for name in old_columns), schema=schema)
    rows = sa.select(*(old.c[name] for name in COMMON)).order_by(
        *((old.c.created_at, old.c.event_id) if new else (old.c.seq,))
    )
    op.execute(target.insert().from_select(list(COMMON), rows))
    op.drop_table("event_outbox_old", schema=schema)
    if new:
        op.create_index(
            "ix_event_outbox_published_at_seq",
            "event_outbox",
            ["published_at", "seq"],
            schema=schema,
        )
        op.create_index(
            "ix_event_outbox_confirmed_at_seq",
            "event_outbox",
            ["confirmed_at", "seq"],
            schema=schema,
        )
    else:
        op.create_index(old_index, "event_outbox", ["published_at", "created_at"], schema=schema)


def upgrade() -> None:
    _swap(new=True)
    op.create_table(
        "event_leases",
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("holder", sa.String(length=100), nullable=False),
        sa.Column("expires_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_event_leases")),
        schema=schema_of("event_leases"),
    )


def downgrade() -> None:
    op.drop_table("event_leases", schema=schema_of("event_leases"))
    _swap(new=False)
