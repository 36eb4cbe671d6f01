"""Engines, the Session of each request or CLI command, and `transaction()`.

SQLite is tuned for a multi-process web server (WAL, synchronous=NORMAL, foreign keys,
busy_timeout) and write transactions begin with ``BEGIN IMMEDIATE``: pysqlite's deferred
BEGIN takes the write lock only at the first write, and a read-then-write transaction that
loses that race gets SQLITE_BUSY at once, whatever busy_timeout says.

PostgreSQL (psycopg 3) gets a pre-pinged, sized, recycled pool, an application_name and a
statement timeout, so a dead server costs one failed request and then recovers by itself.
Beside it, an autocommit engine serves `read_first`: a hot-path read of one statement as one
round trip (docs/adr/0016-hot-path-database-access.md).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
import os
import sqlite3
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime, Engine, MetaData, Row, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.sql import Executable
from sqlalchemy.types import TypeDecorator

from app.kernel import files, ownership

log = logging.getLogger(__name__)

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Declarative base of every module's models (one MetaData, one migration lineage)."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def utcnow() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """A timestamp that is always timezone-aware UTC in Python, on SQLite and PostgreSQL.

    SQLite has no time zones and hands back naive values; they were stored as UTC, so
    they are tagged UTC on the way out. Naive values are refused on the way in.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; use an aware UTC datetime")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


# --- engines -------------------------------------------------------------------------


@dataclass(frozen=True)
class EngineSettings:
    """How to build an engine; filled from the app's configuration."""

    url: str
    application_name: str = "licensing"
    pool_size: int = 5
    max_overflow: int = 5
    pool_timeout: float = 10.0
    pool_recycle: int = 1800
    statement_timeout_ms: int = 15000
    connect_timeout: int = 5
    sqlite_busy_timeout_ms: int = 5000
    guard_mode: str = "raise"
    role_prefix: str | None = None  # PostgreSQL: run each module's statements under its role
    schemas: bool = False  # PostgreSQL: each module's tables in its own schema (phase 2)
    echo: bool = False


def normalise_url(url: str) -> str:
    """Point plain PostgreSQL URLs at psycopg 3 (`postgresql://` → `postgresql+psycopg://`)."""
    for alias in ("postgres+psycopg://", "postgres://", "postgresql://"):
        if url.startswith(alias):
            return "postgresql+psycopg://" + url[len(alias) :]
    return url


def flat_layout() -> dict[str, str | None]:
    """The `schema_translate_map` of the flat layout: every module schema to the default one.

    Models name their owner's schema (`auth.users`); in the flat layout (SQLite, phase-1
    PostgreSQL) those names render as the database's default schema. Built from the
    registry, so every module must have declared itself before an engine is made.
    """
    return dict.fromkeys(ownership.registry.schemas())


def make_engine(settings: EngineSettings) -> Engine:
    """Create a tuned engine for SQLite or PostgreSQL, with the ownership guard installed."""
    url = make_url(normalise_url(settings.url))
    backend = url.get_backend_name()
    if settings.schemas and backend != "postgresql":
        raise ValueError("the schema layout (DB_SCHEMAS) needs PostgreSQL")
    options = {} if settings.schemas else {"schema_translate_map": flat_layout()}
    if backend == "sqlite":
        engine = _make_sqlite_engine(url, settings, options)
    elif backend == "postgresql":
        engine = _make_postgresql_engine(url, settings, options)
    else:
        raise ValueError(f"unsupported database backend {backend!r}")
    role_prefix = settings.role_prefix if engine.dialect.name == "postgresql" else None
    ownership.install_guard(engine, settings.guard_mode, role_prefix)
    return engine


