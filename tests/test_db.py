"""The database kernel: SQLite tuning, BEGIN IMMEDIATE, transaction(), PostgreSQL pool."""

from __future__ import annotations

import multiprocessing
import sqlite3
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import delete, func, insert, select, text

from app.auth.models import User
from app.kernel import events
from app.kernel.db import (
    TransactionMisuse,
    add_unique,
    get_database,
    get_session,
    make_sessionmaker,
    transaction,
    utcnow,
)
from app.kernel.engines import make_engine, sqlite_has_wal_reset_bug
from app.kernel.ids import new_id
from app.kernel.models import OutboxEvent
from app.kernel.ownership import KERNEL, OPERATOR, acting_as
from tests.helpers import engine_settings


def _sqlite_path(url: str) -> str:
    return url.removeprefix("sqlite:///")


def _outbox_events(session) -> int:
    """How many events the outbox holds."""
    with acting_as(KERNEL):
        return session.scalar(select(func.count()).select_from(OutboxEvent))


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_sqlite_connections_are_tuned(app):
    with app.app_context(), acting_as(OPERATOR):
        with get_database().engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 5000


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_write_transactions_take_the_sqlite_write_lock_at_begin(app, database_url):
    other = sqlite3.connect(_sqlite_path(database_url), timeout=0, isolation_level=None)
    try:
        with app.app_context():
            session = get_session()
            # A read-only use of the session does not lock out writers.
            with acting_as(KERNEL):
                session.execute(select(func.count()).select_from(OutboxEvent)).scalar()
            other.execute("BEGIN IMMEDIATE")
            other.execute("ROLLBACK")
            with transaction(session):
                # No statement yet, but the write lock is already ours.
                with pytest.raises(sqlite3.OperationalError, match="locked"):
                    other.execute("BEGIN IMMEDIATE")
            other.execute("BEGIN IMMEDIATE")  # released at commit
            other.execute("ROLLBACK")
    finally:
        other.close()


def test_transaction_commits_as_a_whole(app):
    with app.app_context():
        session = get_session()
        with acting_as(KERNEL), transaction(session):
            events.publish(session, "a", {})
            events.publish(session, "b", {})
        assert _outbox_events(session) == 2


def test_transaction_rolls_back_as_a_whole(app):
    with app.app_context():
        session = get_session()
        with pytest.raises(ZeroDivisionError), acting_as(KERNEL), transaction(session):
            events.publish(session, "a", {})
            _ = 1 / 0
        assert _outbox_events(session) == 0


def test_nested_transaction_is_part_of_the_outer_one(app):
    with app.app_context():
        session = get_session()
        with pytest.raises(KeyError), acting_as(KERNEL), transaction(session):
            with transaction(session):
                events.publish(session, "inner", {})
            raise KeyError("outer fails after the inner block ended")
        assert _outbox_events(session) == 0


def test_a_failed_nested_block_that_is_caught_leaves_nothing(app):
    with app.app_context():
        session = get_session()
        with acting_as(KERNEL), transaction(session):
            events.publish(session, "outer", {})
            with pytest.raises(KeyError):
                with transaction(session):
                    events.publish(session, "inner", {})
                    raise KeyError("inner fails; the caller handles it")
        with acting_as(KERNEL):
            types = session.scalars(select(OutboxEvent.event_type)).all()
        assert types == ["outer"]


def test_commit_inside_a_transaction_block_is_refused(app):
    with app.app_context():
        session = get_session()
        with pytest.raises(TransactionMisuse, match="services never commit"):
            with acting_as(KERNEL), transaction(session):
                events.publish(session, "a", {})
                session.commit()
        assert _outbox_events(session) == 0


def test_core_writes_outside_a_transaction_are_refused(app):
    with app.app_context():
        session = get_session()
        with acting_as(KERNEL), pytest.raises(TransactionMisuse, match="outside"):
            session.execute(
                insert(OutboxEvent).values(
                    event_id="evt_x", event_type="x", payload={}, created_at=utcnow(), attempts=0
                )
            )
        with acting_as(KERNEL), pytest.raises(TransactionMisuse):
            session.execute(delete(OutboxEvent))


def test_orm_writes_outside_a_transaction_are_refused(app):
    with app.app_context():
        session = get_session()
        with acting_as("auth"):
            session.add(User(user_id=new_id("usr"), email="a@x.io", password_hash="h"))
            with pytest.raises(TransactionMisuse, match="outside `with transaction"):
                session.flush()
            session.rollback()


def test_add_unique_answers_a_unique_clash_with_the_given_error(app):
    class Taken(Exception):
        pass

    def user() -> User:
        return User(user_id=new_id("usr"), email="a@x.io", password_hash="h")

    with app.app_context():
        session = get_session()
        with acting_as("auth"), transaction(session):
            add_unique(session, user(), Taken)
        with pytest.raises(Taken), acting_as("auth"), transaction(session):
            add_unique(session, user(), Taken)  # the same email: unique
        with acting_as("auth"):
            assert session.scalar(select(func.count()).select_from(User)) == 1


def test_timestamps_are_aware_utc_on_every_backend(app):
    with app.app_context():
        session = get_session()
        moment = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=9)))
        with acting_as(KERNEL), transaction(session):
            session.add(
                OutboxEvent(event_id="evt_t", event_type="t", payload={}, created_at=moment)
            )
        session.expunge_all()
        with acting_as(KERNEL):
            stored = session.scalars(
                select(OutboxEvent.created_at).where(OutboxEvent.event_id == "evt_t")
            ).one()
        assert stored.tzinfo is not None and stored.utcoffset() == timedelta(0)
        assert stored == moment
        assert stored.hour == 18  # 03:04 at +09:00 is 18:04 UTC the day before


