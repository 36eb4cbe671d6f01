"""Restores that lose nothing acknowledged afterwards (while gunicorn runs), backups that
stay private, and no database password on a command line."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from sqlalchemy import text

from app.operations import backups
from tests.helpers import (
    db_rows,
    gunicorn_server,
    http,
    in_layout,
    login_over_http,
    project_env,
    register,
    register_over_http,
    run_flask,
)

pytestmark = pytest.mark.slow


def _emails(url: str) -> set[str]:
    return {r[0] for r in db_rows(url, text(f"SELECT email FROM {in_layout('users', url)}"))}


def test_restore_while_gunicorn_runs_keeps_what_is_acknowledged_afterwards(
    database_url, tmp_path, signing_key_file, backend
):
    env = project_env(APP_ENV="testing", DATABASE_URL=database_url, BACKUP_DIR=str(tmp_path))
    settings = {"LICENSE_SIGNING_KEYS": signing_key_file, "SANDBOX_LEDGER": str(tmp_path / "l")}
    with gunicorn_server(database_url, workers=2, **settings) as base:
        assert register_over_http(base, "before@example.com")[0] == 201
        made = run_flask("backup", "create", env=env)
        assert made.returncode == 0, made.stderr
        [(backup, _)] = backups.list_backups(tmp_path)
        assert register_over_http(base, "replaced@example.com")[0] == 201
        for _ in range(20):  # every worker holds an open connection to the database
            assert http("GET", base + "/readyz")[0] == 200
        restored = run_flask("backup", "restore", str(backup), "--force", env=env)
        assert restored.returncode == 0, restored.stderr
        # The running workers see the restored database, and what they acknowledge now stays.
        assert [register_over_http(base, f"after{i}@example.com")[0] for i in range(4)] == [201] * 4
        status, body, _ = login_over_http(base, "after0@example.com")
        assert status == 200, body
    assert _emails(database_url) == {"before@example.com"} | {
        f"after{i}@example.com" for i in range(4)
    }
    with gunicorn_server(database_url, workers=1, **settings) as base:  # after a restart, too
        status, _, _ = login_over_http(base, "after3@example.com")
        assert status == 200


def test_restoring_into_a_missing_database_is_one_line(database_url, tmp_path, backend):
    env = project_env(APP_ENV="testing", DATABASE_URL=database_url, BACKUP_DIR=str(tmp_path))
    assert run_flask("backup", "create", env=env).returncode == 0
    [(backup, _)] = backups.list_backups(tmp_path)
    if backend == "sqlite":
        missing = f"sqlite:///{tmp_path}/no-such-folder/app.db"
    else:
        missing = database_url.rpartition("/")[0] + "/lic_no_such_database"
    result = run_flask(
        "backup", "restore", str(backup), "--force", env={**env, "DATABASE_URL": missing}
    )
    lines = result.stderr.strip().splitlines()
    assert result.returncode in (1, 2) and len(lines) == 1, result.stderr
    assert "no-such-folder" in lines[0] or "lic_no_such_database" in lines[0], lines[0]


def test_backups_are_private_whatever_the_umask(database_url, tmp_path, backend):
    folder = tmp_path / "bk"
    env = project_env(APP_ENV="testing", DATABASE_URL=database_url, BACKUP_DIR=str(folder))
    old = os.umask(0o022)
    try:
        assert run_flask("backup", "create", env=env).returncode == 0
        [(backup, _)] = backups.list_backups(folder)
        restored = run_flask("backup", "restore", str(backup), "--force", env=env)
        assert restored.returncode == 0, restored.stderr
    finally:
        os.umask(old)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    made = [p for p in folder.iterdir()] + [
        p for p in Path(database_url.split("///")[-1]).parent.glob("*.replaced-*")
    ]
    assert len(made) >= 3  # the backup, its manifest, the copy of what was replaced
    for path in made:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


WRAPPER = """#!/bin/sh
# Records the command line the program really runs with, and its environment's names.
{{ tr '\\0' ' ' < /proc/$$/cmdline; echo; env | cut -d= -f1 | tr '\\n' ' '; echo; }} >> {log}
exec {real} "$@"
"""


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_no_password_on_a_command_line(database_url, tmp_path):
    import shutil

    secret = "pw-never-on-a-command-line"
    url = database_url.replace("postgresql://postgres@", f"postgresql://postgres:{secret}@")
    assert secret in url
    bindir, log = tmp_path / "bin", tmp_path / "calls.log"
    bindir.mkdir()
    for tool in ("pg_dump", "pg_restore", "psql"):
        real = shutil.which(tool)
        (bindir / tool).write_text(WRAPPER.format(log=log, real=real))
        (bindir / tool).chmod(0o755)
    env = project_env(
        APP_ENV="testing",
        DATABASE_URL=url,
        BACKUP_DIR=str(tmp_path / "bk"),
        PATH=f"{bindir}:{os.environ['PATH']}",
    )
    assert run_flask("backup", "create", env=env).returncode == 0
    [(backup, _)] = backups.list_backups(tmp_path / "bk")
    assert run_flask("backup", "verify", str(backup), env=env).returncode == 0
    restored = run_flask("backup", "restore", str(backup), "--force", env=env)
    assert restored.returncode == 0, restored.stderr
    calls = log.read_text().splitlines()
    command_lines, env_names = calls[0::2], calls[1::2]
    used = {line.split()[1].rsplit("/", 1)[-1] for line in command_lines}
    assert used == {"pg_dump", "pg_restore"}, command_lines
    assert len(command_lines) >= 4  # dump, verify, verify again, dump of the replaced, restore
    for line in command_lines:
        assert secret not in line, line
    assert all("PGPASSWORD" in names.split() for names in env_names)


# --- phase 3: admin's own database is backed up and restored with the main one ----------


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_phase3_backups_cover_admins_database(app_config, sqlite_template, tmp_path):
    import shutil

    from sqlalchemy import insert, select, update

    from app import create_app
    from app.admin.models import AuditLog
    from app.kernel.engines import EngineSettings, make_engine
    from app.kernel.models import InboxEvent, OutboxEvent
    from app.kernel.ownership import OPERATOR, acting_as

    admin_url = f"sqlite:///{tmp_path}/admin.db"
    shutil.copy(sqlite_template, tmp_path / "admin.db")
    config = {**app_config, "MODULE_DATABASE_URLS": {"admin": admin_url}}
    main_url = config["DATABASE_URL"]

    def run(url, *statements):
        engine = make_engine(EngineSettings(url=url, guard_mode="off"))
        try:
            with acting_as(OPERATOR), engine.begin() as conn:
                return [conn.execute(s) for s in statements][-1]
        finally:
            engine.dispose()

    def rows(url, stmt):
        engine = make_engine(EngineSettings(url=url, guard_mode="off"))
        try:
            with acting_as(OPERATOR), engine.connect() as conn:
                return list(conn.execute(stmt))
        finally:
            engine.dispose()

    def deliver(event_id, *, applied=True):
        """What relay and consumer do: admin applies the event; the outbox confirms it."""
        if applied:
            run(
                admin_url,
                insert(AuditLog).values(log_id=f"log_{event_id[-20:]}", action="DELIVERED"),
                insert(InboxEvent).values(consumer="admin", event_id=event_id),
            )
        run(
            main_url,
            update(OutboxEvent)
            .where(OutboxEvent.event_id == event_id)
            .values(published_at=utcnow(), confirmed_at=utcnow(), stream_ref="e/1-0"),
        )

    from app.kernel.db import utcnow

    app = create_app(config)
    runner, client = app.test_cli_runner(), app.test_client()
    try:
        assert register(client, "kept@example.com").status_code == 201
        # The events admin consumes (audit entries); a registration also publishes
        # user.registered, for webhooks, which admin does not consume.
        audit_events = select(OutboxEvent.event_id).where(
            OutboxEvent.event_type == "audit.recorded"
        )
        [kept_event] = [r[0] for r in rows(main_url, audit_events)]
        deliver(kept_event)
        # An event the main database counts as delivered, but admin's backup will not hold.
        assert register(client, "second@example.com").status_code == 201
        lost_event = next(r[0] for r in rows(main_url, audit_events) if r[0] != kept_event)
        run(
            main_url,
            update(OutboxEvent)
            .where(OutboxEvent.event_id == lost_event)
            .values(published_at=utcnow(), confirmed_at=utcnow(), stream_ref="e/2-0"),
        )
        made = runner.invoke(args=["backup", "create"])
        assert made.exit_code == 0, made.output
        [(backup, manifest)] = backups.list_backups(tmp_path / "backups")
        assert manifest.parts == {"admin": backup.name.replace(".db", "-admin.db")}
        admin_part = backup.with_name(manifest.parts["admin"])
        assert admin_part.exists() and backups.read_manifest(admin_part).database == "admin"
        assert "+ admin:" in made.output

        assert register(client, "replaced@example.com").status_code == 201
        run(admin_url, insert(AuditLog).values(log_id="log_replaced", action="REPLACED"))
        app.extensions["db"].dispose()
        restored = runner.invoke(args=["backup", "restore", str(backup), "--force"])
        assert restored.exit_code == 0, restored.output
        assert "admin: restored" in restored.output and "main: restored" in restored.output
        assert "1 event(s) will be sent again to admin" in restored.output
    finally:
        app.extensions["db"].dispose()
    users = {r[0] for r in rows(main_url, text("SELECT email FROM users"))}
    assert users == {"kept@example.com", "second@example.com"}
    actions = {r[0] for r in rows(admin_url, select(AuditLog.action))}
    assert "REPLACED" not in actions and "DELIVERED" in actions
    state = dict(rows(main_url, select(OutboxEvent.event_id, OutboxEvent.published_at)))
    assert state[kept_event] is not None  # admin holds it: stays delivered
    assert state[lost_event] is None  # admin lost it with the restore: the relay sends it again
    # Without ADMIN_DATABASE_URL such a backup is not restored halfway.
    lone = create_app(app_config)
    try:
        refused = lone.test_cli_runner().invoke(args=["backup", "restore", str(backup), "--force"])
    finally:
        lone.extensions["db"].dispose()
    assert refused.exit_code == 1 and "ADMIN_DATABASE_URL" in refused.output
