"""Restores that lose nothing acknowledged afterwards (while gunicorn runs), backups that
stay private, and no database password on a command line."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from sqlalchemy import text

from app import backups
from tests.helpers import (
    db_rows,
    gunicorn_server,
    http,
    in_layout,
    project_env,
    run_flask,
)

pytestmark = pytest.mark.slow
PASSWORD = "correct horse battery"


def _register(base: str, email: str) -> int:
    return http("POST", base + "/api/v1/auth/register", {"email": email, "password": PASSWORD})[0]


def _emails(url: str) -> set[str]:
    return {r[0] for r in db_rows(url, text(f"SELECT email FROM {in_layout('users', url)}"))}


def test_restore_while_gunicorn_runs_keeps_what_is_acknowledged_afterwards(
    database_url, tmp_path, signing_key_file, backend
):
    env = project_env(APP_ENV="testing", DATABASE_URL=database_url, BACKUP_DIR=str(tmp_path))
    settings = {"LICENSE_SIGNING_KEYS": signing_key_file, "SANDBOX_LEDGER": str(tmp_path / "l")}
    with gunicorn_server(database_url, workers=2, **settings) as base:
        assert _register(base, "before@example.com") == 201
        made = run_flask("backup", "create", env=env)
        assert made.returncode == 0, made.stderr
        [(backup, _)] = backups.list_backups(tmp_path)
        assert _register(base, "replaced@example.com") == 201
        for _ in range(20):  # every worker holds an open connection to the database
            assert http("GET", base + "/readyz")[0] == 200
        restored = run_flask("backup", "restore", str(backup), "--force", env=env)
        assert restored.returncode == 0, restored.stderr
        # The running workers see the restored database, and what they acknowledge now stays.
        assert [_register(base, f"after{i}@example.com") for i in range(4)] == [201] * 4
        status, body, _ = http(
            "POST",
            base + "/api/v1/auth/login",
            {"email": "after0@example.com", "password": PASSWORD},
        )
        assert status == 200, body
    assert _emails(database_url) == {"before@example.com"} | {
        f"after{i}@example.com" for i in range(4)
    }
    with gunicorn_server(database_url, workers=1, **settings) as base:  # after a restart, too
        status, _, _ = http(
            "POST",
            base + "/api/v1/auth/login",
            {"email": "after3@example.com", "password": PASSWORD},
        )
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