def test_naive_timestamps_are_refused(app):
    with app.app_context():
        session = get_session()
        with (
            pytest.raises(Exception, match="naive datetime"),
            acting_as(KERNEL),
            transaction(session),
        ):
            session.add(OutboxEvent(event_type="t", payload={}, created_at=datetime(2026, 1, 1)))


def test_sqlite_wal_reset_bug_versions():
    assert sqlite_has_wal_reset_bug("3.40.1")
    assert sqlite_has_wal_reset_bug("3.51.2")
    assert sqlite_has_wal_reset_bug("3.50.6")
    assert sqlite_has_wal_reset_bug("3.45.0")
    assert not sqlite_has_wal_reset_bug("3.51.3")
    assert not sqlite_has_wal_reset_bug("3.52.0")
    assert not sqlite_has_wal_reset_bug("3.50.7")
    assert not sqlite_has_wal_reset_bug("3.44.6")


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_postgresql_connections_name_themselves_and_time_out(app):
    with app.app_context():
        engine = get_database().engine
        assert engine.pool.size() == 5
        with acting_as(OPERATOR), engine.connect() as conn:
            assert conn.execute(text("SHOW application_name")).scalar() == "licensing"
            assert conn.execute(text("SHOW statement_timeout")).scalar() == "15s"


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_postgresql_connections_idle_for_a_while_are_pinged(app, monkeypatch):
    """A connection idle longer than PING_AFTER_IDLE_SECONDS is pinged before use (one
    dropped silently on the way sends nothing to notice it by); one just checked in is not."""
    from app.kernel import engines

    with app.app_context():
        engine = get_database().engine
        pings: list[int] = []
        ping = engine.dialect.do_ping
        monkeypatch.setattr(engine.dialect, "do_ping", lambda c: pings.append(1) or ping(c))
        with acting_as(OPERATOR):
            for _ in range(2):
                with engine.connect() as conn:
                    assert conn.execute(text("SELECT 1")).scalar() == 1
            assert pings == []
            monkeypatch.setattr(engines, "PING_AFTER_IDLE_SECONDS", 0.0)
            with engine.connect() as conn:
                assert conn.execute(text("SELECT 1")).scalar() == 1
            assert pings == [1]


# --- real processes ------------------------------------------------------------------

WORKERS = 4
PER_WORKER = 25


def _read_then_write(url: str, worker: int, results) -> None:
    """Each transaction reads the count of ticks, then appends a tick recording it."""
    engine = make_engine(engine_settings(url, pool_size=1, max_overflow=0))
    sessions = make_sessionmaker(engine)
    errors = 0
    try:
        for i in range(PER_WORKER):
            with sessions() as session:
                try:
                    with acting_as(KERNEL), transaction(session):
                        seen = session.scalar(
                            select(func.count())
                            .select_from(OutboxEvent)
                            .where(OutboxEvent.event_type == "tick")
                        )
                        session.add(
                            OutboxEvent(
                                event_type="tick", payload={"seen": seen, "w": worker, "i": i}
                            )
                        )
                except Exception as exc:  # counted and reported, the test asserts none
                    errors += 1
                    results.put(("error", repr(exc)))
    finally:
        engine.dispose()
    results.put(("done", errors))


def _run_workers(url: str) -> list[tuple[str, object]]:
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=_read_then_write, args=(url, w, results)) for w in range(WORKERS)]
    for p in procs:
        p.start()
    messages = [results.get(timeout=120) for _ in range(WORKERS)]
    while (
        any(kind == "error" for kind, _ in messages)
        and len([m for m in messages if m[0] == "done"]) < WORKERS
    ):
        messages.append(results.get(timeout=120))
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return messages


def _ticks(url: str) -> list[dict]:
    engine = make_engine(engine_settings(url))
    try:
        with make_sessionmaker(engine)() as session, acting_as(OPERATOR):
            return [
                e.payload
                for e in session.scalars(
                    select(OutboxEvent).where(OutboxEvent.event_type == "tick")
                )
            ]
    finally:
        engine.dispose()


@pytest.mark.slow
def test_concurrent_writers_all_commit(database_url):
    """4 processes x 25 transactions: every one commits, none fails with SQLITE_BUSY."""
    messages = _run_workers(database_url)
    errors = [m for m in messages if m[0] == "error"]
    assert errors == []
    assert len(_ticks(database_url)) == WORKERS * PER_WORKER


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_sqlite_read_then_write_transactions_are_serialised(database_url):
    """BEGIN IMMEDIATE: no two transactions saw the same count, so none acted on stale data."""
    _run_workers(database_url)
    seen = sorted(t["seen"] for t in _ticks(database_url))
    assert seen == list(range(WORKERS * PER_WORKER))


def test_ids_are_prefixed_and_time_sortable():
    import re
    import time

    first = new_id("usr")
    time.sleep(0.002)  # a later millisecond: ULIDs sort by time first
    second = new_id("usr")
    assert re.fullmatch(r"usr_[0-9A-HJKMNP-TV-Z]{26}", first)  # Crockford base32
    assert first < second
    assert first != new_id("usr")
    with pytest.raises(ValueError):
        new_id("xyz")


def test_utc_now_is_aware():
    from app.kernel.db import utcnow

    assert utcnow().tzinfo is UTC
