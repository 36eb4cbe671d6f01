"""The table-ownership registry and the runtime guard (docs/architecture.md).

Each module declares the tables it owns and the tables it may read. From that one registry
come the runtime guard below, `flask ownership show`, docs/ownership.md and, in phase 2,
the PostgreSQL GRANTs.

The guard: code runs "as" a module (a contextvar, set by the module's blueprint for its
requests and by `module_api` for its `api.py` functions). Every SQL statement is checked
against the acting module's rights: it may write only tables it owns and read only tables it
owns or was granted. The tables of a statement are found once per compiled statement and
cached on it, so the per-statement cost is a dictionary look-up and two set operations.

ORM writes are flushed lazily, so a module boundary flushes the session on the way in (the
caller's pending rows, under the caller's name) and on the way out (the callee's rows,
under the callee's name): each row is written under the module that created it.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

from sqlalchemy import Engine, event
from sqlalchemy.orm import Session
from sqlalchemy.sql import visitors
from sqlalchemy.sql.ddl import ExecutableDDLElement
from sqlalchemy.sql.dml import UpdateBase
from sqlalchemy.sql.elements import TextClause
from sqlalchemy.sql.selectable import TableClause, TextualSelect

log = logging.getLogger(__name__)

GUARD_MODES = ("raise", "log", "off")
RAW_SQL = "<raw SQL>"


class OwnershipViolation(RuntimeError):
    """A module touched a table it neither owns nor was granted."""

    def __init__(self, module: str | None, table: str, access: str, statement: str = "") -> None:
        self.module = module
        self.table = table
        self.access = access
        who = f"module {module!r}" if module else "code outside any module"
        what = "raw SQL (its tables cannot be checked)" if table == RAW_SQL else f"table {table!r}"
        super().__init__(
            f"{who} may not {access} {what}"
            + (f" (statement: {statement[:200]})" if statement else "")
        )


@dataclass(frozen=True)
class ModuleDeclaration:
    """What a module owns (reads and writes) and what it may only read."""

    name: str
    owns: frozenset[str]
    reads: frozenset[str] = field(default_factory=frozenset)

    def may_read(self, table: str) -> bool:
        return table in self.owns or table in self.reads

    def may_write(self, table: str) -> bool:
        return table in self.owns


class Registry:
    """Every module's declaration; each table has exactly one owner."""

    def __init__(self) -> None:
        self._modules: dict[str, ModuleDeclaration] = {}
        self._owner: dict[str, str] = {}

    def declare(
        self, name: str, *, owns: Iterable[str], reads: Iterable[str] = ()
    ) -> ModuleDeclaration:
        """Register a module; refuses a second owner for a table or a re-declaration."""
        decl = ModuleDeclaration(name, frozenset(owns), frozenset(reads))
        existing = self._modules.get(name)
        if existing is not None:
            if existing == decl:
                return existing
            raise ValueError(f"module {name!r} declared twice with different tables")
        for table in decl.owns:
            if table in self._owner:
                raise ValueError(f"table {table!r} already owned by {self._owner[table]!r}")
        if decl.owns & decl.reads:
            raise ValueError(f"module {name!r} lists owned tables as granted reads")
        self._modules[name] = decl
        for table in decl.owns:
            self._owner[table] = name
        return decl

    def module(self, name: str) -> ModuleDeclaration:
        return self._modules[name]

    def modules(self) -> list[ModuleDeclaration]:
        return list(self._modules.values())

    def owner_of(self, table: str) -> str | None:
        return self._owner.get(table)

    def tables(self) -> set[str]:
        return set(self._owner)

    def schemas(self) -> list[str]:
        """The PostgreSQL schemas of the phase-2 layout: one per module, named after it."""
        return sorted(self._modules)

    def schema_of(self, table: str) -> str:
        """The schema a table lives in under the phase-2 layout: its owner's."""
        owner = self._owner.get(table)
        if owner is None:
            raise KeyError(f"table {table!r} has no owner in the registry")
        return owner

    def readers_of(self, table: str) -> list[str]:
        return sorted(m.name for m in self._modules.values() if table in m.reads)

    def check(self, metadata_tables: Iterable[str]) -> list[str]:
        """Problems between the registry and the models' tables (empty when consistent)."""
        known = set(metadata_tables)
        problems = [f"table {t!r} has no owner" for t in sorted(known - self.tables())]
        problems += [f"declared table {t!r} has no model" for t in sorted(self.tables() - known)]
        for decl in self._modules.values():
            problems += [
                f"module {decl.name!r} reads unknown table {t!r}"
                for t in sorted(decl.reads - known)
            ]
        return problems

    def as_rows(self) -> list[tuple[str, str, str]]:
        """(table, owner, may also read) rows, ordered by owner then table."""
        rows = [
            (table, owner, ", ".join(self.readers_of(table)) or "—")
            for table, owner in self._owner.items()
        ]
        order = {name: i for i, name in enumerate(self._modules)}
        return sorted(rows, key=lambda r: (order[r[1]], r[0]))

    def as_markdown(self) -> str:
        lines = ["| table | owner (reads and writes) | may also read |", "|---|---|---|"]
        lines += [f"| {t} | {o} | {r} |" for t, o, r in self.as_rows()]
        return "\n".join(lines) + "\n"


