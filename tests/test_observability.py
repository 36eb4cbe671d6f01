"""Request ids, one structured log line per request, Prometheus metrics across workers."""

from __future__ import annotations

import json
import logging
import re
import urllib.request

import pytest
from prometheus_client import CONTENT_TYPE_LATEST

from app.http.observability import JsonFormatter
from tests.helpers import PASSWORD, gunicorn_server, http, login, register, sign_up_over_http


@pytest.fixture
def backend():
    return "sqlite"


def test_request_ids_are_returned_and_accepted(client):
    generated = client.get("/healthz").headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    assert (
        client.get("/healthz", headers={"X-Request-ID": "nginx-abc.123"}).headers["X-Request-ID"]
        == "nginx-abc.123"
    )
    forged = client.get("/healthz", headers={"X-Request-ID": "bad id <script>"}).headers[
        "X-Request-ID"
    ]
    assert re.fullmatch(r"[0-9a-f]{32}", forged)


def test_one_structured_line_per_request_without_secrets(client, caplog):
    caplog.set_level(logging.INFO, logger="app.access")
    register(client)
    tokens = login(client, headers={"X-Request-ID": "req-42"}).get_json()
    client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {tokens['access_token']}"})
    access = [r for r in caplog.records if r.name == "app.access"]
    assert len(access) == 3
    logged = access[1].fields
    assert (logged["request_id"], logged["route"], logged["status"], logged["method"]) == (
        "req-42",
        "/api/v1/auth/login",
        200,
        "POST",
    )
    assert 0 < logged["duration_ms"] < 60_000
    me = access[2].fields
    assert me["user_id"] and me["user_id"].startswith("usr_")
    line = JsonFormatter().format(access[1])
    assert json.loads(line)["request_id"] == "req-42"
    everything = caplog.text + "".join(JsonFormatter().format(r) for r in caplog.records)
    for secret in (PASSWORD, tokens["access_token"], tokens["refresh_token"], "$argon2id$"):
        assert secret not in everything


def test_metrics_count_requests_and_license_results(client):
    register(client)
    tokens = login(client).get_json()
    lic = client.post(
        "/api/v1/licenses/activate",
        json={"client_id": "m-box"},
        headers={"Authorization": f"Bearer {tokens['access_token']}"},
    ).get_json()

    def value(name: str, **labels: str) -> float:
        text = client.get("/metrics").get_data(as_text=True)
        wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
        for line in text.splitlines():
            if line.startswith(f"{name}{{") and all(part in line for part in wanted.split(",")):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    before = value("license_validations_total", code="VALID")
    for _ in range(3):
        client.post("/api/v1/licenses/validate", json={"token": lic["token"]})
    client.post("/api/v1/licenses/validate", json={"token": "nope"})
    assert value("license_validations_total", code="VALID") == before + 3
    assert value("license_validations_total", code="INVALID_TOKEN") >= 1
    assert (
        value("http_requests_total", method="POST", route="/api/v1/licenses/validate", status="200")
        >= 4
    )
    response = client.get("/metrics")
    # Prometheus's exposition content type, said once (one charset, not two)
    assert response.headers["Content-Type"] == CONTENT_TYPE_LATEST
    assert response.headers["Content-Type"].count("charset") == 1
    assert "http_request_duration_seconds_bucket" in response.get_data(as_text=True)
    assert "db_pool_checked_out_connections" in response.get_data(as_text=True)


@pytest.mark.slow
def test_metrics_add_up_across_gunicorn_workers(database_url, signing_key_file, tmp_path):
    masters: list = []
    with gunicorn_server(
        database_url,
        workers=3,
        processes=masters,
        LICENSE_SIGNING_KEYS=signing_key_file,
        PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "prom"),
    ) as base:
        user = sign_up_over_http(base, "w@example.com")
        _, lic, _ = http(
            "POST", f"{base}/api/v1/licenses/activate", {"client_id": "w"}, user.headers
        )
        for _ in range(30):  # new connection each time: spread over the workers
            assert (
                http("POST", base + "/api/v1/licenses/validate", {"token": lic["token"]})[0] == 200
            )
        with urllib.request.urlopen(base + "/metrics", timeout=10) as response:  # noqa: S310 - loopback
            text = response.read().decode()
    [line] = [
        ln for ln in text.splitlines() if ln.startswith('license_validations_total{code="VALID"}')
    ]
    assert float(line.split()[-1]) == 30.0
    [created] = [
        ln
        for ln in text.splitlines()
        if ln.startswith('license_activations_total{result="created"}')
    ]
    assert float(created.split()[-1]) == 1.0
    # each worker's own gauges: a series per worker that verified a token, none for the
    # master (it built the app once, at start-up, before forking)
    pids = {
        int(ln.split('pid="')[1].split('"')[0])
        for ln in text.splitlines()
        if ln.startswith("license_token_cache_entries{")
    }
    assert pids and masters[0].pid not in pids
    assert all(p > 0 for p in pids)


