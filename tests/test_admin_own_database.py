"""Phase 3: admin on its own database, fed by events through the outbox and Redis Streams.

Audit entries are committed as `audit.recorded` events with the caller's rows, relayed to a
Redis stream (`flask outbox relay`) and applied by admin's consumer group (`flask outbox
consume admin`) into admin's own database, each exactly once — also when the relay dies
between publishing and marking, the consumer dies between applying and acknowledging, or
Redis restarts empty.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections import defaultdict
from datetime import UTC, datetime

import pytest
import redis
from sqlalchemy import func, select, update

from app import create_app
from app.admin import api as admin_api
from app.admin.models import AuditLog, AuditLogArchive
from app.kernel import migrations
from app.kernel.db import get_session, transaction
from app.kernel.engines import make_engine
from app.kernel.events.consumer import EventConsumer
from app.kernel.events.relay import OutboxRelay
from app.kernel.models import EventLease, InboxEvent, OutboxEvent
from app.kernel.ownership import OPERATOR, acting_as
from tests.conftest import create_pg_database, drop_pg_database, pg_url
from tests.helpers import (
    FLASK,
    PG_SCHEMAS,
    ROOT,
    assert_problem,
    db_rows,
    db_scalar,
    engine_settings,
    project_env,
    run_flask,
    sign_up,
)

pytestmark = pytest.mark.redis
PASSWORD = "correct horse battery"


# --- fixtures ---------------------------------------------------------------------------


@pytest.fixture
def admin_url(backend, tmp_path, request):
    """Admin's own database, migrated, on the test's backend."""
    if backend == "sqlite":
        path = tmp_path / "admin.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        yield f"sqlite:///{path}"
        return
    name = create_pg_database("lic_admin")
    try:
        migrations.upgrade(pg_url(name), schemas=PG_SCHEMAS)
        yield pg_url(name)
    finally:
        drop_pg_database(name)


@pytest.fixture
def stream(redis_url):
    """A stream of the test's own on the shared Redis, deleted afterwards."""
    name = f"test:{uuid.uuid4().hex[:10]}:events"
    yield name
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(f"{name}*"):
        client.delete(key)
    client.close()


@pytest.fixture
def phase3_config(app_config, admin_url, redis_url, stream):
    app_config.update(MODULE_DATABASE_URLS={"admin": admin_url}, REDIS_URL=redis_url)
    app_config["OUTBOX_STREAM"] = stream
    return app_config


@pytest.fixture
def phase3_app(phase3_config):
    application = create_app(phase3_config)
    yield application
    application.extensions["db"].dispose()


def cli_env(config: dict, **extra: str) -> dict[str, str]:
    """The environment of a `flask` child process on the same databases and stream."""
    return project_env(
        APP_ENV="testing",
        DATABASE_URL=config["DATABASE_URL"],
        ADMIN_DATABASE_URL=config["MODULE_DATABASE_URLS"]["admin"],
        REDIS_URL=config["REDIS_URL"],
        OUTBOX_STREAM=config["OUTBOX_STREAM"],
        LOG_LEVEL="WARNING",
        **extra,
    )


def audit_ids(url: str) -> list[str]:
    return [r.log_id for r in db_rows(url, select(AuditLog.log_id))]


def record_events(app, n: int, aggregates: int = 5, action: str = "TEST_EVENT") -> list[str]:
    """n audit entries (each its own transaction) spread over a few users; their log ids."""
    with app.app_context():
        session = get_session()
        ids = []
        for i in range(n):
            with transaction(session):
                ids.append(
                    admin_api.record_audit(
                        session, action, user_id=f"usr_agg{i % aggregates}", details={"i": i}
                    )
                )
        return ids


def relay_for(app, **options) -> OutboxRelay:
    config = app.config
    with app.app_context():
        sessions = app.extensions["db"].sessions_for("kernel")
    return OutboxRelay(
        sessions,
        redis.Redis.from_url(config["REDIS_URL"], decode_responses=True),
        stream=config["OUTBOX_STREAM"],
        groups=["admin"],
        **options,
    )