def _make_postgresql_engine(
    url: Any, settings: EngineSettings, options: dict, **overrides: Any
) -> Engine:
    return create_engine(
        url,
        **{
            "echo": settings.echo,
            # Parameters hold password hashes and emails: never in SQL_ECHO output nor in
            # the text of a logged database error (tests/test_secrets.py).
            "hide_parameters": True,
            "execution_options": options,
            "pool_pre_ping": True,
            "pool_size": settings.pool_size,
            "max_overflow": settings.max_overflow,
            "pool_timeout": settings.pool_timeout,
            "pool_recycle": settings.pool_recycle,
            "connect_args": {
                "application_name": settings.application_name,
                "connect_timeout": settings.connect_timeout,
                "options": f"-c statement_timeout={int(settings.statement_timeout_ms)}",
            },
            **overrides,
        },
    )


def make_autocommit_engine(settings: EngineSettings) -> Engine | None:
    """The engine of `read_first` beside `make_engine(settings)`'s, or None where the
    session's own connection costs as little (SQLite: BEGIN and ROLLBACK are calls into
    the library there, not round trips to a server).

    On PostgreSQL: the same database, guard and module roles, but every statement runs in
    autocommit (no BEGIN, no ROLLBACK at check-in) and the pool does not ping a connection
    before handing it out; `read_first` retries once on a connection found dead instead.
    A read holds its connection for one statement, so the pool does not overflow.
    """
    url = make_url(normalise_url(settings.url))
    if url.get_backend_name() != "postgresql":
        return None
    options = {} if settings.schemas else {"schema_translate_map": flat_layout()}
    engine = _make_postgresql_engine(
        url,
        settings,
        options,
        isolation_level="AUTOCOMMIT",
        pool_pre_ping=False,
        max_overflow=0,
    )
    ownership.install_guard(engine, settings.guard_mode, settings.role_prefix, autocommit=True)
    return engine


# SQLite releases that carry the WAL-reset corruption bug: everything before the fixes
# in 3.51.3, 3.50.7 and 3.44.6 (the fixes were backported to those two branches).
def sqlite_has_wal_reset_bug(version: str) -> bool:
    """True when this SQLite library version carries the WAL-reset bug."""
    v = tuple(int(part) for part in version.split(".")[:3])
    if v >= (3, 51, 3):
        return False
    if (3, 50, 7) <= v < (3, 51, 0):
        return False
    return not (3, 44, 6) <= v < (3, 45, 0)


def sqlite_version_warning(url: str) -> str | None:
    """What to tell the operator when `url` is a SQLite database and the SQLite library
    carries the WAL-reset bug (None otherwise). Said once per service start (the gunicorn
    master) and once per CLI command that writes, not by every process that opens it."""
    if make_url(normalise_url(url)).get_backend_name() != "sqlite":
        return None
    version = sqlite3.sqlite_version
    if not sqlite_has_wal_reset_bug(version):
        return None
    return (
        f"SQLite {version} carries the WAL-reset bug (fixed in 3.51.3, 3.50.7 and 3.44.6): "
        "concurrent writers and checkpoints can corrupt the database. Upgrade the SQLite "
        "library Python links against, or use PostgreSQL in production."
    )