def test_other_processes_leave_no_per_worker_series(tmp_path):
    """A cron command or the webhook worker shares gunicorn's PROMETHEUS_MULTIPROC_DIR (the
    README says so): importing the app's metrics there makes no per-worker gauge, so no
    series is left behind by each run (the review: one per cron run, for good)."""
    import os
    import subprocess
    import sys

    folder = tmp_path / "prom"
    folder.mkdir()
    code = (
        "from app.kernel import metrics; from app import create_app; "
        "assert metrics.LICENSE_TOKEN_CACHE_ENTRIES is None"
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(folder)}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=60)
    assert not [f for f in os.listdir(folder) if "liveall" in f]


@pytest.mark.slow
@pytest.mark.parametrize(
    "command",
    [("orders", "recover"), ("webhooks", "deliver", "--once"), ("tokens", "prune")],
)
def test_a_command_leaves_no_gauge_behind(tmp_path, command):
    """Cron runs `flask ...` with gunicorn's PROMETHEUS_MULTIPROC_DIR (the README says to
    share it with the webhook worker; cron sources the same env file). Each run left its
    gauges' files for good — the pool's (livesum, livemax) and the webhook backlog's age
    (max) — ~4,300 files a day with `orders recover` every minute, every scrape reading
    them all, a killed run's count kept in the sum, a stopped worker's last age kept as the
    maximum. A command's gauges go with it."""
    import os

    from tests.helpers import project_env, run_flask

    folder = tmp_path / "prom"
    folder.mkdir()
    env = project_env(
        APP_ENV="testing",
        DATABASE_URL=f"sqlite:///{tmp_path / 'app.db'}",
        PROMETHEUS_MULTIPROC_DIR=str(folder),
        LOG_LEVEL="WARNING",
    )
    assert run_flask("db", "upgrade", env=env).returncode == 0
    done = run_flask(*command, env=env)
    assert done.returncode == 0, done.stderr
    assert sorted(f for f in os.listdir(folder) if f.startswith("gauge_")) == []


