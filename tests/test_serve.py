"""The README's commands for real: `make run` serves; production without secrets refuses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request

import pytest

from app.kernel import migrations
from tests.helpers import (
    BIN,
    OTHER_SECRET,
    ROOT,
    STRONG_SECRET,
    free_port,
    project_env,
    run_flask,
    wait_for_http,
)

pytestmark = pytest.mark.slow


def _get(url: str) -> tuple[int, dict, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback
            return response.status, json.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read()), dict(err.headers)


def _run_to_the_end(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`command` run from the project's root until it exits (it is expected to refuse)."""
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_make_run_serves_healthz_and_readyz_on_sqlite(tmp_path):
    port = free_port()
    env = project_env(
        DATABASE_URL=f"sqlite:///{tmp_path}/app.db",
        HOST="127.0.0.1",
        PORT=str(port),
        WEB_CONCURRENCY="2",
        VENV=str(BIN.parent),
    )
    proc = subprocess.Popen(
        ["make", "--no-print-directory", "run", f"VENV={BIN.parent}"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/healthz", timeout=60, proc=proc)
        status, body, headers = _get(f"http://127.0.0.1:{port}/healthz")
        assert (status, body) == (200, {"status": "ok"})
        assert headers["X-Content-Type-Options"] == "nosniff"
        status, body, _ = _get(f"http://127.0.0.1:{port}/readyz")
        assert status == 200, body
        assert body["checks"]["migrations"] == "ok"
        assert (tmp_path / "app.db").exists()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        # gunicorn stops gracefully within its graceful_timeout (30 s): a worker that was
        # still importing the app (the second of two, on a loaded machine) or was booted to
        # replace one the signal reached first may take that long
        output = proc.communicate(timeout=90)[0].decode()
    assert "Booting worker" in output


def test_production_without_secrets_refuses_to_start(tmp_path):
    env = project_env(APP_ENV="production", DATABASE_URL=f"sqlite:///{tmp_path}/app.db")
    env.pop("SECRET_KEY", None)
    env.pop("JWT_SECRET_KEY", None)
    result = run_flask("db", "upgrade", env=env, timeout=60)
    assert result.returncode == 2
    assert "refusing to start with APP_ENV=production" in result.stderr
    assert "SECRET_KEY is not set" in result.stderr
    assert "JWT_SECRET_KEY is not set" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "app.db").exists()


def test_production_make_run_without_secrets_exits_non_zero(tmp_path):
    env = project_env(
        APP_ENV="production", DATABASE_URL=f"sqlite:///{tmp_path}/app.db", PORT=str(free_port())
    )
    env.pop("SECRET_KEY", None)
    env.pop("JWT_SECRET_KEY", None)
    result = _run_to_the_end(["make", "--no-print-directory", "run", f"VENV={BIN.parent}"], env)
    assert result.returncode != 0
    assert "SECRET_KEY is not set" in result.stderr


def test_production_with_weak_secret_is_refused(tmp_path):
    env = project_env(
        APP_ENV="production",
        DATABASE_URL=f"sqlite:///{tmp_path}/app.db",
        SECRET_KEY="short",
        JWT_SECRET_KEY=OTHER_SECRET,
    )
    result = run_flask("db", "current", env=env, timeout=60)
    assert result.returncode == 2
    assert "SECRET_KEY is shorter than 32 characters" in result.stderr


def test_production_with_an_unreadable_signing_key_refuses_to_start(tmp_path):
    env = project_env(
        APP_ENV="production",
        DATABASE_URL=f"sqlite:///{tmp_path}/app.db",
        SECRET_KEY=STRONG_SECRET,
        JWT_SECRET_KEY=OTHER_SECRET,
        LICENSE_SIGNING_KEYS=str(tmp_path / "missing.pem"),
        ALLOW_SANDBOX_PAYMENTS="1",
    )
    result = run_flask("db", "current", env=env, timeout=60)
    assert result.returncode == 2
    assert "cannot read license signing key" in result.stderr
    assert "Traceback" not in result.stderr


def test_production_with_real_secrets_starts(tmp_path, signing_key_file):
    env = project_env(
        APP_ENV="production",
        DATABASE_URL=f"sqlite:///{tmp_path}/app.db",
        SECRET_KEY=STRONG_SECRET,
        JWT_SECRET_KEY=OTHER_SECRET,
        LICENSE_SIGNING_KEYS=signing_key_file,
        ALLOW_SANDBOX_PAYMENTS="1",
    )
    result = run_flask("db", "upgrade", env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    head = ",".join(sorted(migrations.head_revisions()))
    assert f"database at {head}" in result.stdout


def test_a_graceful_reload_keeps_serving(tmp_path):
    import threading

    from app.kernel import migrations as kernel_migrations
    from tests.helpers import gunicorn_server, http

    url = f"sqlite:///{tmp_path}/reload.db"
    kernel_migrations.upgrade(url)
    procs: list = []
    statuses: list[int] = []
    stop = threading.Event()
    with gunicorn_server(url, workers=2, processes=procs) as base:

        def hammer() -> None:
            while not stop.is_set():
                try:
                    statuses.append(http("GET", base + "/readyz")[0])
                except OSError as exc:  # a refused or reset connection is a failure too
                    statuses.append(repr(exc))

        thread = threading.Thread(target=hammer)
        thread.start()
        time.sleep(0.5)
        procs[0].send_signal(signal.SIGHUP)  # gunicorn: new workers, old ones finish their requests
        time.sleep(2.5)
        stop.set()
        thread.join()
    assert len(statuses) > 20
    assert set(statuses) == {200}, [s for s in statuses if s != 200][:5]


def test_make_run_names_a_web_concurrency_that_is_no_number_in_one_line(tmp_path):
    """(outside test: gunicorn's traceback) gunicorn itself reads WEB_CONCURRENCY when it
    is imported, before any config file, so only a step before it can name the mistake:
    `make run`'s migration (the README's release step) does, in one line."""
    env = project_env(
        DATABASE_URL=f"sqlite:///{tmp_path}/app.db", PORT=str(free_port()), WEB_CONCURRENCY="abc"
    )
    result = _run_to_the_end(["make", "--no-print-directory", "run", f"VENV={BIN.parent}"], env)
    assert result.returncode != 0
    ours = [line for line in result.stderr.splitlines() if not line.startswith("make")]
    assert ours == ["error: WEB_CONCURRENCY must be an integer, got 'abc'"], result.stderr
    assert not (tmp_path / "app.db").exists()


@pytest.mark.parametrize("name", ["PORT", "GUNICORN_TIMEOUT", "GUNICORN_MAX_REQUESTS"])
def test_bare_gunicorn_names_a_setting_that_is_no_number_in_one_line(tmp_path, name):
    """The numbers deploy/gunicorn.conf.py reads itself: one line, exit code 2, no worker."""
    env = project_env(DATABASE_URL=f"sqlite:///{tmp_path}/app.db", PORT=str(free_port()))
    env[name] = "abc"
    result = _run_to_the_end(
        [str(BIN / "gunicorn"), "-c", "deploy/gunicorn.conf.py", "wsgi:app"], env
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [f"error: {name} must be an integer, got 'abc'"]
