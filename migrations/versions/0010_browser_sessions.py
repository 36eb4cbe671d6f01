"""auth: browser_sessions, the web console's server-side sessions (ADR 0014).

The cookie carries a secret; the table keeps its SHA-256 digest. Revocations are entries in
token_revocations (kind `session`).
"""

import sqlalchemy as sa
from alembic import op

from app.kernel.migrations import ref, schema_of

revision: str = "0010"
down_revision: str | None = "0009"

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    schema = schema_of("browser_sessions")
    op.create_table(
        "browser_sessions",
        sa.Column("session_id", sa.String(length=64), nullable=False),
        sa.Column(
            "user_id",
            sa.String(length=40),
            sa.ForeignKey(ref("users.user_id"), name=op.f("fk_browser_sessions_user_id_users")),
            nullable=False,
        ),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=False),
        sa.Column("ip_address", sa.String(length=45)),
        sa.Column("user_agent", sa.String(length=255)),
        sa.PrimaryKeyConstraint("session_id", name=op.f("pk_browser_sessions")),
        schema=schema,
    )
    op.create_index(
        op.f("ix_browser_sessions_user_id"), "browser_sessions", ["user_id"], schema=schema
    )
    op.create_index(
        op.f("ix_browser_sessions_expires_at"), "browser_sessions", ["expires_at"], schema=schema
    )


def downgrade() -> None:
    schema = schema_of("browser_sessions")
    op.drop_index(op.f("ix_browser_sessions_expires_at"), "browser_sessions", schema=schema)
    op.drop_index(op.f("ix_browser_sessions_user_id"), "browser_sessions", schema=schema)
    op.drop_table("browser_sessions", schema=schema)
