"""auth: login lockout columns on users; token_revocations."""

import sqlalchemy as sa
from alembic import op

from app.kernel.migrations import schema_of

revision: str = "0002"
down_revision: str | None = "0001"

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "token_revocations",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=10), nullable=False),
        sa.Column("user_id", sa.String(length=40)),
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.Column("revoked_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_token_revocations")),
        schema=schema_of("token_revocations"),
    )
    op.create_index(
        op.f("ix_token_revocations_expires_at"),
        "token_revocations",
        ["expires_at"],
        schema=schema_of("token_revocations"),
    )
    with op.batch_alter_table("users", schema=schema_of("users")) as batch_op:
        batch_op.add_column(
            sa.Column("failed_logins", sa.Integer(), server_default="0", nullable=False)
        )
        batch_op.add_column(sa.Column("locked_until", TS))


def downgrade() -> None:
    with op.batch_alter_table("users", schema=schema_of("users")) as batch_op:
        batch_op.drop_column("locked_until")
        batch_op.drop_column("failed_logins")
    op.drop_table("token_revocations", schema=schema_of("token_revocations"))