def _make_sqlite_engine(url: Any, settings: EngineSettings, options: dict) -> Engine:
    path = url.database
    if path and path != ":memory:" and not url.query.get("uri"):
        # It holds password hashes and emails: warn now if it is open to other users.
        for suffix in ("", "-wal", "-shm"):
            files.warn_if_exposed(os.path.abspath(path + suffix))
    engine = create_engine(
        url,
        hide_parameters=True,  # as for PostgreSQL
        echo=settings.echo,
        execution_options=options,
        pool_size=settings.pool_size,
        max_overflow=settings.max_overflow,
        pool_timeout=settings.pool_timeout,
        connect_args={"timeout": settings.sqlite_busy_timeout_ms / 1000},
    )
    busy_timeout = int(settings.sqlite_busy_timeout_ms)

    @event.listens_for(engine, "do_connect")
    def _create_private(_dialect: Any, _record: Any, cargs: Any, _cparams: Any) -> None:
        # SQLite would create a missing file 0644 (less the umask) in whatever folder; an
        # empty file is an empty database, so make it first, 0600 in a 0700 folder. Its -wal
        # and -shm files take the database file's mode (SQLite copies it).
        if path and path != ":memory:" and not url.query.get("uri"):
            with contextlib.suppress(OSError):  # SQLite's own attempt reports it (503)
                files.create_private_file(path)

    @event.listens_for(engine, "connect")
    def _tune_sqlite(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
        # Let SQLAlchemy (the "begin" hook below) emit BEGIN, not pysqlite.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA busy_timeout={busy_timeout}")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        mode = "IMMEDIATE" if conn.get_execution_options().get("sqlite_write") else "DEFERRED"
        # Marked as plumbing so the ownership guard lets it through whatever module acts.
        conn.exec_driver_sql(f"BEGIN {mode}", execution_options={ownership.PLUMBING: True})

    return engine


# --- sessions and transactions -------------------------------------------------------

_WRITE = "write_transaction"


def make_sessionmaker(engine: Engine, **options: Any) -> sessionmaker[Session]:
    """Sessions that keep loaded values after commit (responses render after the commit)."""
    return sessionmaker(bind=engine, expire_on_commit=False, autoflush=True, **options)


_COMMITTING = "transaction_committing"


class TransactionMisuse(RuntimeError):
    """Writes outside `transaction()`, or a commit inside it: a programming error."""


@event.listens_for(Session, "before_flush")
def _refuse_writes_outside_transaction(session: Session, _ctx: Any, _instances: Any) -> None:
    if not session.info.get(_WRITE) and (session.new or session.dirty or session.deleted):
        raise TransactionMisuse(
            "ORM changes flushed outside `with transaction(session)`; the entry point owns "
            "the transaction boundary"
        )


@event.listens_for(Session, "do_orm_execute")
def _refuse_statement_writes_outside_transaction(state: Any) -> None:
    # Core/bulk INSERT, UPDATE, DELETE through the session: same rule as ORM flushes, or
    # the write would be lost when the request's session closes (and, on SQLite, run
    # in a deferred transaction that can fail with SQLITE_BUSY).
    if (state.is_insert or state.is_update or state.is_delete) and not state.session.info.get(
        _WRITE
    ):
        raise TransactionMisuse("INSERT/UPDATE/DELETE outside `with transaction(session)`")


@event.listens_for(Session, "before_commit")
def _only_the_boundary_commits(session: Session) -> None:
    if session.get_nested_transaction() is not None:
        return  # releasing a SAVEPOINT, not committing
    if session.info.get(_WRITE) and not session.info.get(_COMMITTING):
        raise TransactionMisuse(
            "commit() inside `with transaction(session)`: services never commit; the block "
            "commits once at its end"
        )


@contextmanager
def transaction(session: Session) -> Iterator[Session]:
    """Run the block as one write transaction: commit at the end, roll back on any error.

    Nested calls run as a SAVEPOINT inside the outer one, which alone commits. A read-only
    transaction the session had begun implicitly is ended first, so the write transaction
    starts with a fresh snapshot and, on SQLite, holds the write lock from its first statement.
    """
    if session.info.get(_WRITE):
        # Nested: a SAVEPOINT, so a failed inner block that the caller catches leaves
        # nothing behind, while the outer block still commits (or not) as a whole.
        with session.begin_nested():
            yield session
        return
    if session.in_transaction():
        if session.new or session.dirty or session.deleted:
            raise RuntimeError("pending ORM changes outside transaction(); refusing to drop them")
        session.rollback()
    turn = _writers_turn(session.get_bind())
    session.info[_WRITE] = True
    try:
        session.connection(execution_options={"sqlite_write": True})
        yield session
        session.info[_COMMITTING] = True
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.info.pop(_WRITE, None)
        session.info.pop(_COMMITTING, None)
        if turn is not None:
            os.close(turn)  # the next writer in line goes


# SQLite has one writer at a time. Left to itself, a writer that finds the database locked
# sleeps in SQLite's busy handler (1, 2, 5 … 100 ms between tries) and may lose its turn to
# a newcomer: under load the unlucky ones wait far longer than the work ahead of them. So
# every process's write transactions first queue on an exclusive lock of a file beside the
# database (`<database>-writers`) and begin only when it is theirs: the kernel wakes the
# next one the moment the lock is free. The lock belongs to the open file, so a writer
# that dies lets the next one go; busy_timeout still covers writers outside the app.
_QUEUE_FILES: dict[str, str] = {}


def _writers_turn(bind: Any) -> int | None:
    """Wait for this process's turn to write to `bind`'s SQLite database; the descriptor
    whose closing ends the turn (None: not SQLite, or an in-memory database)."""
    url = getattr(bind, "url", None)
    if url is None or url.get_backend_name() != "sqlite":
        return None
    database = url.database
    if not database or database == ":memory:" or url.query.get("uri"):
        return None
    try:
        path = _QUEUE_FILES.get(database)
        if path is None:
            path = os.path.abspath(database) + "-writers"
            files.create_private_file(path)  # 0600 in a 0700 folder, like the database
            _QUEUE_FILES[database] = path
        # A descriptor per transaction, never shared: threads and forked workers each queue.
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:
        return None  # a folder it cannot write to: SQLite itself will say what is wrong
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except BaseException:
        os.close(fd)
        raise
    return fd


# Session.info key: the autocommit engine (`make_autocommit_engine`) beside each engine.
AUTOCOMMIT_ENGINES = "autocommit_engines"


def read_first(
    session: Session, statement: Executable, params: Mapping[str, Any] | None = None
) -> Row[Any] | None:
    """The first row of a read-only `statement`, as the database has it now.

    Outside a transaction, on PostgreSQL, it is one round trip: the statement runs alone
    in autocommit on a connection of the autocommit engine (no pre-ping, BEGIN or
    ROLLBACK; a connection found dead is replaced and the statement tried once more). It
    runs as the acting module, under its guard and database role like any other. Inside a
    transaction (the session has begun one: its snapshot, its own writes), or where the
    session has no autocommit engine (SQLite), it runs on the session's connection.
    """
    if not getattr(statement, "is_select", False):
        raise TransactionMisuse("read_first() runs SELECT statements only")
    engines = session.info.get(AUTOCOMMIT_ENGINES)
    if engines and not session.in_transaction():
        autocommit = engines.get(session.get_bind(clause=statement))  # type: ignore[arg-type]
        if autocommit is not None:
            return _read_autocommit(autocommit, statement, params)
    return session.connection().execute(statement, params).first()


def _read_autocommit(
    engine: Engine, statement: Executable, params: Mapping[str, Any] | None
) -> Row[Any] | None:
    for attempt in (1, 2):
        try:
            with engine.connect() as conn:
                return conn.execute(statement, params).first()
        except DBAPIError as exc:
            # Without a pre-ping, a server restart shows here: the pool has dropped its
            # connections (SQLAlchemy invalidates them all on a disconnect); try a new one.
            if attempt == 2 or not exc.connection_invalidated:
                raise
    raise AssertionError("unreachable")


# --- Flask wiring --------------------------------------------------------------------


# Session.info key: the modules whose tables live in a database of their own (phase 3).
MODULE_DATABASES = "module_databases"


def has_own_database(session: Session, module: str) -> bool:
    """True when `module`'s tables live in a database of their own (phase 3): its facade
    then cannot join the caller's transaction, and must go through the outbox."""
    return module in session.info.get(MODULE_DATABASES, ())


class Database:
    """The app's engines and session factories; one per app, kept in `app.extensions`.

    `engine` is the main database. In phase 3 a module may have its own (`module_engines`):
    request sessions then send that module's tables there (SQLAlchemy binds), and
    `sessions_for(module)` gives sessions whose every statement goes there (its consumer,
    its maintenance commands).
    """

    def __init__(
        self,
        engine: Engine,
        module_engines: dict[str, Engine] | None = None,
        autocommit_engines: dict[Engine, Engine] | None = None,
    ) -> None:
        self.engine = engine
        self.module_engines = dict(module_engines or {})
        # Beside an engine (main or a module's), the autocommit one of its `read_first`s.
        self.autocommit_engines = dict(autocommit_engines or {})
        self._info = {
            MODULE_DATABASES: frozenset(self.module_engines),
            AUTOCOMMIT_ENGINES: self.autocommit_engines,
        }
        self._module_sessions: dict[str, sessionmaker[Session]] = {}

    @functools.cached_property
    def sessions(self) -> sessionmaker[Session]:
        """Request sessions. Built on first use, when every module's models are loaded, so
        the tables of modules with their own database can be bound to it."""
        binds = {
            table: self.module_engines[owner]
            for table in Base.metadata.tables.values()
            if (owner := ownership.registry.owner_of(table.name)) in self.module_engines
        }
        return make_sessionmaker(self.engine, binds=binds, info=self._info)

    def sessions_for(self, module: str) -> sessionmaker[Session]:
        """Sessions on the database where `module`'s tables live (the main one, or its own)."""
        if module not in self.module_engines:
            return self.sessions
        if module not in self._module_sessions:
            self._module_sessions[module] = make_sessionmaker(
                self.module_engines[module], info=self._info
            )
        return self._module_sessions[module]

    def engines(self) -> dict[str, Engine]:
        """Every database of the app by name: `main`, then each module's own."""
        return {"main": self.engine, **self.module_engines}

    @property
    def backend(self) -> str:
        return self.engine.dialect.name

    def dispose(self) -> None:
        for engine in [*self.engines().values(), *self.autocommit_engines.values()]:
            engine.dispose()


def settings_from_config(config: Any, module: str | None = None) -> EngineSettings:
    """Engine settings from a Flask config mapping: the main database, or `module`'s own."""
    url = config["DATABASE_URL"] if module is None else config["MODULE_DATABASE_URLS"][module]
    name = config["DB_APPLICATION_NAME"] + ("" if module is None else f"-{module}")
    return EngineSettings(
        url=url,
        application_name=name,
        pool_size=config["DB_POOL_SIZE"],
        max_overflow=config["DB_MAX_OVERFLOW"],
        pool_timeout=config["DB_POOL_TIMEOUT"],
        pool_recycle=config["DB_POOL_RECYCLE"],
        statement_timeout_ms=config["DB_STATEMENT_TIMEOUT_MS"],
        sqlite_busy_timeout_ms=config["SQLITE_BUSY_TIMEOUT_MS"],
        guard_mode=config["OWNERSHIP_GUARD"],
        role_prefix=config["DB_ROLE_PREFIX"] if config["DB_ROLES"] else None,
        schemas=config["DB_SCHEMAS"],
        echo=config["SQL_ECHO"],
    )


def init_app(app: Any) -> None:
    """Bind a Database to the app; sessions open lazily and close with the app context."""
    from flask import g

    autocommit_engines: dict[Engine, Engine] = {}

    def engine_for(module: str | None) -> Engine:
        settings = settings_from_config(app.config, module)
        engine = make_engine(settings)
        if (autocommit := make_autocommit_engine(settings)) is not None:
            autocommit_engines[engine] = autocommit
        return engine

    module_engines = {module: engine_for(module) for module in app.config["MODULE_DATABASE_URLS"]}
    database = Database(engine_for(None), module_engines, autocommit_engines)
    app.extensions["db"] = database

    @app.teardown_appcontext
    def _close_session(_exc: BaseException | None) -> None:
        session = g.pop("_db_session", None)
        if session is not None:
            session.close()


def get_database() -> Database:
    """The current app's Database."""
    from flask import current_app

    return current_app.extensions["db"]


def get_session() -> Session:
    """The Session of the current request or CLI command (created on first use)."""
    from flask import g

    session = g.get("_db_session")
    if session is None:
        session = get_database().sessions()
        g._db_session = session
    return session
