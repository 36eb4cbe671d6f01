"""The README's Deploying section and deploy/: the pieces a fresh host relies on."""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from tests.helpers import ROOT, gunicorn_server, http

README = (ROOT / "README.md").read_text()
INSTALL_CRONTAB = (
    "(crontab -l 2>/dev/null | sed '/^# BEGIN licensing/,/^# END licensing/d'; "
    "cat deploy/crontab) | crontab -"
)


def test_the_readme_needs_no_uuidgen_and_no_pgrep():
    assert "uuidgen" not in README and "pgrep" not in README
    assert "install -d -m 700 -o licensing -g licensing /etc/licensing" in README
    assert README.index("/etc/licensing     #") < README.index("install -m 600 /dev/null")


def test_nginx_upstream_and_gunicorn_bind_are_the_same_port():
    nginx = (ROOT / "deploy" / "nginx.conf").read_text()
    [upstream] = re.findall(r"upstream licensing \{[^}]*?server (\S+);", nginx, flags=re.S)
    gunicorn = (ROOT / "deploy" / "gunicorn.conf.py").read_text()
    host = re.search(r"""["']HOST["'], ["']([^"']+)["']""", gunicorn).group(1)
    port = re.search(r"""["']PORT["'], ["']([^"']+)["']""", gunicorn).group(1)
    assert upstream == f"{host}:{port}"
    assert f"PORT={port}" in README


def _fake_crontab(tmp_path):
    """A `crontab` that keeps the table in a file, as cron's does for a user."""
    table = tmp_path / "table"
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "crontab").write_text(
        f'#!/bin/sh\nif [ "$1" = -l ]; then [ -f {table} ] && exec cat {table}; '
        "echo 'no crontab for you' >&2; exit 1; fi\n"
        # like cron's own: the new table replaces the old one once it has been read in full
        f'if [ "$1" = - ]; then cat > {table}.new && mv {table}.new {table}; exit 0; fi\n'
        "exit 2\n"
    )
    (bindir / "crontab").chmod(0o755)
    return table, {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"}


def test_installing_the_crontab_keeps_the_users_other_entries(tmp_path):
    assert INSTALL_CRONTAB in README
    table, env = _fake_crontab(tmp_path)
    install = ["bash", "-c", INSTALL_CRONTAB]
    subprocess.run(install, cwd=ROOT, env=env, check=True)  # no crontab yet
    first = table.read_text()
    table.write_text("MAILTO=me@example.com\n5 * * * * /home/me/mine.sh\n" + first)
    subprocess.run(install, cwd=ROOT, env=env, check=True)  # again, after a deploy
    lines = table.read_text().splitlines()
    assert lines[:2] == ["MAILTO=me@example.com", "5 * * * * /home/me/mine.sh"]
    assert sum("subscriptions renew" in line for line in lines) == 1  # replaced, not doubled
    assert not any(line.startswith(("SHELL=", "MAILTO=")) for line in lines[2:])


@pytest.fixture
def env_file(tmp_path):
    path = tmp_path / "env"
    path.write_text('GREETING="hello from the env file"\n')
    return path


def _cron(env_file, tmp_path, *command):
    return subprocess.run(
        [ROOT / "scripts" / "cron.sh", *command],
        env={**os.environ, "LICENSING_ENV": str(env_file), "CRON_LOG": str(tmp_path / "cron.log")},
        capture_output=True,
        text=True,
    )


def test_cron_jobs_are_silent_on_success_and_loud_on_failure(env_file, tmp_path):
    ok = _cron(env_file, tmp_path, "sh", "-c", 'echo "$GREETING"; echo a warning >&2')
    assert (ok.returncode, ok.stdout, ok.stderr) == (0, "", "")  # cron mails nothing
    failed = _cron(env_file, tmp_path, "sh", "-c", "echo the reason; exit 3")
    assert failed.returncode == 3 and "the reason" in failed.stderr  # cron mails this
    log = (tmp_path / "cron.log").read_text()
    assert "hello from the env file" in log and "a warning" in log and "(exit 3)" in log
    unreadable = _cron(tmp_path / "missing-env", tmp_path, "true")
    assert unreadable.returncode == 1 and "cannot read" in unreadable.stderr


@pytest.mark.slow
def test_gunicorn_writes_the_pidfile_the_reload_reads(tmp_path, sqlite_template):
    import shutil

    shutil.copy(sqlite_template, tmp_path / "app.db")
    pidfile = tmp_path / "gunicorn.pid"
    procs: list = []
    with gunicorn_server(
        f"sqlite:///{tmp_path}/app.db", workers=1, processes=procs, GUNICORN_PIDFILE=str(pidfile)
    ):
        assert int(pidfile.read_text()) == procs[0].pid
    assert not pidfile.exists()  # removed when gunicorn stops


def test_gunicorn_opens_no_control_socket_another_instance_could_take(tmp_path, sqlite_template):
    """gunicorn 27 opens a control socket at one path per user (~/.gunicorn/gunicorn.ctl):
    every instance on a host would share it, and whichever stopped last would delete it
    from under the others. The sample configuration turns it off."""
    import shutil

    shutil.copy(sqlite_template, tmp_path / "app.db")
    home = tmp_path / "home"
    home.mkdir()
    with gunicorn_server(f"sqlite:///{tmp_path}/app.db", workers=1, HOME=str(home)) as base:
        assert http("GET", base + "/healthz")[0] == 200
        assert not (home / ".gunicorn").exists()
