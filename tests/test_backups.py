"""Verified backups and restores, the cron script, and a backup taken under write load."""

from __future__ import annotations

import json
import multiprocessing
import os
import sqlite3
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from app.operations import backups
from tests.conftest import create_pg_database, drop_pg_database, pg_url
from tests.helpers import BIN, ROOT, in_layout, project_env, registered, run_flask


def emails(client, runner) -> set[str]:
    from sqlalchemy import select

    from app.auth.models import User
    from app.kernel.db import get_session
    from app.kernel.ownership import OPERATOR, acting_as

    with runner.app.app_context(), acting_as(OPERATOR):
        return set(get_session().scalars(select(User.email)))


def test_create_list_verify_restore(app, client, runner, app_config, tmp_path, backend):
    registered(client, "before@example.com")
    made = runner.invoke(args=["backup", "create"])
    assert made.exit_code == 0, made.output
    [(path, manifest)] = backups.list_backups(Path(app_config["BACKUP_DIR"]))
    url = app_config["DATABASE_URL"]
    assert manifest.row_counts[in_layout("users", url)] == 1
    assert manifest.row_counts[in_layout("audit_logs", url)] == 1
    assert manifest.revision is not None and manifest.size == path.stat().st_size
    assert "integrity_check" in made.output or "scratch" in made.output
    assert path.name in runner.invoke(args=["backup", "list"]).output
    assert "ok" in runner.invoke(args=["backup", "verify", str(path)]).output

    registered(client, "after@example.com")
    app.extensions["db"].dispose()  # the app is stopped for a restore
    refused = runner.invoke(args=["backup", "restore", str(path)])
    assert refused.exit_code == 1 and "--force" in refused.output
    restored = runner.invoke(args=["backup", "restore", str(path), "--force"])
    assert restored.exit_code == 0, restored.output
    assert "replaced" in restored.output
    assert emails(client, runner) == {"before@example.com"}
    kept = Path(restored.output.strip().split()[-1])
    assert "replaced-" in kept.name and kept.stat().st_size > 0  # the replaced database is kept


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_a_damaged_backup_fails_verification(runner, app_config):
    runner.invoke(args=["backup", "create"])
    [(path, _)] = backups.list_backups(Path(app_config["BACKUP_DIR"]))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    result = runner.invoke(args=["backup", "verify", str(path)])
    assert result.exit_code == 1 and "checksum differs" in result.output
    assert runner.invoke(args=["backup", "restore", str(path), "--force"]).exit_code == 1


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_prune_keeps_the_newest_good_backup(app_config, database_url):
    folder = Path(app_config["BACKUP_DIR"])
    now = datetime.now(UTC)
    old = [backups.create(database_url, folder, now=now - timedelta(days=d)) for d in (90, 60, 40)]
    removed = backups.prune(folder, keep_days=30, now=now)
    # Everything is older than 30 days, but the newest good backup always stays.
    assert sorted(p.name for p in removed) == sorted(m.file for m in old[:2])
    assert [p.name for p, _ in backups.list_backups(folder)] == [old[2].file]
    fresh = backups.create(database_url, folder, now=now)
    assert [p.name for p in backups.prune(folder, keep_days=30, now=now)] == [old[2].file]
    assert [p.name for p, _ in backups.list_backups(folder)] == [fresh.file]


# --- the cron script ---------------------------------------------------------------