def expire_leases(app) -> None:
    """Every relay lease in the main database runs out now: an explicit step, so that no test
    races a short lease against the machine's speed."""
    engine = make_engine(engine_settings(app.config["DATABASE_URL"], pool_size=1, max_overflow=0))
    try:
        with acting_as(OPERATOR), engine.begin() as conn:
            conn.execute(update(EventLease).values(expires_at=datetime(2000, 1, 1, tzinfo=UTC)))
    finally:
        engine.dispose()


def consumer_for(app, name: str = "c1", **options) -> EventConsumer:
    return EventConsumer(
        "admin",
        app.extensions["db"].sessions_for("admin"),
        redis.Redis.from_url(app.config["REDIS_URL"], decode_responses=True),
        stream=app.config["OUTBOX_STREAM"],
        name=name,
        block_ms=50,
        **options,
    )


def drain(consumer: EventConsumer) -> int:
    handled = 0
    while count := consumer.poll_once():
        handled += count
    return handled


def stream_entries(app) -> list[dict]:
    client = redis.Redis.from_url(app.config["REDIS_URL"], decode_responses=True)
    return [fields for _id, fields in client.xrange(app.config["OUTBOX_STREAM"])]


def assert_exactly_once(app, expected_ids: list[str]) -> None:
    """Admin's database holds each expected entry once and nothing else; its inbox one row
    per applied event."""
    admin_url = app.config["MODULE_DATABASE_URLS"]["admin"]
    stored = audit_ids(admin_url)
    assert sorted(stored) == sorted(expected_ids)
    assert len(set(stored)) == len(stored)
    assert db_scalar(admin_url, select(func.count()).select_from(InboxEvent)) == len(expected_ids)


# --- the happy path -------------------------------------------------------------------------


def test_audit_entries_travel_through_the_outbox_to_admins_database(phase3_app, runner):
    client = phase3_app.test_client()
    bearer = sign_up(client).headers
    lic = client.post("/api/v1/licenses/activate", json={"client_id": "box"}, headers=bearer)
    assert lic.status_code == 201
    made = runner.invoke(
        args=["users", "create-admin", "root@example.com", "--password-stdin"],
        input=PASSWORD + "\n",
    )
    assert made.exit_code == 0, made.output

    config = phase3_app.config
    main_url, admin_url = config["DATABASE_URL"], config["MODULE_DATABASE_URLS"]["admin"]
    # Nothing in either audit table yet: the entries are events, committed with the rows.
    assert audit_ids(main_url) == [] and audit_ids(admin_url) == []
    events = db_rows(main_url, select(OutboxEvent).order_by(OutboxEvent.seq))
    audit_events = [e for e in events if e.event_type == "audit.recorded"]
    actions = [e.payload["action"] for e in audit_events]
    assert actions == ["USER_REGISTERED", "LOGIN_SUCCEEDED", "LICENSE_CREATED", "ADMIN_CREATED"]
    assert [e.seq for e in events] == sorted(e.seq for e in events)

    relayed = runner.invoke(args=["outbox", "relay", "--once"])
    assert relayed.exit_code == 0, relayed.output
    assert f"published {len(events)}, confirmed 0" in relayed.output
    consumed = runner.invoke(
        args=["outbox", "consume", "admin", "--until-idle", "--block-ms", "50"]
    )
    assert consumed.exit_code == 0, consumed.output
    assert f"handled {len(events)} event(s)" in consumed.output
    assert_exactly_once(phase3_app, [e.payload["log_id"] for e in audit_events])

    relayed = runner.invoke(args=["outbox", "relay", "--once"])
    assert f"published 0, confirmed {len(events)}" in relayed.output
    status = runner.invoke(args=["outbox", "status"]).output
    assert status.startswith("unpublished 0, unconfirmed 0")

    # The admin API reads the audit log from admin's own database.
    admin_token = client.post(
        "/api/v1/auth/login", json={"email": "root@example.com", "password": PASSWORD}
    ).get_json()["access_token"]
    logs = client.get(
        "/api/v1/admin/audit-logs", headers={"Authorization": f"Bearer {admin_token}"}
    ).get_json()
    assert {item["action"] for item in logs["items"]} == set(actions)
    ready = client.get("/readyz").get_json()
    assert ready["checks"]["admin_database"] == "ok" and ready["checks"]["admin_migrations"] == "ok"


