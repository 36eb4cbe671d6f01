"""The servers under test: their environment, and gunicorn processes we can look into.

Every server — the service, its variants and the reference apps — is started by the test
harness's `tests.helpers.gunicorn_server` (deploy/gunicorn.conf.py: the same worker count
and worker class for all), and watched here through /proc (CPU time, workers' RSS) and
its /metrics (parsed with prometheus_client's parser).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from app.config import load_config, rate_limit_settings
from tests.helpers import gunicorn_server

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
CACHE = BENCH / ".cache"
BIN = Path(sys.executable).parent
PG_ADMIN_URL = os.environ.get("BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
# Rate limiting stays on, with limits far above what one load generator on loopback can
# reach: the limiter does all its work (keys, counters, headers) and never answers 429.
HIGH_LIMIT = "10000000/minute"
_DEFAULTS = load_config(tempfile.gettempdir(), env={})
# Every per-route limit the service has, as its configuration names them.
RATE_LIMIT_SETTINGS = rate_limit_settings(_DEFAULTS)
RUN_SECRETS = (secrets.token_urlsafe(48), secrets.token_urlsafe(48))
RUN_ID = uuid.uuid4().hex[:8]
WORKERS = (os.cpu_count() or 1) * 2 + 1  # deploy/gunicorn.conf.py's default


TICKS = os.sysconf("SC_CLK_TCK")


def busy_seconds(stat: str, ticks: int = TICKS) -> float:
    """CPU time the whole machine has spent running processes since boot, from /proc/stat's
    first line: user + nice + system + steal (a hypervisor's other guests). Idle and I/O
    wait are not busy; interrupt time is left out as mostly the run's own loopback traffic,
    which the kernel charges to no process."""
    user, nice, system, _idle, _iowait, _irq, _softirq, steal = stat.split()[1:9]
    return (int(user) + int(nice) + int(system) + int(steal)) / ticks


def machine_cpu() -> dict[str, Any]:
    """CPU seconds so far: the machine's busy time, and each PostgreSQL server process's
    (every process named postgres, by pid: on PostgreSQL they serve the run's own queries)."""
    database: dict[int, float] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            comm, _, rest = Path(entry.path, "stat").read_text().partition(") ")
            if comm.endswith("(postgres"):
                fields = rest.split()
                database[int(entry.name)] = (int(fields[11]) + int(fields[12])) / TICKS
    return {"busy": busy_seconds(Path("/proc/stat").read_text()), "postgres": database}


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def answers(port: int) -> bool:
    import socket

    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
        return True
    return False


def signing_key() -> Path:
    """The license signing key of the benchmark (made once with the service's CLI)."""
    path = CACHE / "license-signing-key.pem"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [BIN / "flask", "--app", "wsgi", "licenses", "generate-key", str(path)],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
    return path


def service_env(database_url: str, workdir: Path, **extra: str) -> dict[str, str]:
    """Production settings as deployed behind nginx: real secrets and signing key, JSON
    access logs, TRUSTED_PROXIES=1, rate limits on (but high; in Redis when it answers,
    added by the caller), argon2id at the service's default (OWASP) cost."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RATELIMIT_", "DB_", "JWT_", "GUNICORN_", "ARGON2_"))
        and k
        not in {
            *("DATABASE_URL", "REDIS_URL", "OWNERSHIP_GUARD", "WEB_CONCURRENCY", "HOST", "PORT"),
            *("TRUSTED_PROXIES", "LOG_LEVEL", "LOG_FORMAT", "PROMETHEUS_MULTIPROC_DIR"),
        }
    }
    env.update(
        APP_ENV="production",
        DATABASE_URL=database_url,
        SECRET_KEY=RUN_SECRETS[0],
        JWT_SECRET_KEY=RUN_SECRETS[1],
        LICENSE_SIGNING_KEYS=str(signing_key()),
        ALLOW_SANDBOX_PAYMENTS="1",
        SANDBOX_LEDGER=str(workdir / f"ledger-{uuid.uuid4().hex[:8]}.jsonl"),
        JWT_ACCESS_TTL_SECONDS="7200",
        TRUSTED_PROXIES="1",
        RATELIMIT_ENABLED="true",
        RATELIMIT_KEY_PREFIX=f"bench-{RUN_ID}",
        LOG_LEVEL="INFO",
        ARGON2_TIME_COST=str(_DEFAULTS["ARGON2_TIME_COST"]),
        ARGON2_MEMORY_COST=str(_DEFAULTS["ARGON2_MEMORY_COST"]),
        # Workers live through the whole run: steady state, and a leak shows as growth
        # instead of being hidden by recycling (deploy default: every 5000 requests).
        GUNICORN_MAX_REQUESTS="0",
    )
    env.update({name: HIGH_LIMIT for name in RATE_LIMIT_SETTINGS})
    env.update(extra)
    return env


def python(
    *args: str, env: dict[str, str], timeout: float = 1800, cwd: Path = ROOT, log: str = ""
) -> str:
    """`python ARGS` in a child process; its stdout. With `log`, what it writes to stderr
    (the app's logs, say) goes to bench/.cache/logs/LOG, a file, as under gunicorn."""
    if not log:
        result = subprocess.run(
            [sys.executable, *args],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
        return result.stdout
    path = CACHE / "logs" / log
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as stderr:
        result = subprocess.run(
            [sys.executable, *args],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            timeout=timeout,
        )
    if result.returncode != 0:
        tail = path.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{' '.join(args)} failed:\n{result.stdout}\n{tail}")
    return result.stdout


def migrate(env: dict[str, str]) -> None:
    subprocess.run(
        [BIN / "flask", "--app", "wsgi", "db", "upgrade"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
    )


class Server:
    """`gunicorn -c deploy/gunicorn.conf.py APP` (tests.helpers.gunicorn_server), kept
    running until stop(); its log stays in bench/.cache/logs for a look afterwards."""

    def __init__(
        self, name: str, env: dict[str, str], app: str = "wsgi:app", cwd: Path = ROOT
    ) -> None:
        self.name = name
        self.env = env
        self.app = app
        self.cwd = cwd
        self.log_path = CACHE / "logs" / f"server-{name}.log"
        self.url = ""
        self.proc: subprocess.Popen[bytes] | None = None
        self._stack = contextlib.ExitStack()
        # The system call a booted worker waits for connections in (select or pselect6,
        # by number as /proc/PID/syscall shows it): what worker_idle() compares with.
        self._idle_syscalls: set[str] = set()

    def start(self) -> Server:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        processes: list[subprocess.Popen[bytes]] = []
        try:
            self.url = self._stack.enter_context(
                gunicorn_server(
                    self.env["DATABASE_URL"],
                    workers=WORKERS,
                    processes=processes,
                    app=self.app,
                    cwd=self.cwd,
                    log_path=self.log_path,
                    **self.env,
                )
            )
        except AssertionError as exc:
            raise RuntimeError(f"server {self.name}: {exc}; see {self.log_path}") from None
        self.proc = processes[0]
        # Every worker booted (app imported) before anything is timed: a booted sync worker
        # waits for connections in select(), which /proc shows as its wait channel.
        ready: set[int] = set()
        deadline = time.monotonic() + 120
        while len(ready) < WORKERS:
            if time.monotonic() > deadline:
                raise RuntimeError(f"server {self.name}: workers not ready; see {self.log_path}")
            for pid in self.workers():
                with contextlib.suppress(OSError):
                    syscall = _syscall(pid)
                    wchan = Path(f"/proc/{pid}/wchan").read_text()
                    if ("poll" in wchan or "select" in wchan) and syscall == _syscall(pid):
                        ready.add(pid)
                        self._idle_syscalls.add(syscall)
            time.sleep(0.05)
        return self

    def worker_idle(self, pid: int) -> bool:
        """The worker waits for a connection (in the call it waited in when it booted), not
        in a request (running, or waiting for the database, Redis or a lock). Unknown (no
        access to /proc/PID/syscall, worker gone): idle."""
        try:
            return _syscall(pid) in self._idle_syscalls
        except OSError:
            return True

    def stop(self) -> None:
        self._stack.close()
        self.proc = None

    def workers(self) -> list[int]:
        assert self.proc is not None
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        with contextlib.suppress(OSError):
            return [int(p) for p in path.read_text().split()]
        return []

    def cpu_seconds(self) -> float:
        """CPU time (user + system) spent so far by the master and its workers."""
        assert self.proc is not None
        total = 0
        for pid in [self.proc.pid, *self.workers()]:
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
                total += int(fields[11]) + int(fields[12])  # utime, stime (clock ticks)
        return total / TICKS

    def rss_mib(self) -> dict[int, float]:
        out = {}
        for pid in self.workers():
            with contextlib.suppress(OSError, AttributeError):
                status = Path(f"/proc/{pid}/status").read_text()
                kib = int(re.search(r"VmRSS:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
                out[pid] = round(kib / 1024, 1)
        return out

    def counters(self, name: str, label: str) -> dict[str, float]:
        """A Prometheus counter of the service (summed over workers) by one label's value,
        e.g. counters("license_validations", "code") -> {"VALID": 1234.0}."""
        with urllib.request.urlopen(self.url + "/metrics", timeout=10) as response:  # noqa: S310
            text = response.read().decode()
        out: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            if family.name != name:
                continue
            for sample in family.samples:
                if sample.name == name + "_total":
                    key = sample.labels.get(label, "")
                    out[key] = out.get(key, 0.0) + sample.value
        return out

    def per_worker(self, *names: str) -> dict[int, float]:
        """Gauges each worker keeps for itself (multiprocess mode "liveall": one sample per
        worker, labelled with its pid), summed per worker, e.g.
        per_worker("license_token_cache_bytes", "sqlite_memory_bytes")."""
        with urllib.request.urlopen(self.url + "/metrics", timeout=10) as response:  # noqa: S310
            text = response.read().decode()
        out: dict[int, float] = {}
        for family in text_string_to_metric_families(text):
            if family.name in names:
                for sample in family.samples:
                    if "pid" in sample.labels:
                        pid = int(sample.labels["pid"])
                        out[pid] = out.get(pid, 0.0) + sample.value
        return out

    def log_problems(self) -> dict[str, int]:
        """What the server logged that a benchmark must not cause."""
        text = self.log_path.read_text(errors="replace")
        return {
            "sqlite_busy": len(re.findall(r"database is locked|SQLITE_BUSY", text)),
            "tracebacks": text.count("Traceback (most recent call last)"),
            "status_5xx": len(re.findall(r'"status": 5\d\d', text)),
            "worker_timeouts": text.count("WORKER TIMEOUT"),
        }


def _syscall(pid: int) -> str:
    """The system call a process is blocked in, by number ("running" when it runs)."""
    return Path(f"/proc/{pid}/syscall").read_text().split(" ", 1)[0].strip()


def start_all(servers: list[Server]) -> list[Server]:
    """Start servers (one after the other: boots are CPU-bound); on failure stop those
    already started and raise."""
    started = []
    try:
        for s in servers:
            started.append(s.start())
    except BaseException:
        for s in started:
            s.stop()
        raise
    return servers


def stop_all(servers: list[Server]) -> None:
    for s in servers:
        with contextlib.suppress(Exception):
            s.stop()


def request(url: str, method: str, body: str | None, auth: str | None) -> tuple[int, Any]:
    """One request as a scenario file spells it (for the pre-flight check)."""
    import json
    import urllib.error

    req = urllib.request.Request(  # noqa: S310 - loopback
        url, data=None if body is None else body.encode(), method=method
    )
    req.add_header("Content-Type", "application/json")
    if auth:
        req.add_header("Authorization", auth)
    try:
        with urllib.request.urlopen(req, timeout=30) as response:  # noqa: S310
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")[:300]