def _script_env(database_url: str, backup_dir: Path, **extra: str) -> dict[str, str]:
    return project_env(
        APP_ENV="testing",
        DATABASE_URL=database_url,
        BACKUP_DIR=str(backup_dir),
        FLASK=str(BIN / "flask"),
        **extra,
    )


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_backup_script_runs_never_overlap(database_url, tmp_path):
    """Two runs at once: the second finds the first holding the lock and skips."""
    folder = tmp_path / "bk"
    slow_flask = tmp_path / "slow-flask"  # a backup that takes long enough to overlap
    slow_flask.write_text(f'#!/bin/sh\nsleep 2\nexec "{BIN / "flask"}" "$@"\n')
    slow_flask.chmod(0o755)
    env = {**_script_env(database_url, folder), "FLASK": str(slow_flask)}
    first = subprocess.Popen(
        [ROOT / "scripts" / "backup.sh"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    time.sleep(0.5)
    second = subprocess.run(
        [ROOT / "scripts" / "backup.sh"], env=env, capture_output=True, text=True, timeout=60
    )
    first.communicate(timeout=120)
    assert (first.returncode, second.returncode) == (0, 0)
    lines = (folder / "backup.log").read_text().splitlines()
    assert len(lines) == 2
    assert sum("skipped" in line for line in lines) == 1
    [(_path, manifest)] = backups.list_backups(folder)
    assert manifest is not None


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_backup_script_skips_while_the_lock_is_held(database_url, tmp_path):
    folder = tmp_path / "bk"
    folder.mkdir()
    holder = subprocess.Popen(["flock", str(folder / ".backup.lock"), "sleep", "30"])
    try:
        time.sleep(0.3)
        result = subprocess.run(
            [ROOT / "scripts" / "backup.sh"],
            env=_script_env(database_url, folder),
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        holder.kill()
    assert result.returncode == 0
    assert "skipped" in (folder / "backup.log").read_text()
    assert backups.list_backups(folder) == []


@pytest.mark.slow
def test_backup_script_fails_loudly(tmp_path):
    folder = tmp_path / "bk"
    env = _script_env(f"sqlite:///{tmp_path}/missing.db", folder)
    result = subprocess.run(
        [ROOT / "scripts" / "backup.sh"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert "does not exist" in result.stderr
    assert "FAILED" in (folder / "backup.log").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_backup_script_fails_loudly_when_it_cannot_write_its_folder(database_url, tmp_path):
    """(outside test: `flock: Bad file descriptor`, then "skipped" and exit 0 — no backup,
    and cron mailed nobody)"""
    (tmp_path / "a-file").write_text("")
    env = _script_env(database_url, tmp_path / "a-file" / "bk")
    result = subprocess.run(
        [ROOT / "scripts" / "backup.sh"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0, result.stderr
    assert "a-file/bk" in result.stderr and "skipped" not in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_backup_script_uses_the_apps_folder_by_default(database_url, tmp_path):
    """Without BACKUP_DIR the script backs up where the app's `backup list` looks: under
    INSTANCE_PATH (it wrote to the checkout's instance/ instead)."""
    env = _script_env(database_url, tmp_path / "unused")
    del env["BACKUP_DIR"]
    env["INSTANCE_PATH"] = str(tmp_path / "inst")
    result = subprocess.run(
        [ROOT / "scripts" / "backup.sh"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert len(backups.list_backups(tmp_path / "inst" / "backups")) == 1
    # A relative INSTANCE_PATH means the same folder to the script as to `flask` run from
    # the same place (the script changes to the checkout before running flask).
    env["INSTANCE_PATH"] = "relative-inst"
    result = subprocess.run(
        [ROOT / "scripts" / "backup.sh"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert len(backups.list_backups(tmp_path / "relative-inst" / "backups")) == 1


# --- under load ------------------------------------------------------------------------


def _writer(url: str, ack_file: str, stop_file: str, worker: int) -> None:
    """Commit events one by one; after each commit, write its id to the ack file."""
    from app.kernel import events
    from app.kernel.db import make_sessionmaker, transaction
    from app.kernel.engines import make_engine
    from tests.helpers import engine_settings

    engine = make_engine(engine_settings(url, pool_size=1, max_overflow=0))
    sessions = make_sessionmaker(engine)
    seq = 0
    with open(ack_file, "a") as acks:
        while not os.path.exists(stop_file):
            with sessions() as session, transaction(session):
                events.publish(
                    session, "load", {"w": worker, "seq": seq}, aggregate_id=f"w{worker}-{seq}"
                )
            acks.write(f"w{worker}-{seq}\n")
            acks.flush()
            seq += 1
    engine.dispose()


def _acked(folder: Path) -> set[str]:
    return {line for f in folder.glob("acks-*") for line in f.read_text().splitlines() if line}


@pytest.mark.slow
def test_backup_under_write_load_holds_everything_acknowledged(database_url, tmp_path, backend):
    ctx = multiprocessing.get_context("spawn")
    stop = tmp_path / "stop"
    writers = [
        ctx.Process(target=_writer, args=(database_url, str(tmp_path / f"acks-{w}"), str(stop), w))
        for w in range(2)
    ]
    for w in writers:
        w.start()
    try:
        while len(_acked(tmp_path)) < 50:
            time.sleep(0.02)
        acknowledged_before = _acked(tmp_path)
        env = project_env(
            APP_ENV="testing", DATABASE_URL=database_url, BACKUP_DIR=str(tmp_path / "bk")
        )
        result = run_flask("backup", "create", env=env, timeout=300)
        assert result.returncode == 0, result.stderr
        during = len(_acked(tmp_path)) - len(acknowledged_before)
    finally:
        stop.touch()
        for w in writers:
            w.join(timeout=60)
    assert during > 0, "the writers kept writing while the backup ran"
    [(path, manifest)] = backups.list_backups(tmp_path / "bk")

    if backend == "sqlite":
        conn = sqlite3.connect(path)
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        restored = {
            r[0]
            for r in conn.execute("SELECT aggregate_id FROM event_outbox WHERE event_type = 'load'")
        }
        conn.close()
    else:
        name = create_pg_database("lic_restore")
        try:
            subprocess.run(
                ["pg_restore", "--no-owner", "-d", pg_url(name), str(path)],
                check=True,
                capture_output=True,
            )
            with psycopg.connect(pg_url(name)) as conn:
                restored = {
                    r[0]
                    for r in conn.execute(
                        f"SELECT aggregate_id FROM {in_layout('event_outbox', database_url)}"
                        " WHERE event_type = 'load'"
                    )
                }
        finally:
            drop_pg_database(name)
    assert acknowledged_before <= restored
    assert manifest.row_counts[in_layout("event_outbox", database_url)] == len(restored)
    assert json.loads(backups.manifest_path(path).read_text())["sha256"] == manifest.sha256
