"""The operator commands' plumbing, and the kernel's own: `flask --app wsgi db …`,
`flask --app wsgi ownership …`, `flask --app wsgi outbox …`.

Each owner keeps its commands in its own `cli.py` (app/auth/cli.py, app/admin/cli.py,
app/orders/cli.py, app/backups_cli.py) and registers them from its `init_app`; they all use
`OperatorGroup`, `writes` and `parse_age` from here. Each command runs in an app context with
its own Session (closed with the context). A database that cannot be reached or refuses, or a
file that cannot be written, ends any command with one line naming the cause and exit code 2
(`OperatorGroup`), never a traceback.
"""

from __future__ import annotations

import functools
import logging
import sqlite3
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import click
import psycopg
from flask import current_app
from flask.cli import AppGroup
from sqlalchemy.exc import DBAPIError

from app.kernel import migrations
from app.kernel.db import get_database
from app.kernel.engines import sqlite_version_warning
from app.kernel.ownership import OPERATOR, acting_as, registry

log = logging.getLogger(__name__)


class OperatorError(click.ClickException):
    """The command cannot do its work for a reason outside the program (a database that
    cannot be reached or refuses, a path that cannot be written): one line, exit code 2."""

    exit_code = 2

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", file=file or sys.stderr)


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def _redacted(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def describe_failure(exc: BaseException, database_url: str | None) -> str:
    """One line naming why a command could not reach or use a database or a file."""
    cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    where = f" ({_redacted(database_url)})" if database_url else ""
    if isinstance(cause, sqlite3.Error):
        path = database_url.split("///", 1)[-1] if database_url else "the SQLite file"
        hint = (
            f" (does the folder of {path} exist, and may this user write there?)"
            if ("unable to open" in str(cause) and "does not exist" not in str(cause))
            or "readonly" in str(cause)
            else ""
        )
        return f"SQLite database {path}: {_one_line(str(cause))}{hint}"
    if isinstance(cause, OSError) and not isinstance(exc, DBAPIError):
        target = f" {cause.filename}" if cause.filename else ""
        return f"cannot use{target}: {cause.strerror or _one_line(str(cause))}"
    text = _one_line(str(cause))
    if isinstance(cause, psycopg.OperationalError):
        return f"cannot connect to the database{where}: {text}"
    return f"the database refused{where}: {text}"


class OperatorGroup(AppGroup):
    """A command group whose commands end with one line (exit code 2) when a database or a
    file is out of reach, instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (DBAPIError, psycopg.Error, sqlite3.Error, OSError) as exc:
            url = current_app.config.get("DATABASE_URL") if current_app else None
            raise OperatorError(describe_failure(exc, url)) from None


def _warn_about_sqlite() -> None:
    for url in _databases().values():
        warning = sqlite_version_warning(url)
        if warning:
            log.warning("%s", warning)
            return


def writes(command: Callable[..., Any] | None = None, *, at_start: bool = False) -> Any:
    """Marks a command that writes to the database: on an affected SQLite library it says
    so once per invocation — after the work (a failure stays one line), or at the start
    for a long-running command. Reading commands stay quiet."""

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(command)
        def run(*args: Any, **kwargs: Any) -> Any:
            if at_start:
                _warn_about_sqlite()
            result = command(*args, **kwargs)
            if not at_start:
                _warn_about_sqlite()
            return result

        return run

    return decorate(command) if command is not None else decorate


db_cli = OperatorGroup("db", help="Database migrations (alembic).")
ownership_cli = OperatorGroup("ownership", help="The table-ownership registry.")


def parse_age(text: str) -> timedelta:
    """'90d', '12h', '30m' or '45s' as a timedelta."""
    units = {"d": "days", "h": "hours", "m": "minutes", "s": "seconds"}
    number, unit = text[:-1], text[-1:].lower()
    if unit not in units or not number.isdigit() or int(number) <= 0:
        raise click.BadParameter(f"{text!r} is not an age like 90d, 12h, 30m or 45s")
    return timedelta(**{units[unit]: int(number)})


def _url() -> str:
    return current_app.config["DATABASE_URL"]


def _schemas() -> bool:
    return bool(current_app.config["DB_SCHEMAS"])


@contextmanager
def _alembic_errors(label: str = "") -> Iterator[None]:
    """Alembic's usage errors (unknown revision, database not at head) as CLI errors."""
    from alembic.util.exc import CommandError

    try:
        yield
    except CommandError as exc:
        raise click.ClickException(f"{label}{exc}") from None


def _databases() -> dict[str, str]:
    """Every database by name: `main`, then each module's own (phase 3), with its URL."""
    return {"main": _url(), **current_app.config["MODULE_DATABASE_URLS"]}


def _each_database() -> Iterator[tuple[str, str, str]]:
    """(name, url, label) per database; the label prefixes output only when there are several."""
    databases = _databases()
    for name, url in databases.items():
        yield name, url, (f"{name}: " if len(databases) > 1 else "")


def _current(name: str = "main") -> str:
    with acting_as(OPERATOR), get_database().engines()[name].connect() as conn:
        return ",".join(sorted(migrations.current_revisions(conn)))


@db_cli.command("upgrade")
@click.argument("revision", default="head")
@writes
def db_upgrade(revision: str) -> None:
    """Apply migrations up to REVISION (default: head), on every database of the app."""
    _migrate(migrations.upgrade, revision)


@db_cli.command("downgrade", context_settings={"ignore_unknown_options": True})
@click.argument("revision")
@writes
def db_downgrade(revision: str) -> None:
    """Revert migrations down to REVISION (`base` for an empty database, `-1` for one step)."""
    _migrate(migrations.downgrade, revision)


def _migrate(step: Callable[..., None], revision: str) -> None:
    """`step` (upgrade or downgrade) to REVISION on each database, saying where each is."""
    for name, url, label in _each_database():
        with _alembic_errors(label):
            step(url, revision, schemas=_schemas())
        click.echo(f"{label}database at {_current(name) or 'base'}")


@db_cli.command("current")
def db_current() -> None:
    """Print the revision each database is at, and whether that is the head."""
    heads = migrations.head_revisions()
    for name, _, label in _each_database():
        current = _current(name)
        state = (
            "head" if set(current.split(",")) == heads else "behind head " + ",".join(sorted(heads))
        )
        click.echo(f"{label}{current or 'base'} ({state})")


@db_cli.command("check")
def db_check() -> None:
    """Fail when the models and the migrations disagree (a migration is missing)."""
    from alembic.util.exc import AutogenerateDiffsDetected

    for _name, url, label in _each_database():
        with _alembic_errors(label):
            try:
                migrations.check(url, schemas=_schemas())
            except AutogenerateDiffsDetected as exc:
                raise click.ClickException(
                    f"{label}models and migrations disagree:\n{exc}"
                ) from None
        click.echo(f"{label}models and migrations agree")


@db_cli.command("revision")
@click.option("-m", "--message", required=True)
@click.option("--autogenerate/--empty", default=True)
def db_revision(message: str, autogenerate: bool) -> None:
    """Write a new migration (autogenerated against the main database by default)."""
    with _alembic_errors():
        migrations.revision(_url(), message, autogenerate, schemas=_schemas())


@db_cli.command("layout")
def db_layout() -> None:
    """Print where the tables are: flat, schemas (one per module), empty or mixed."""
    expected = migrations.SCHEMAS if _schemas() else migrations.FLAT
    for name, _, label in _each_database():
        with acting_as(OPERATOR), get_database().engines()[name].connect() as conn:
            layout = migrations.current_layout(conn)
        note = "" if layout in (expected, migrations.EMPTY) else f" (DB_SCHEMAS expects {expected})"
        click.echo(f"{label}{layout}{note}")


def _move(to: str) -> None:
    source = migrations.FLAT if to == migrations.SCHEMAS else migrations.SCHEMAS
    for name, _, label in _each_database():
        engine = get_database().engines()[name]
        if engine.dialect.name != "postgresql":
            raise click.ClickException(
                f"{label}only PostgreSQL has schemas; a SQLite database stays flat"
            )
        with acting_as(OPERATOR), engine.begin() as conn:
            layout = migrations.current_layout(conn)
            if layout == to:
                click.echo(f"{label}already {to}; nothing to move")
                continue
            if layout != source:
                raise click.ClickException(
                    f"{label}the database is {layout}, not {source}; nothing moved"
                )
            counts = migrations.row_counts(conn, layout)
            statements = migrations.move_tables(conn, to=to)
            if migrations.row_counts(conn, to) != counts:  # proven, not assumed
                raise click.ClickException(f"{label}row counts differ after the move; rolled back")
        for statement in statements:
            click.echo(f"{label}{statement}")
        click.echo(
            f"{label}moved {len(counts)} tables ({sum(counts.values())} rows) to the {to} layout"
        )


@db_cli.command("move-to-schemas")
@writes
def db_move_to_schemas() -> None:
    """Phase 1 → 2: move every table from the default schema into its module's schema.

    One transaction per database (all tables or none); rows, indexes, constraints and
    privileges move with the tables. Then run with DB_SCHEMAS=on and re-apply
    `flask ownership grants`.
    """
    _move(migrations.SCHEMAS)


@db_cli.command("move-to-flat")
@writes
def db_move_to_flat() -> None:
    """Phase 2 → 1 (the way back): every table into the default schema, in one transaction."""
    _move(migrations.FLAT)


@db_cli.command("copy-module")
@click.argument("module")
@click.option("--batch-size", default=1000, show_default=True, type=click.IntRange(1, 100_000))
@writes
def db_copy_module(module: str, batch_size: int) -> None:
    """Phase 1/2 → 3: copy MODULE's rows from the main database into its own.

    Rows already there are kept (matched by primary key), so it can run while the app
    serves and again afterwards; each batch commits on its own. Row counts are compared at
    the end.
    """
    from app.kernel.db import Base

    metadata = Base.metadata  # every module's tables: create_app has imported them all
    database = get_database()
    if module not in database.module_engines:
        raise click.ClickException(
            f"{module} has no database of its own (set {module.upper()}_DATABASE_URL)"
        )
    tables = [t for t in metadata.sorted_tables if registry.owner_of(t.name) == module]
    with acting_as(OPERATOR):
        for table in tables:
            copied, source, target = migrations.copy_rows(
                table, database.engine, database.module_engines[module], batch_size=batch_size
            )
            click.echo(f"{table.name}: copied {copied}; {source} in main, {target} in {module}")
            if target < source:
                raise click.ClickException(f"{table.name}: rows are missing in {module}")


@ownership_cli.command("show")
@click.option("--format", "fmt", type=click.Choice(["table", "markdown"]), default="table")
def ownership_show(fmt: str) -> None:
    """Print every table, its owning module and who else may read it."""
    if fmt == "markdown":
        click.echo(registry.as_markdown(), nl=False)
        return
    rows = [("table", "owner", "may also read"), *registry.as_rows()]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        click.echo(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


@ownership_cli.command("grants")
@click.option(
    "--prefix", default=None, help="Module role prefix [default: DB_ROLE_PREFIX, licensing_]."
)
@click.option("--app-role", default=None, help="The app's login role [default: <prefix>app].")
@click.option(
    "--create-login-role",
    is_flag=True,
    help="Also create the app's login role (LOGIN; set its password afterwards).",
)
@click.option(
    "--layout",
    type=click.Choice(["flat", "schemas"]),
    default=None,
    help="Where the tables are (default: schemas when DB_SCHEMAS=on, else flat).",
)
def ownership_grants(
    prefix: str | None, app_role: str | None, create_login_role: bool, layout: str | None
) -> None:
    """Print the PostgreSQL roles and GRANTs that enforce table ownership (phase 2).

    One setting names every role: DB_ROLE_PREFIX (the app uses it for `SET ROLE`) gives
    the module roles (<prefix>auth, …) and the app's login role (<prefix>app), which
    DATABASE_URL must connect as. Pipe the SQL into psql as the tables' owner:
    `flask ownership grants --create-login-role | psql "$OWNER_URL"`.
    """
    from app.kernel.grants import grant_statements

    prefix = prefix if prefix is not None else current_app.config["DB_ROLE_PREFIX"]
    app_role = app_role or f"{prefix}app"
    schemas = _schemas() if layout is None else layout == "schemas"
    if create_login_role:
        click.echo(
            f"DO $$ BEGIN CREATE ROLE {app_role} LOGIN; "
            "EXCEPTION WHEN duplicate_object THEN NULL; END $$;"
        )
    for statement in grant_statements(registry, app_role=app_role, schemas=schemas, prefix=prefix):
        click.echo(statement)
    how = "" if create_login_role else " (create it with --create-login-role)"
    click.echo(
        f"-- the app must connect as {app_role}{how}; give it a password with "
        f"psql's \\password {app_role}, put it in DATABASE_URL, and set DB_ROLES=on "
        f"and DB_ROLE_PREFIX={prefix}",
        err=True,
    )


@contextmanager
def until_signalled() -> Iterator[Any]:
    """A stop() that turns true on SIGTERM or SIGINT, so a loop ends between two rounds."""
    import signal

    stopping: list[int] = []
    previous = {
        sig: signal.signal(sig, lambda signum, _frame: stopping.append(signum))
        for sig in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        yield lambda: bool(stopping)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def init_app(app: Any) -> None:
    app.cli.add_command(db_cli)
    app.cli.add_command(ownership_cli)
    from app.kernel.events.cli import outbox_cli

    app.cli.add_command(outbox_cli)