def test_configuration_of_module_databases(tmp_path):
    from app.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="only admin can run on its own database"):
        load_config(tmp_path, env={"AUTH_DATABASE_URL": f"sqlite:///{tmp_path}/a.db"})
    with pytest.raises(ConfigError, match="ADMIN_DATABASE_URL must name a SQLite file"):
        load_config(tmp_path, env={"ADMIN_DATABASE_URL": "sqlite://"})
    config = load_config(tmp_path, env={"ADMIN_DATABASE_URL": f"sqlite:///{tmp_path}/a.db"})
    assert config["MODULE_DATABASE_URLS"] == {"admin": f"sqlite:///{tmp_path}/a.db"}


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_phase3_readiness_names_the_admin_database(phase3_config, tmp_path):
    (tmp_path / "never-migrated.db").touch(mode=0o600)  # only `db upgrade` would create it
    phase3_config["MODULE_DATABASE_URLS"] = {"admin": f"sqlite:///{tmp_path}/never-migrated.db"}
    application = create_app(phase3_config)
    body = assert_problem(application.test_client().get("/readyz"), 503, "not_ready")
    assert body["checks"]["migrations"] == "ok"
    assert body["checks"]["admin_migrations"] == "behind"
    application.extensions["db"].dispose()


def test_copy_module_brings_the_history_along(app, phase3_config):
    """Moving to phase 3: audit entries written in phase 1 are copied into admin's database."""
    before = record_events(app, 25)  # phase 1: straight into the main database
    phase3 = create_app(phase3_config)
    runner = phase3.test_cli_runner()
    try:
        first = runner.invoke(args=["db", "copy-module", "admin", "--batch-size", "10"])
        assert first.exit_code == 0, first.output
        assert "audit_logs: copied 25; 25 in main, 25 in admin" in first.output
        again = runner.invoke(args=["db", "copy-module", "admin"])
        assert "audit_logs: copied 0; 25 in main, 25 in admin" in again.output
        assert sorted(audit_ids(phase3_config["MODULE_DATABASE_URLS"]["admin"])) == sorted(before)
    finally:
        phase3.extensions["db"].dispose()


# --- the relay: one publisher, in order ---------------------------------------------------


def test_one_relay_holds_the_lease_the_other_waits(phase3_app):
    record_events(phase3_app, 10)
    first = relay_for(phase3_app, lease_seconds=600)
    second = relay_for(phase3_app, lease_seconds=600)
    assert first.run_once().published == 10
    standby = second.run_once()
    assert not standby.leader and standby.published == 0
    # The holder stops renewing (it died): once its lease runs out the other takes over.
    record_events(phase3_app, 3)
    expire_leases(phase3_app)
    assert second.run_once().published == 3
    assert not first.run_once().leader
    assert [int(f["seq"]) for f in stream_entries(phase3_app)] == list(range(1, 14))


