"""auth: login_throttles; stored emails re-normalised to the one canonical form.

login_throttles counts failed logins per account and address, and per account. The canonical
form of an email is NFKC, case-folded, with its IDNA domain.

Emails were stored trimmed, NFC and lower-cased (a registration's domain in its IDNA
Unicode form). The canonical form differs only for addresses with compatibility
characters (fullwidth letters), characters that case-fold differently from lower-casing
(ß) or a domain in another IDNA form; such rows are rewritten, so their owners log in as
they type. A row whose canonical form another row already has (a look-alike registered
beside the original) is left as it is and named in a warning: which of the two is the real
person is an operator's decision, not a migration's. The way back keeps the emails as they
are (the canonical form is a valid old form too).
"""

import logging

import sqlalchemy as sa
from alembic import op

from app.kernel.emails import normalise_email
from app.kernel.migrations import schema_of

revision: str = "0008"
down_revision: str | None = "0007"

TS = sa.DateTime(timezone=True)
log = logging.getLogger("alembic.runtime.migration")


def upgrade() -> None:
    schema = schema_of("login_throttles")
    op.create_table(
        "login_throttles",
        sa.Column("account", sa.String(length=64), nullable=False),
        sa.Column("address", sa.String(length=45), nullable=False),
        sa.Column("user_id", sa.String(length=40)),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("window_started_at", TS, nullable=False),
        sa.Column("last_failure_at", TS, nullable=False),
        sa.Column("lockouts", sa.Integer(), nullable=False),
        sa.Column("locked_until", TS),
        sa.PrimaryKeyConstraint("account", "address", name=op.f("pk_login_throttles")),
        schema=schema,
    )
    op.create_index(
        op.f("ix_login_throttles_user_id"), "login_throttles", ["user_id"], schema=schema
    )
    _renormalise_emails()


def _renormalise_emails() -> None:
    users = sa.table(
        "users",
        sa.column("user_id", sa.String),
        sa.column("email", sa.String),
        schema=schema_of("users"),
    )
    bind = op.get_bind()
    rows = bind.execute(sa.select(users.c.user_id, users.c.email)).all()
    taken = {email for _, email in rows}
    for user_id, email in rows:
        canonical = normalise_email(email)
        if canonical == email:
            continue
        if canonical in taken:
            log.warning(
                "users %s: %r normalises to %r, which another account has; left as it is",
                user_id,
                email,
                canonical,
            )
            continue
        bind.execute(users.update().where(users.c.user_id == user_id).values(email=canonical))
        taken.discard(email)
        taken.add(canonical)


def downgrade() -> None:
    schema = schema_of("login_throttles")
    op.drop_index(op.f("ix_login_throttles_user_id"), table_name="login_throttles", schema=schema)
    op.drop_table("login_throttles", schema=schema)