registry = Registry()

# The kernel's own tables: any module appends to the outbox through kernel.events.
KERNEL = "kernel"
registry.declare(KERNEL, owns={"event_outbox", "event_inbox", "event_leases", "event_dead_letters"})

# Operations that legitimately touch every table (backups, row counts, migrations) run
# as this actor. It is not a module and owns nothing; it is simply not restricted.
OPERATOR = "operator"

# An execution option marking kernel plumbing (BEGIN IMMEDIATE) that the guard lets through.
PLUMBING = "ownership_plumbing"

_acting: ContextVar[str | None] = ContextVar("acting_module", default=None)


def acting_module() -> str | None:
    """The module the current code runs as (None outside any module)."""
    return _acting.get()


@contextmanager
def acting_as(module: str) -> Iterator[None]:
    """Run the block as `module` (a registered module name or OPERATOR)."""
    if module != OPERATOR:
        registry.module(module)  # KeyError for a typo beats a silently unguarded block
    token = _acting.set(module)
    try:
        yield
    finally:
        _acting.reset(token)


P = ParamSpec("P")
R = TypeVar("R")


def module_api(module: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Mark a public facade function of `module`: it runs as that module.

    The session argument (the first `Session` among the arguments) is flushed before the
    switch, so the caller's pending rows are written under the caller's name, and again
    before returning, so the callee's rows are written under the callee's name.
    """

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            session = _find_session(args, kwargs)
            if session is not None and _has_pending(session):
                session.flush()
            with acting_as(module):
                result = fn(*args, **kwargs)
                if session is not None and _has_pending(session):
                    session.flush()
            return result

        wrapper.__module_api__ = module  # type: ignore[attr-defined]
        return wrapper

    return decorate


def _find_session(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Session | None:
    for value in (*args, *kwargs.values()):
        if isinstance(value, Session):
            return value
    return None


def _has_pending(session: Session) -> bool:
    return bool(session.new or session.dirty or session.deleted)


# --- the guard -----------------------------------------------------------------------


@dataclass(frozen=True)
class StatementTables:
    """The tables one statement writes and reads; `raw` when SQL text hides them."""

    writes: frozenset[str]
    reads: frozenset[str]
    raw: bool = False


RAW = StatementTables(frozenset(), frozenset(), raw=True)
_CACHE_ATTR = "_ownership_tables"
# The only statements the PLUMBING option lets through: the kernel's own BEGINs.
PLUMBING_STATEMENTS = frozenset({"BEGIN IMMEDIATE", "BEGIN DEFERRED"})


def tables_of(statement: Any) -> StatementTables:
    """Which tables a Core/ORM statement writes and reads.

    Every element is visited, so a write hidden in a CTE or a table hidden in a
    subquery is found. Textual SQL anywhere in the statement, and DDL, make it `raw`:
    its tables cannot be known, so module code may not run it.
    """
    if statement is None or isinstance(
        statement, (TextClause, TextualSelect, ExecutableDDLElement)
    ):
        return RAW
    writes: set[str] = set()
    names: set[str] = set()
    for element in visitors.iterate(statement):
        if isinstance(element, (TextClause, TextualSelect)):
            return RAW
        if isinstance(element, UpdateBase):
            writes.add(element.table.name)  # type: ignore[attr-defined]
        elif isinstance(element, TableClause):
            names.add(element.name)
    return StatementTables(frozenset(writes), frozenset(names - writes))


def _statement_tables(context: Any) -> StatementTables:
    compiled = getattr(context, "compiled", None)
    if compiled is None or context.isddl:
        return RAW
    cached = getattr(compiled, _CACHE_ATTR, None)
    if cached is None:
        cached = tables_of(compiled.statement)
        setattr(compiled, _CACHE_ATTR, cached)
    return cached


def check(module: str | None, tables: StatementTables, statement: str = "") -> None:
    """Raise OwnershipViolation when `module` may not run a statement touching `tables`.

    Outside any module, only statements that touch no registered table run (health
    checks, alembic's version table); operations that need more act as OPERATOR.
    """
    if module == OPERATOR:
        return
    if tables.raw:
        raise OwnershipViolation(module, RAW_SQL, "run", statement)
    if module is None:
        for table in tables.writes | tables.reads:
            if registry.owner_of(table) is not None:
                access = "write" if table in tables.writes else "read"
                raise OwnershipViolation(None, table, access, statement)
        return
    decl = registry.module(module)
    for table in tables.writes:
        if not decl.may_write(table):
            raise OwnershipViolation(module, table, "write", statement)
    for table in tables.reads:
        if not decl.may_read(table):
            raise OwnershipViolation(module, table, "read", statement)


def install_guard(
    engine: Engine, mode: str, role_prefix: str | None = None, *, autocommit: bool = False
) -> None:
    """Check every statement the engine runs ("raise"), only log breaches ("log"), or not.

    With `role_prefix` (PostgreSQL, phase 2) each statement also runs under its module's
    database role (`SET LOCAL ROLE <prefix><module>` when the acting module changes inside
    a transaction; `SET ROLE`, kept by the connection, on an `autocommit` engine, where
    there is no transaction for SET LOCAL to last), so the GRANTs from `flask ownership
    grants` are enforced by the database itself — also with the guard off.
    """
    if mode not in GUARD_MODES:
        raise ValueError(f"OWNERSHIP_GUARD must be one of {GUARD_MODES}, not {mode!r}")
    if role_prefix is not None:
        _install_role_switching(engine, role_prefix, autocommit=autocommit)
    if mode == "off":
        return
    # Note the 2.0 event signature: before_cursor_execute sees the execution context, whose
    # compiled statement SQLAlchemy caches; our analysis is cached on that object.

    @event.listens_for(engine, "before_cursor_execute")
    def _guard(
        _conn: Any, _cursor: Any, statement: str, _params: Any, context: Any, _many: bool
    ) -> None:
        module = _acting.get()
        if module == OPERATOR:
            return
        tables = _statement_tables(context)
        if (
            tables.raw
            and statement in PLUMBING_STATEMENTS
            and context.execution_options.get(PLUMBING)
        ):
            return
        try:
            check(module, tables, statement)
        except OwnershipViolation:
            if mode == "raise":
                raise
            log.error("ownership violation", exc_info=True)


_ROLE_KEY = "ownership_role"


def _install_role_switching(engine: Engine, prefix: str, *, autocommit: bool = False) -> None:
    set_role = "SET ROLE" if autocommit else "SET LOCAL ROLE"

    @event.listens_for(engine, "before_cursor_execute")
    def _switch_role(
        conn: Any, cursor: Any, _statement: str, _params: Any, _context: Any, _many: bool
    ) -> None:
        module = _acting.get()
        wanted = None if module in (None, OPERATOR) else f"{prefix}{module}"
        if conn.info.get(_ROLE_KEY) != wanted:
            # Role names come from the registry (identifiers we wrote), not from input.
            cursor.execute("RESET ROLE" if wanted is None else f"{set_role} {wanted}")
            conn.info[_ROLE_KEY] = wanted

    if autocommit:
        return  # a session's role stays with its connection: nothing ends it

    # SET LOCAL ends with the transaction (and a rollback to a savepoint may undo it): forget
    # what was set, so the next statement sets it again.
    def _forget(conn: Any, *_args: Any) -> None:
        conn.info.pop(_ROLE_KEY, None)

    for name in ("commit", "rollback", "rollback_savepoint"):
        event.listen(engine, name, _forget)

    @event.listens_for(engine, "checkin")
    def _forget_on_checkin(_dbapi_connection: Any, record: Any) -> None:
        record.info.pop(_ROLE_KEY, None)  # the pool's reset rolled the transaction back
