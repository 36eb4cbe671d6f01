"""The Session of each request or CLI command, `transaction()` and `read_first()`.

How each database is opened (SQLite's pragmas and BEGIN IMMEDIATE, PostgreSQL's pool, the
autocommit engine for hot-path reads) is in `app.kernel.engines`: callers that open an
engine of their own (migrations, backups, tests) import it from there.
Write transactions on SQLite queue for their turn on a lock file before BEGIN IMMEDIATE, and
`read_first` reads one statement as one round trip on PostgreSQL
(docs/adr/0016-hot-path-database-access.md).
"""

from __future__ import annotations

import fcntl
import functools
import logging
import os
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, CursorResult, DateTime, Engine, MetaData, Row, event
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.sql import Executable
from sqlalchemy.types import TypeDecorator

from app.kernel import files, ownership
from app.kernel.engines import (
    EngineSettings,
    make_autocommit_engine,
    make_engine,
    missing_sqlite_database,
    report_sqlite_memory,
    sqlite_file,
)

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


def add_unique(session: Session, row: Any, conflict: type[Exception]) -> None:
    """Add `row` and insert it now, inside the caller's transaction. A unique constraint
    settles a race with a concurrent insert of the same row: the loser raises `conflict()`
    instead of IntegrityError."""
    session.add(row)
    try:
        session.flush()
    except IntegrityError:
        raise conflict() from None


def execute_now(
    session: Session,
    statement: Executable,
    params: Mapping[str, Any] | None = None,
    *,
    conflict: type[Exception] | None = None,
) -> CursorResult[Any]:
    """Run a prebuilt Core statement now on the connection of the caller's write transaction,
    without the ORM's execute path or unit of work (the hot write paths: ADR 0016). Writes
    only inside `transaction()`, like a flush; with `conflict`, a unique constraint's
    IntegrityError raises `conflict()` instead (see `add_unique`)."""
    if not session.info.get(_WRITE):
        raise TransactionMisuse("execute_now() runs inside `with transaction(session)` only")
    try:
        return session.connection().execute(statement, params)
    except IntegrityError:
        if conflict is None:
            raise
        raise conflict() from None


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
    database = sqlite_file(url) if url is not None else None
    if database is None:
        return None
    try:
        path = _QUEUE_FILES.get(database)
        if path is None:
            if missing_sqlite_database(database):
                return None  # connecting will say it is missing; make nothing beside it
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

    Outside a transaction it runs alone in autocommit on a connection of the autocommit
    engine: on PostgreSQL one round trip (no pre-ping, BEGIN or ROLLBACK; a connection found
    dead is replaced and the statement tried once more), on SQLite the one statement
    without BEGIN, ROLLBACK or the session's transaction. It runs as the acting module,
    under its guard and database role like any other. Inside a transaction (the session
    has begun one: its snapshot, its own writes), or where the session has no autocommit
    engine (an in-memory SQLite database), it runs on the session's connection.
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
    main = threading.current_thread() is threading.main_thread()  # (after a fork too)
    held = held_connections(engine) if main else None
    for attempt in (1, 2):
        try:
            if held is not None:
                return held.first(statement, params)
            with engine.connect() as conn:
                return conn.execute(statement, params).first()
        except DBAPIError as exc:
            # Without a pre-ping, a server restart shows here: the pool has dropped its
            # connections (SQLAlchemy invalidates them all on a disconnect); try a new one.
            if attempt == 2 or not exc.connection_invalidated:
                raise
    raise AssertionError("unreachable")


class HeldConnections:
    """The autocommit engine's connection of the process's main thread, kept from one
    `read_first` to the next instead of checked out of the pool and back for every read.

    A read is one statement in autocommit: between reads the connection holds no
    transaction, snapshot or lock. Checking it out and in again (a new `Connection`, its
    event dispatch, the pool's queue, the reset) cost as much as the read itself on
    SQLite (bench/README.md, issue 17). Only the main thread keeps one: a sync worker
    serves every request there, while a connection kept per thread would take one of the
    pool's for each thread of a threaded server (`--threads`, the development server) and
    run it dry (the outside test: 503s after 10 s); other threads check one out per read,
    as before. The held connection is replaced after any failed statement (the next read
    starts afresh), when it is older than the pool's `pool_recycle`, and in a forked child
    (a parent's socket is neither used nor closed); `drop` (Database.dispose) returns it."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.sqlite = engine.dialect.name == "sqlite"
        self._held: tuple[int, float, Connection] | None = None  # pid, since, connection
        self._parents: list[Connection] = []  # in a forked child: its parent's, untouched

    def first(self, statement: Executable, params: Mapping[str, Any] | None) -> Row[Any] | None:
        conn = self.get()
        try:
            row = conn.execute(statement, params).first()
        except BaseException:
            self.drop()
            raise
        if self.sqlite:
            report_sqlite_memory()  # no check-in to report it at
        return row

    def get(self) -> Connection:
        held = self._held
        if held is not None and held[0] != os.getpid():
            # A forked child's copy of its parent's: kept referenced, never closed nor let go
            # (freed, SQLAlchemy would check it in to the pool the child inherited, and the
            # child's next check-out would talk on the parent's socket).
            self._parents.append(held[2])
            self._held = held = None
        if held is not None:
            _pid, since, conn = held
            recycle = self.engine.pool._recycle  # type: ignore[attr-defined]
            fresh = recycle < 0 or time.monotonic() - since < recycle
            if fresh and not (conn.closed or conn.invalidated):
                return conn
            self.drop()
        conn = self.engine.connect()
        self._held = (os.getpid(), time.monotonic(), conn)
        return conn

    def drop(self) -> None:
        """Give the held connection up (back to the pool, or let go if it is dead)."""
        held, self._held = self._held, None
        if held is not None and held[0] != os.getpid():
            self._parents.append(held[2])  # a parent's: not ours to close (see `get`)
        elif held is not None:
            try:
                held[2].close()
            except Exception:  # a dead connection: the pool has let it go already
                log.debug("closing a held connection failed", exc_info=True)


def held_connections(engine: Engine) -> HeldConnections:
    """The held connection of an autocommit engine (made on first use)."""
    held = engine.__dict__.get(_HELD)
    if held is None:
        held = engine.__dict__.setdefault(_HELD, HeldConnections(engine))
    return held


_HELD = "app_held_connections"


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
        for autocommit in self.autocommit_engines.values():
            held_connections(autocommit).drop()
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