def _relay_process(config: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [*FLASK, "outbox", "relay", "--interval", "0.05"],
        cwd=ROOT,
        env=cli_env(config, OUTBOX_BATCH_SIZE="7", OUTBOX_LEASE_SECONDS="1"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_two_relays_at_once_publish_every_event_in_order(phase3_app, phase3_config):
    """Two relay processes race over a growing outbox: every event reaches the stream, the
    first copy of each comes in outbox order, and each is applied once."""
    relays = [_relay_process(phase3_config) for _ in range(2)]
    try:
        ids = record_events(phase3_app, 120, aggregates=4)
        main_url = phase3_config["DATABASE_URL"]
        unpublished = select(func.count()).where(OutboxEvent.published_at.is_(None))
        _wait_until(lambda: db_scalar(main_url, unpublished) == 0, 60, "every event published")
        # Kill the lease holder mid-flight; the standby takes over when the lease runs out.
        holder = db_scalar(main_url, select(EventLease.holder))
        [victim] = [proc for proc in relays if f"-{proc.pid}-" in holder]
        victim.send_signal(signal.SIGKILL)
        more = record_events(phase3_app, 30, aggregates=4)
        _wait_until(lambda: db_scalar(main_url, unpublished) == 0, 60, "the survivor to take over")
    finally:
        for proc in relays:
            proc.kill()
            proc.communicate()
    seen: set[str] = set()
    first_seqs = []
    by_aggregate = defaultdict(list)
    for fields in stream_entries(phase3_app):
        if fields["event_id"] not in seen:
            seen.add(fields["event_id"])
            first_seqs.append(int(fields["seq"]))
            by_aggregate[fields["aggregate_id"]].append(int(fields["seq"]))
    assert len(seen) == len(ids) + len(more)
    assert first_seqs == sorted(first_seqs)
    assert all(seqs == sorted(seqs) for seqs in by_aggregate.values())
    consumer = consumer_for(phase3_app)
    drain(consumer)
    assert_exactly_once(phase3_app, ids + more)


# --- faults ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_relay_killed_between_publish_and_mark(phase3_app, phase3_config):
    ids = record_events(phase3_app, 20)
    env = cli_env(phase3_config, FAILPOINTS="outbox.relay.after_publish", OUTBOX_LEASE_SECONDS="1")
    killed = run_flask("outbox", "relay", "--once", env=env)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    main_url = phase3_config["DATABASE_URL"]
    # In Redis, but the outbox does not know: all 20 still unpublished.
    assert len(stream_entries(phase3_app)) == 20
    unpublished = select(func.count()).where(OutboxEvent.published_at.is_(None))
    assert db_scalar(main_url, unpublished) == 20

    time.sleep(1.1)  # the dead relay's lease runs out; the next one takes over
    again = run_flask("outbox", "relay", "--once", env=cli_env(phase3_config))
    assert again.returncode == 0, again.stderr
    assert "published 20" in again.stdout
    assert len(stream_entries(phase3_app)) == 40  # every event twice in the stream …
    drained = run_flask(
        "outbox", "consume", "admin", "--until-idle", "--block-ms", "50", env=cli_env(phase3_config)
    )
    assert drained.returncode == 0, drained.stderr
    assert_exactly_once(phase3_app, ids)  # … and once in admin's database
    confirm = run_flask("outbox", "relay", "--once", env=cli_env(phase3_config))
    assert "confirmed 20" in confirm.stdout


@pytest.mark.slow
def test_consumer_killed_between_apply_and_ack(phase3_app, phase3_config):
    ids = record_events(phase3_app, 15)
    assert relay_for(phase3_app).run_once().published == 15
    consume = [
        "outbox",
        "consume",
        "admin",
        "--name",
        "worker-1",
        "--until-idle",
        "--block-ms",
        "50",
    ]
    killed = run_flask(
        *consume, env=cli_env(phase3_config, FAILPOINTS="outbox.consume.after_apply")
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    admin_url = phase3_config["MODULE_DATABASE_URLS"]["admin"]
    assert len(audit_ids(admin_url)) == 1  # applied and committed …
    client = redis.Redis.from_url(phase3_config["REDIS_URL"], decode_responses=True)
    assert client.xpending(phase3_config["OUTBOX_STREAM"], "admin")["pending"] >= 1  # … not acked

    restarted = run_flask(*consume, env=cli_env(phase3_config))
    assert restarted.returncode == 0, restarted.stderr
    assert "handled 15 event(s)" in restarted.stdout  # the pending one again, then the rest
    assert_exactly_once(phase3_app, ids)
    assert client.xpending(phase3_config["OUTBOX_STREAM"], "admin")["pending"] == 0


@pytest.mark.slow
def test_redis_restarting_empty_loses_nothing_unacknowledged(phase3_config, private_redis):
    """Applied-and-confirmed, applied-but-unconfirmed and never-applied events around a
    Redis that restarts with nothing: afterwards every entry is in admin's database once."""
    phase3_config["REDIS_URL"] = private_redis.url
    app = create_app(phase3_config)
    try:
        ids = record_events(app, 30)
        relay, consumer = relay_for(app), consumer_for(app)
        assert relay.run_once().published == 30
        assert consumer.poll_once(limit=10) == 10
        assert relay.run_once().confirmed == 10  # safe: acknowledged by the group
        assert consumer.poll_once(limit=5) == 5  # applied, acknowledged, not yet confirmed

        private_redis.restart()  # the stream, its group and the epoch are gone
        later = record_events(app, 12)
        relay, consumer = relay_for(app, holder=relay.holder), consumer_for(app)
        report = relay.run_once()
        assert report.republished == 20  # the 20 unconfirmed ones, not the 10 confirmed
        assert report.published == 32
        drain(consumer)
        assert_exactly_once(app, ids + later)
        assert relay.run_once().confirmed == 32
    finally:
        app.extensions["db"].dispose()


@pytest.mark.slow
def test_relay_and_consumer_ride_out_a_redis_restart_under_load(phase3_config, private_redis):
    """Real relay and consumer processes while events keep coming; Redis is SIGKILLed and
    comes back empty. Every audit entry arrives exactly once, with no restart of either."""
    phase3_config["REDIS_URL"] = private_redis.url
    app = create_app(phase3_config)
    env = cli_env(phase3_config)
    procs = [
        subprocess.Popen(
            [*FLASK, "outbox", "relay", "--interval", "0.05"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        ),
        subprocess.Popen(
            [*FLASK, "outbox", "consume", "admin", "--block-ms", "100"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        ),
    ]
    ids: list[str] = []
    stop = threading.Event()

    def produce() -> None:
        while not stop.is_set():
            ids.extend(record_events(app, 5))
            time.sleep(0.02)

    producer = threading.Thread(target=produce)
    producer.start()
    admin_url = phase3_config["MODULE_DATABASE_URLS"]["admin"]
    try:
        _wait_until(lambda: len(audit_ids(admin_url)) >= 40, 60, "entries before the restart")
        private_redis.kill()
        time.sleep(1.0)  # events pile up in the outbox meanwhile
        private_redis.start()
        _wait_until(lambda: len(ids) >= 300, 60, "more events after the restart")
        stop.set()
        producer.join()
        unconfirmed = select(func.count()).where(OutboxEvent.confirmed_at.is_(None))
        _wait_until(
            lambda: db_scalar(phase3_config["DATABASE_URL"], unconfirmed) == 0,
            90,
            "every event confirmed",
        )
    finally:
        stop.set()
        producer.join()
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        outputs = [proc.communicate(timeout=30)[1] for proc in procs]
        app.extensions["db"].dispose()
    assert [proc.returncode for proc in procs] == [0, 0], outputs
    assert_exactly_once(app, ids)


def test_a_poison_event_is_set_aside_durably_not_blocking(phase3_app, runner):
    """An event the handler cannot apply is retried, then kept in admin's database as a
    dead letter and acknowledged; the events behind it flow on, in order."""
    from app.kernel import events

    good = record_events(phase3_app, 3)
    with phase3_app.app_context():
        session = get_session()
        with transaction(session):
            bad = events.publish(session, "audit.recorded", {"log_id": "log_bad"}, aggregate_id="x")
    good += record_events(phase3_app, 2)
    relay_for(phase3_app).run_once()
    drain(consumer_for(phase3_app))
    assert_exactly_once(phase3_app, good)
    client = redis.Redis.from_url(phase3_app.config["REDIS_URL"], decode_responses=True)
    assert client.xpending(phase3_app.config["OUTBOX_STREAM"], "admin")["pending"] == 0
    listed = runner.invoke(args=["outbox", "dead-letters", "admin"])
    assert bad in listed.output and "bad audit.recorded payload: action" in listed.output
    retried = runner.invoke(args=["outbox", "dead-letters", "admin", "--retry"])
    assert "failed again" in retried.output
    assert bad in runner.invoke(args=["outbox", "dead-letters", "admin"]).output  # still kept


def test_a_database_outage_is_waited_out_not_dead_lettered(phase3_app):
    """Admin's database away for a while: the consumer backs off and comes back to the same
    entry; nothing is set aside, nothing lost, nothing reordered."""
    from sqlalchemy.exc import OperationalError

    from app.kernel.models import DeadLetter

    ids = record_events(phase3_app, 6)
    relay_for(phase3_app).run_once()
    consumer = consumer_for(phase3_app)
    working = consumer.sessions
    outage = {"left": 5}

    def sessions():
        if outage["left"]:
            outage["left"] -= 1
            raise OperationalError("connect", {}, ConnectionRefusedError("admin database down"))
        return working()

    consumer.sessions = sessions
    for _ in range(5):
        with pytest.raises(OperationalError):
            consumer.poll_once()
    drain(consumer)
    assert_exactly_once(phase3_app, ids)
    admin_url = phase3_app.config["MODULE_DATABASE_URLS"]["admin"]
    assert db_scalar(admin_url, select(func.count()).select_from(DeadLetter)) == 0
    applied = [
        r.event_id for r in db_rows(admin_url, select(InboxEvent).order_by(InboxEvent.processed_at))
    ]
    assert applied == [f["event_id"] for f in stream_entries(phase3_app)]


def test_a_failed_apply_holds_back_the_entries_behind_it(phase3_app):
    ids = record_events(phase3_app, 5, aggregates=1)
    relay_for(phase3_app).run_once()
    consumer = consumer_for(phase3_app)
    apply, failed = consumer.handlers["audit.recorded"], []

    def flaky(session, event):
        if event.payload["details"]["i"] == 1 and not failed:
            failed.append(event.id)
            raise RuntimeError("a hiccup")
        apply(session, event)

    consumer.handlers["audit.recorded"] = flaky
    drain(consumer)
    assert failed
    assert_exactly_once(phase3_app, ids)
    admin_url = phase3_app.config["MODULE_DATABASE_URLS"]["admin"]
    applied = [
        r.event_id for r in db_rows(admin_url, select(InboxEvent).order_by(InboxEvent.processed_at))
    ]
    assert applied == [f["event_id"] for f in stream_entries(phase3_app)]


def test_redis_restarting_in_the_middle_of_a_relay_round(phase3_config, private_redis):
    """The relay read the epoch, then Redis restarted empty (and the consumer already made
    a new stream and group): nothing is published into the new Redis under the old epoch,
    nothing is confirmed by mistake, and the next round delivers everything once."""
    phase3_config["REDIS_URL"] = private_redis.url
    app = create_app(phase3_config)
    try:
        ids = record_events(app, 10)
        relay = relay_for(app)
        assert relay.run_once().published == 10
        assert consumer_for(app).poll_once(limit=4) == 4
        later = record_events(app, 3)
        forget = relay._forget_lost

        def restart_then_forget(epoch):
            private_redis.restart()
            consumer_for(app).poll_once()  # recreates stream and group, reads nothing
            return forget(epoch)

        relay._forget_lost = restart_then_forget
        relay.redis = redis.Redis.from_url(private_redis.url, decode_responses=True)
        report = relay.run_once()
        assert report.published == 0 and report.confirmed == 0
        relay._forget_lost = forget
        report = relay.run_once()
        assert report.republished == 10 and report.published == 13
        drain(consumer_for(app))
        assert_exactly_once(app, ids + later)
        assert relay.run_once().confirmed == 13
    finally:
        app.extensions["db"].dispose()


def test_a_stream_that_lost_entries_but_kept_its_epoch_starts_a_new_one(phase3_app):
    """A failover or a restored snapshot: the epoch key survived, the newest entries did
    not. The relay notices (the stream ends before what it had reached) and publishes
    every unconfirmed event again."""
    ids = record_events(phase3_app, 8)
    relay = relay_for(phase3_app)
    assert relay.run_once().published == 8
    client = redis.Redis.from_url(phase3_app.config["REDIS_URL"], decode_responses=True)
    stream = phase3_app.config["OUTBOX_STREAM"]
    client.delete(stream)  # the entries and the group are gone; the epoch key is not
    consumer_for(phase3_app).poll_once()  # a consumer recreates an empty stream and group
    more = record_events(phase3_app, 2)
    assert relay.run_once().published == 0  # refused: the stream went back in time
    report = relay.run_once()
    assert report.republished == 8 and report.published == 10
    drain(consumer_for(phase3_app))
    assert_exactly_once(phase3_app, ids + more)


def test_audit_archive_works_in_admins_own_database(phase3_app, runner):
    ids = record_events(phase3_app, 12)
    relay_for(phase3_app).run_once()
    drain(consumer_for(phase3_app))
    admin_url = phase3_app.config["MODULE_DATABASE_URLS"]["admin"]
    engine = make_engine(engine_settings(admin_url, pool_size=1, max_overflow=0))
    with acting_as(OPERATOR), engine.begin() as conn:  # make them old
        conn.execute(update(AuditLog).values(timestamp=datetime(2020, 1, 1, tzinfo=UTC)))
    engine.dispose()
    result = runner.invoke(args=["audit", "archive", "--older-than", "90d", "--batch-size", "5"])
    assert result.exit_code == 0, result.output
    assert "archived 12 audit entries" in result.output
    archived = db_rows(admin_url, select(AuditLogArchive.log_id))
    assert sorted(r.log_id for r in archived) == sorted(ids)
    assert audit_ids(admin_url) == []


def test_another_consumer_takes_over_what_a_dead_one_left_pending(phase3_app):
    """One consumer per group: a second waits for the lock, then applies first what the
    dead one had received, then the rest — in stream order, each once."""
    ids = record_events(phase3_app, 10)
    relay_for(phase3_app).run_once()
    dead = consumer_for(phase3_app, name="a", lock_ms=60_000)
    assert dead.poll_once(limit=1) == 1  # applies one …
    assert len(dead._read(">", 4)) == 4  # … receives four more, and dies before applying them
    heir = consumer_for(phase3_app, name="b", lock_ms=60_000)
    assert heir.poll_once() == 0 and heir.waiting  # the dead one's lock is still live
    # The dead one's lock runs out: an explicit step, not a race against the machine's speed.
    assert dead.redis.pexpire(dead._lock_key, 1)
    while dead.redis.exists(dead._lock_key):
        time.sleep(0.01)
    drain(heir)
    assert not heir.waiting
    assert_exactly_once(phase3_app, ids)
    admin_url = phase3_app.config["MODULE_DATABASE_URLS"]["admin"]
    applied = [
        r.event_id for r in db_rows(admin_url, select(InboxEvent).order_by(InboxEvent.processed_at))
    ]
    published = [f["event_id"] for f in stream_entries(phase3_app)]
    assert applied == published


def test_a_clean_exit_hands_the_lock_over_at_once(phase3_app, runner):
    record_events(phase3_app, 3)
    relay_for(phase3_app).run_once()
    first = runner.invoke(
        args=["outbox", "consume", "admin", "--name", "x", "--until-idle", "--block-ms", "50"]
    )
    assert first.exit_code == 0, first.output
    second = runner.invoke(
        args=["outbox", "consume", "admin", "--name", "y", "--until-idle", "--block-ms", "50"]
    )
    assert second.exit_code == 0, second.output  # not "another consumer holds the lock"
    holder = consumer_for(phase3_app, name="z", lock_ms=10_000)
    assert holder._hold_lock()
    third = runner.invoke(
        args=["outbox", "consume", "admin", "--name", "y", "--until-idle", "--block-ms", "50"]
    )
    assert third.exit_code == 1 and "holds the lock" in third.output


def test_an_idle_relay_round_only_renews_its_lease(phase3_app):
    """With everything confirmed, a round writes nothing but the lease (SQLite serialises
    writers: a relay polling twice a second must not compete with the app for nothing)."""
    from sqlalchemy import event

    record_events(phase3_app, 3)
    relay = relay_for(phase3_app)
    relay.run_once()
    drain(consumer_for(phase3_app))
    assert relay.run_once().confirmed == 3
    engine = phase3_app.extensions["db"].engine
    writes: list[str] = []

    def capture(_conn, _cursor, statement, *_args):
        if statement.lstrip().upper().startswith(("INSERT", "UPDATE", "DELETE")):
            writes.append(statement)

    event.listen(engine, "before_cursor_execute", capture)
    try:
        for _ in range(3):
            assert relay.run_once().leader
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    assert len(writes) == 3 and all("event_leases" in w for w in writes), writes
