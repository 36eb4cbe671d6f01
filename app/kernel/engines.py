"""Engines: how each database is opened.

SQLite is tuned for a multi-process web server (WAL, synchronous=NORMAL, foreign keys,
busy_timeout) and write transactions begin with ``BEGIN IMMEDIATE``: pysqlite's deferred
BEGIN takes the write lock only at the first write, and a read-then-write transaction that
loses that race gets SQLITE_BUSY at once, whatever busy_timeout says.

PostgreSQL (psycopg 3) gets a sized, recycled pool whose connections are pinged before use
unless known alive (`_ping_unless_alive`), an application_name and a statement timeout, so
a dead server costs one failed request and then recovers by itself.
Beside it, an autocommit engine serves `db.read_first`: a hot-path read of one statement as
one round trip (docs/adr/0016-hot-path-database-access.md); on SQLite likewise, as one
statement without BEGIN or ROLLBACK.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import os
import select
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import InvalidatePoolError

from app.kernel import files, metrics, ownership


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


# Only the command that builds a database (`flask db upgrade`: `creating_databases`) creates
# a missing SQLite file. Any other finds it missing and says so, instead of leaving an empty
# database (and the folders of a mistyped path) behind and failing on a missing table.
_may_create = contextvars.ContextVar("sqlite_may_create", default=False)


@contextlib.contextmanager
def creating_databases() -> Iterator[None]:
    """Within it, opening a SQLite database that does not exist creates it (0600, in
    folders made 0700)."""
    token = _may_create.set(True)
    try:
        yield
    finally:
        _may_create.reset(token)


def missing_sqlite_database(path: str) -> str | None:
    """Why `path` may not be opened: it does not exist and this is no `creating_databases`;
    None when it may."""
    if _may_create.get() or os.path.exists(path):
        return None
    return "unable to open database file: it does not exist (`flask db upgrade` creates it)"


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
    _render_layout_once(engine)
    role_prefix = settings.role_prefix if engine.dialect.name == "postgresql" else None
    ownership.install_guard(engine, settings.guard_mode, role_prefix)
    return engine


def _render_layout_once(engine: Engine) -> None:
    """SQLAlchemy writes a `schema_translate_map`'s schemas into a statement's SQL at every
    execution (a regex over the SQL: its compiled form keeps placeholders so that one cache
    serves every map) — 1 to 4 % of a request on the hot paths. An engine's map never changes,
    so each statement's SQL is rendered for it once. Compiled statements copy the dialect's
    preparer, this override included; another map (none in this app) is rendered as before."""
    layout = engine.get_execution_options().get("schema_translate_map")
    if not layout:
        return
    preparer = engine.dialect.identifier_preparer
    render = preparer._render_schema_translates

    @functools.lru_cache(maxsize=1024)  # distinct statements; IN lists vary
    def rendered(statement: str) -> str:
        return render(statement, layout)

    def render_once(statement: str, schema_translate_map: Any) -> str:
        if schema_translate_map is layout:
            return rendered(statement)
        return render(statement, schema_translate_map)

    preparer._render_schema_translates = render_once  # type: ignore[method-assign]


def _make_postgresql_engine(
    url: Any, settings: EngineSettings, options: dict, *, ping: bool = True, **overrides: Any
) -> Engine:
    engine = create_engine(
        url,
        **{
            "echo": settings.echo,
            # Parameters hold password hashes and emails: never in SQL_ECHO output nor in
            # the text of a logged database error (tests/test_secrets.py).
            "hide_parameters": True,
            "execution_options": options,
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
    if ping:
        _ping_unless_alive(engine)
    return engine


# A connection given back to the pool this recently, whose socket holds nothing from the
# server, is handed out again without a ping.
PING_AFTER_IDLE_SECONDS = 5.0
_ALIVE_AT = "alive_at"  # connection record info: when it was last known alive (monotonic)


def _ping_unless_alive(engine: Engine) -> None:
    """The pool's pre-ping, skipped for a connection known alive a moment ago.

    A write cannot be retried, so a connection the server has dropped must be found before
    the transaction starts. `pool_pre_ping` finds it with a round trip (`SELECT 1`) on every
    checkout — one of an activation's dozen, two of a paid order's. A connection checked in
    (its reset's ROLLBACK answered) or opened less than `PING_AFTER_IDLE_SECONDS` ago is
    pinged only when its socket has something to read: a server that ends a connection
    (a restart or shutdown, `pg_terminate_backend`, a crashed backend) sends it an error or
    closes it, and an idle connection is otherwise sent nothing. A longer idle connection
    is pinged as before (a connection dropped silently on the way, by a firewall, say).
    A dead one invalidates the pool, as a failed pre-ping does.
    """
    dialect = engine.dialect

    def alive(dbapi_connection: Any, record: Any, *_args: Any) -> None:
        if dbapi_connection is not None:  # None: given back invalidated
            record.info[_ALIVE_AT] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        alive_at = record.info.get(_ALIVE_AT)
        if (
            alive_at is not None
            and time.monotonic() - alive_at < PING_AFTER_IDLE_SECONDS
            and not _has_input(dbapi_connection)
        ):
            return
        try:
            dialect.do_ping(dbapi_connection)
        except dialect.loaded_dbapi.Error as exc:
            if not dialect.is_disconnect(exc, dbapi_connection, None):
                raise
            raise InvalidatePoolError(f"ping failed: {exc.__class__.__name__}") from exc
        record.info[_ALIVE_AT] = time.monotonic()

    event.listen(engine, "connect", alive)
    event.listen(engine, "checkin", alive)


def _has_input(dbapi_connection: Any) -> bool:
    """True when the server sent the idle connection something (or closed it)."""
    try:
        poller = select.poll()
        poller.register(dbapi_connection.fileno(), select.POLLIN | select.POLLERR | select.POLLHUP)
        return bool(poller.poll(0))
    except Exception:  # closed or broken (no descriptor left): the ping will tell
        return True


def make_autocommit_engine(settings: EngineSettings) -> Engine | None:
    """The engine of `read_first` beside `make_engine(settings)`'s, or None where there is
    none (an in-memory SQLite database: another engine would open another database).

    On PostgreSQL: the same database, guard and module roles, but every statement runs in
    autocommit (no BEGIN, no ROLLBACK at check-in) and the pool does not ping a connection
    before handing it out; `read_first` retries once on a connection found dead instead.
    A worker's main thread keeps one connection for its reads (kernel.db.HeldConnections);
    any other thread holds one for one statement: the pool does not overflow.

    On SQLite: the same database file, tuning and guard, every statement in autocommit (no
    BEGIN nor ROLLBACK around a read: a statement alone reads what is committed when it
    runs). Not round trips there, but the session, its transaction and the two statements
    were a quarter of a validation's time in-process (bench/README.md, issue 17).
    """
    url = make_url(normalise_url(settings.url))
    options = {} if settings.schemas else {"schema_translate_map": flat_layout()}
    if url.get_backend_name() == "sqlite":
        if sqlite_file(url) is None:
            return None
        engine = _make_sqlite_engine(url, settings, options, autocommit=True)
        _render_layout_once(engine)
        ownership.install_guard(engine, settings.guard_mode)
        return engine
    if url.get_backend_name() != "postgresql":
        return None
    engine = _make_postgresql_engine(
        url,
        settings,
        options,
        ping=False,
        isolation_level="AUTOCOMMIT",
        max_overflow=0,
    )
    _render_layout_once(engine)
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


def sqlite_file(url: Any) -> str | None:
    """The file of a SQLite URL's database; None for another backend, an in-memory
    database or a `uri=true` URL (whose path SQLite resolves itself)."""
    if url.get_backend_name() != "sqlite":
        return None
    path = url.database
    return None if not path or path == ":memory:" or url.query.get("uri") else path


class _SqliteMemory:
    """What SQLite's allocator holds in this process (`sqlite3_memory_used`: its page caches
    mostly, up to `cache_size` per connection), for /metrics: a worker's memory grows while
    they fill and no further. Read when a connection goes back to the pool and after a read
    on a held connection (kernel.db; 0.2 µs), written to the gauge when it moved by 64 KiB
    or more. Not reported outside a gunicorn worker (metrics.start_per_worker), nor when
    the library cannot be reached or is not the one Python's sqlite3 uses (it then reports
    nothing in use)."""

    STEP = 64 * 1024

    def __init__(self) -> None:
        self.read: Any = None  # sqlite3_memory_used, once found; False: not available
        self.reported = -self.STEP
        self.pid = os.getpid()

    def __call__(self, _dbapi_connection: Any = None, _record: Any = None) -> None:
        gauge = metrics.SQLITE_MEMORY_BYTES
        if gauge is None:  # not a worker (metrics.start_per_worker)
            return
        if self.read is None:
            self.read = self._find()
        if self.read is False:
            return
        if self.pid != os.getpid():  # a forked worker: the figure reported is the parent's
            self.pid, self.reported = os.getpid(), -self.STEP
        used = self.read()
        if used <= 0:  # another copy of the library than the one in use
            self.read = False
        elif abs(used - self.reported) >= self.STEP:
            self.reported = used
            gauge.set(used)

    @staticmethod
    def _find() -> Any:
        import ctypes
        import ctypes.util

        try:
            library = ctypes.CDLL(ctypes.util.find_library("sqlite3") or "libsqlite3.so.0")
            read = library.sqlite3_memory_used
        except (OSError, AttributeError):
            return False
        read.restype = ctypes.c_int64
        read.argtypes = []
        return read


report_sqlite_memory = _SqliteMemory()


def _make_sqlite_engine(
    url: Any, settings: EngineSettings, options: dict, *, autocommit: bool = False
) -> Engine:
    path = sqlite_file(url)
    if path and not autocommit:
        # It holds password hashes and emails: warn now if it is open to other users (once:
        # not again for the autocommit engine beside the session's).
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
        **({"isolation_level": "AUTOCOMMIT"} if autocommit else {}),
    )
    busy_timeout = int(settings.sqlite_busy_timeout_ms)

    @event.listens_for(engine, "do_connect")
    def _create_private(_dialect: Any, _record: Any, cargs: Any, _cparams: Any) -> None:
        # SQLite would create a missing file 0644 (less the umask) in whatever folder; an
        # empty file is an empty database, so make it first, 0600 in a 0700 folder. Its -wal
        # and -shm files take the database file's mode (SQLite copies it).
        if path:
            missing = missing_sqlite_database(path)
            if missing:
                raise sqlite3.OperationalError(missing)  # like SQLite's own: 503, CLI one line
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

    event.listen(engine, "checkin", report_sqlite_memory)
    if autocommit:
        return engine  # no BEGIN: each statement on its own

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        mode = "IMMEDIATE" if conn.get_execution_options().get("sqlite_write") else "DEFERRED"
        # Marked as plumbing so the ownership guard lets it through whatever module acts.
        conn.exec_driver_sql(f"BEGIN {mode}", execution_options={ownership.PLUMBING: True})

    return engine