def _delivery_worker(folder, age: float):
    """A process that measured a backlog age, as `webhooks deliver` does, and waits until
    its stdin is closed (then exits as a process does)."""
    import subprocess
    import sys

    from tests.helpers import project_env

    code = (
        "import sys; from app.kernel import metrics; "
        f"metrics.webhook_backlog_age().set({age}); print('set', flush=True); sys.stdin.read()"
    )
    worker = subprocess.Popen(
        [sys.executable, "-c", code],
        env=project_env(PROMETHEUS_MULTIPROC_DIR=str(folder)),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert worker.stdout.readline() == "set\n"
    return worker


@pytest.mark.slow
def test_the_webhook_backlog_age_is_there_only_while_a_delivery_worker_runs(database_url, tmp_path):
    """The README: the age is there only while a delivery worker runs (alert on its
    absence). It was 0 with no worker at all (every process that imported the metrics,
    gunicorn's master and workers too, wrote a 0, and the maximum was 0); a worker's age
    stayed after it was killed; and gunicorn's start deleted the files of a worker running
    beside it (its metrics gone until it restarted)."""
    folder = tmp_path / "prom"
    folder.mkdir()
    before = _delivery_worker(folder, 11.5)  # already running as gunicorn starts
    try:
        with gunicorn_server(database_url, workers=2, PROMETHEUS_MULTIPROC_DIR=str(folder)) as base:

            def ages() -> list[str]:
                with urllib.request.urlopen(base + "/metrics", timeout=10) as response:  # noqa: S310 - loopback
                    text = response.read().decode()
                return [x for x in text.splitlines() if x.startswith("webhook_backlog_age_")]

            assert ages() == ["webhook_backlog_age_seconds 11.5"]
            before.communicate("")  # exits as a process does
            assert ages() == []
            killed = _delivery_worker(folder, 17.5)
            assert ages() == ["webhook_backlog_age_seconds 17.5"]
            killed.kill()  # no exit of its own
            killed.wait()
            assert ages() == []
    finally:
        before.kill()
        before.wait()


def test_gunicorn_starting_clears_the_files_of_processes_no_longer_running(tmp_path):
    """gunicorn empties the metrics folder as it starts (a previous run's values would be
    summed in), but not of the processes still running (a delivery worker beside it). A
    zombie is not running (the re-check: a killed worker not yet reaped, or gunicorn's
    orphaned workers right after its master was killed, kept their files); neither is a
    file's age a judge (the re-check: a step of the clock made running processes' files
    look older than their processes)."""
    import os
    import subprocess
    import sys
    import time
    from pathlib import Path

    from app.kernel import metrics

    folder = tmp_path / "prom"
    folder.mkdir()
    (folder / "a-folder").mkdir()
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    zombie = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    zombie.kill()  # dead, not reaped (no wait) until the end
    try:
        dead = int(Path("/proc/sys/kernel/pid_max").read_text()) + 1  # never a process
        names = {
            f"gauge_livemax_{running.pid}.db": True,
            f"counter_{running.pid}.db": True,
            f"histogram_{running.pid}.db": "older",  # the clock stepped since it was written
            f"gauge_livemax_{zombie.pid}.db": False,
            f"counter_{zombie.pid}.db": False,
            f"gauge_livesum_{dead}.db": False,
            f"counter_{dead}.db": False,
            "counter_0.db": False,
            "gauge_livesum_\u00b2.db": False,
            "not-ours.txt": False,
        }
        for name, kept in names.items():
            (folder / name).write_bytes(b"x")
            if kept == "older":
                os.utime(folder / name, (time.time() - 3600, time.time() - 3600))
        for _ in range(50):  # the kill delivered: a zombie until waited for
            state = Path(f"/proc/{zombie.pid}/stat").read_text().rpartition(")")[2].split()[0]
            if state == "Z":
                break
            time.sleep(0.05)
        metrics.clear_folder(str(folder))
        assert sorted(os.listdir(folder)) == sorted(
            ["a-folder", *(name for name, kept in names.items() if kept)]
        )
    finally:
        for process in (running, zombie):
            process.kill()
            process.wait()


def test_loading_the_app_writes_nothing_to_the_metrics_folder(tmp_path):
    """A gauge without labels writes its process's file as it is made: made at import, every
    process that loaded the app wrote there before wsgi.py or gunicorn's start could check
    the folder (so each kept its own copy of the check), and every cron command left files.
    Gauges are made where they are first measured; loading the app and building it write
    nothing."""
    import os
    import subprocess
    import sys

    from tests.helpers import project_env

    folder = tmp_path / "prom"
    folder.mkdir()
    code = (  # the folder as the process sees it, before its exit hook tidies it
        "import os, sys, app.startup, app.kernel.metrics; from app import create_app; "
        "create_app({'TESTING': True}); print(sorted(os.listdir(sys.argv[1])))"
    )
    env = project_env(
        APP_ENV="testing",
        DATABASE_URL=f"sqlite:///{tmp_path / 'app.db'}",
        PROMETHEUS_MULTIPROC_DIR=str(folder),
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(folder)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert done.stdout.strip() == "[]"
    assert os.listdir(folder) == []


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["missing", "a file"])
def test_a_metrics_folder_that_is_not_one_is_a_one_line_error(tmp_path, kind):
    """PROMETHEUS_MULTIPROC_DIR naming a missing folder made every `flask` command end in
    a 48-line traceback (a file: NotADirectoryError). A missing folder is made, as gunicorn
    makes it; a file in its place is one line, exit 2 — from gunicorn too."""
    from tests.helpers import project_env, run_flask

    folder = tmp_path / "prom" / "deeper"
    if kind == "a file":
        folder.parent.mkdir()
        folder.write_text("")
    env = project_env(
        APP_ENV="testing",
        DATABASE_URL=f"sqlite:///{tmp_path / 'app.db'}",
        PROMETHEUS_MULTIPROC_DIR=str(folder),
        LOG_LEVEL="WARNING",
    )
    done = run_flask("db", "upgrade", env=env)
    if kind == "missing":
        assert done.returncode == 0, done.stderr
        assert folder.is_dir()
    else:
        assert done.returncode == 2
        assert done.stderr.strip().count("\n") == 0, done.stderr
        assert "PROMETHEUS_MULTIPROC_DIR" in done.stderr and "Traceback" not in done.stderr
        import subprocess

        from tests.helpers import BIN, ROOT

        served = subprocess.run(
            [BIN / "gunicorn", "-c", "deploy/gunicorn.conf.py", "wsgi:app"],
            cwd=ROOT,
            env={**env, "PORT": "1"},  # never bound: it stops before
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert served.returncode == 2, served.stderr
        assert served.stderr.strip() == done.stderr.strip()


@pytest.mark.parametrize(
    "created",
    [
        1796155178.5491,  # a millisecond and a fraction
        1796155178.0,  # a whole second
        1796155179.9999996,  # rounds up to the next second (as datetime rounds)
        1796155178.0004999,  # rounds down
        1796155100.25,  # an earlier second after later ones: not the last second's text
        86400.001,
    ],
)
def test_json_lines_carry_the_time_as_datetime_writes_it(created):
    """The JSON formatter writes each line's time itself (the date and time of day once per
    second, for speed): the same text as `datetime.isoformat` to the millisecond, and every
    other member as `json.dumps` writes it."""
    from datetime import UTC, datetime

    formatter = JsonFormatter()
    formatter.format(logging.LogRecord("x", logging.INFO, "", 0, "warm", (), None))
    record = logging.LogRecord("app.access", logging.INFO, "", 0, "%s %s", ("GET", 200), None)
    record.created = created
    record.fields = {"route": "/healthz", "status": 200, "user_id": None, "odd": object}
    line = formatter.format(record)
    assert json.loads(line)["ts"] == datetime.fromtimestamp(created, UTC).isoformat(
        timespec="milliseconds"
    )
    rest = {
        "level": "info",
        "logger": "app.access",
        "message": "GET 200",
        **record.fields,
        "odd": str(object),
    }
    assert line == json.dumps({"ts": json.loads(line)["ts"], **rest})


def test_sqlite_memory_is_reported_per_worker(client):
    """What SQLite's allocator holds (its page caches, bounded by cache_size per
    connection) is on /metrics, within 64 KiB of the library's own figure: the benchmark's
    memory check subtracts it from a worker's growth."""
    import ctypes

    register(client)

    def gauge() -> float:
        text = client.get("/metrics").get_data(as_text=True)
        (line,) = [x for x in text.splitlines() if x.startswith("sqlite_memory_bytes")]
        return float(line.rsplit(" ", 1)[1])

    library = ctypes.CDLL("libsqlite3.so.0")
    library.sqlite3_memory_used.restype = ctypes.c_int64
    reported = gauge()
    assert reported > 0
    assert abs(reported - library.sqlite3_memory_used()) < 2 * 64 * 1024


def test_sqlite_memory_is_reported_when_only_validations_come(client):
    """Validations read on the worker's held connection, which never goes back to the pool
    (where the figure is read otherwise): the figure comes with the read (the outside test:
    0 after 600 validations)."""
    from app.kernel import engines, metrics
    from tests.helpers import sign_up

    account = sign_up(client)
    token = client.post(
        "/api/v1/licenses/activate", json={"client_id": "box"}, headers=account.headers
    ).get_json()["token"]
    metrics.SQLITE_MEMORY_BYTES.set(0)
    engines.report_sqlite_memory.reported = -engines.report_sqlite_memory.STEP
    client.post("/api/v1/licenses/validate", json={"token": token, "client_id": "box"})
    assert metrics.SQLITE_MEMORY_BYTES._value.get() > 0
