"""The benchmark (issue 9): the real service under gunicorn, driven by wrk on loopback.

    make bench                       # or: .venv/bin/python -m bench [options]
    make bench BENCH_ARGS="--quick"  # one repetition, short runs (a smoke test)
    make bench BENCH_ARGS="--profile validate"   # py-spy flame summary of one scenario

Phases, each on servers started with deploy/gunicorn.conf.py and APP_ENV=production:
1. SQLite: every scenario, warmed up, then REPS interleaved rounds; throughput as a ratio
   of the trivial endpoint's (GET /healthz) in the same round.
2. Overhead: validate with everything on vs. without the ownership guard and metrics
   (and, when Redis answers, with Redis-backed rate limits), in alternating rounds.
3. Scale: validate on 10,000 vs 1,000,000 licenses; admin stats on 1,000,000 users and
   audit search on 10,000,000 entries (latency, and the query plans behind them).
4. PostgreSQL, when it answers on 127.0.0.1:5432: every scenario again, in a throwaway
   database that is dropped afterwards.
Workers' RSS is read after every round (the leak check). Results: a table on stdout and
bench/results.json.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.config import load_config, rate_limit_settings

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
CACHE = BENCH / ".cache"
BIN = Path(sys.executable).parent
PG_ADMIN_URL = os.environ.get("BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
# Rate limiting stays on, with limits far above what one load generator on loopback can
# reach: the limiter does all its work (keys, counters, headers) and never answers 429.
HIGH_LIMIT = "10000000/minute"
# Every per-route limit the service has, as its configuration names them.
RATE_LIMIT_SETTINGS = rate_limit_settings(load_config(tempfile.gettempdir(), env={}))


@dataclass(frozen=True)
class Scenario:
    name: str
    what: str
    idempotency: bool = False


SCENARIOS = (
    Scenario("baseline", "GET /healthz (same app, same middleware)"),
    Scenario("validate", "POST /licenses/validate, VALID tokens"),
    Scenario("activate", "POST /licenses/activate, Bearer, new client ids"),
    Scenario("login", "POST /auth/login (argon2id, OWASP cost)"),
    Scenario("admin_stats", "GET /admin/stats/licenses and /users"),
    Scenario("audit_search", "GET /admin/audit-logs (first page)"),
    Scenario("order", "POST /orders (sandbox payment)", idempotency=True),
)
BY_NAME = {s.name: s for s in SCENARIOS}


@dataclass
class Settings:
    connections: int = 16
    threads: int = 1
    duration: float = 3.0
    warmup: float = 1.5
    reps: int = 3
    overhead_rounds: int = 3
    micro_rounds: int = 5
    scale_rounds: int = 3
    scale_users: int = 1_000_000
    scale_audit: int = 10_000_000
    small_users: int = 10_000
    small_audit: int = 100_000
    postgres: bool = True
    scale: bool = True
    overhead: bool = True
    quick: bool = False
    profile: str | None = None
    profile_seconds: float = 15.0
    ab: str | None = None
    ab_scenarios: tuple[str, ...] = ("baseline", "validate")
    ab_rounds: int = 5
    ab_micro_distinct: int = 0


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- environment ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answers(port: int) -> bool:
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
    """Production settings: real secrets, signing key, rate limits on (but high)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RATELIMIT_", "DB_", "JWT_", "GUNICORN_"))
        and k not in {"DATABASE_URL", "REDIS_URL", "OWNERSHIP_GUARD", "WEB_CONCURRENCY"}
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
        RATELIMIT_ENABLED="true",
        LOG_LEVEL="INFO",
        # Workers live through the whole run: steady state, and a leak shows as growth
        # instead of being hidden by recycling (deploy default: every 5000 requests).
        GUNICORN_MAX_REQUESTS="0",
    )
    env.update({name: HIGH_LIMIT for name in RATE_LIMIT_SETTINGS})
    env.update(extra)
    return env


RUN_SECRETS = (secrets.token_urlsafe(48), secrets.token_urlsafe(48))


def python(*args: str, env: dict[str, str], timeout: float = 1800) -> str:
    result = subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout


def migrate(env: dict[str, str]) -> None:
    subprocess.run(
        [BIN / "flask", "--app", "wsgi", "db", "upgrade"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
    )


# --- servers ------------------------------------------------------------------------------


class Server:
    """gunicorn -c deploy/gunicorn.conf.py APP, on a free loopback port."""

    def __init__(
        self,
        name: str,
        env: dict[str, str],
        workdir: Path,
        app: str = "wsgi:app",
        cwd: Path = ROOT,
    ):
        self.name = name
        self.cwd = cwd
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # Kept after the run (bench/.cache/logs) for a look at what went wrong.
        self.log_path = CACHE / "logs" / f"server-{name}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.env = {**env, "HOST": "127.0.0.1", "PORT": str(self.port)}
        self.app = app
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Server:
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(
                [BIN / "gunicorn", "-c", "deploy/gunicorn.conf.py", self.app],
                cwd=self.cwd,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server {self.name} exited: see {self.log_path}")
            with contextlib.suppress(OSError):
                urllib.request.urlopen(self.url + "/healthz", timeout=2).close()  # noqa: S310
                # Every worker answers (imports done) before anything is measured.
                if len(self.workers()) >= self.expected_workers():
                    return self
            time.sleep(0.2)
        raise RuntimeError(f"server {self.name} did not start: see {self.log_path}")

    def expected_workers(self) -> int:
        return int(self.env.get("WEB_CONCURRENCY") or (os.cpu_count() or 1) * 2 + 1)

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
        return total / os.sysconf("SC_CLK_TCK")

    def rss_mib(self) -> dict[int, float]:
        out = {}
        for pid in self.workers():
            with contextlib.suppress(OSError):
                status = Path(f"/proc/{pid}/status").read_text()
                kib = int(re.search(r"VmRSS:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
                out[pid] = round(kib / 1024, 1)
        return out

    def metrics(self) -> dict[str, float]:
        """The Prometheus counters (summed over workers), by full sample name."""
        body = urllib.request.urlopen(self.url + "/metrics", timeout=10).read().decode()  # noqa: S310
        values = {}
        for line in body.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                with contextlib.suppress(ValueError):
                    values[name] = float(value)
        return values

    def log_problems(self) -> dict[str, int]:
        """What the server logged that a benchmark must not cause."""
        text = self.log_path.read_text(errors="replace")
        return {
            "sqlite_busy": len(re.findall(r"database is locked|SQLITE_BUSY", text)),
            "tracebacks": text.count("Traceback (most recent call last)"),
            "status_5xx": len(re.findall(r'"status": 5\d\d', text)),
            "worker_timeouts": text.count("WORKER TIMEOUT"),
        }

    def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None


# --- load ---------------------------------------------------------------------------------


def wrk(
    server: Server, files: Path, scenario: Scenario, seconds: float, settings: Settings, tag: str
) -> dict[str, Any]:
    """One wrk run; its summary with throughput and error total."""
    args = [
        "wrk",
        f"-t{settings.threads}",
        f"-c{settings.connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "-s",
        str(BENCH / "load.lua"),
        server.url,
        "--",
        str(files / f"{scenario.name}.txt"),
        f"{tag}-{uuid.uuid4().hex[:6]}",
    ]
    if scenario.idempotency:
        args.append("idempotency")
    cpu = server.cpu_seconds()
    result = subprocess.run(args, capture_output=True, text=True, timeout=seconds + 60)
    cpu = server.cpu_seconds() - cpu
    line = next((x for x in result.stdout.splitlines() if x.startswith("BENCH ")), None)
    if result.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed: {result.stdout}\n{result.stderr}")
    out = json.loads(line[len("BENCH ") :])
    out["rps"] = round(out["requests"] / (out["duration_us"] / 1e6), 1)
    out["error_total"] = sum(out["errors"].values())
    # The server's CPU per request: unlike throughput, barely moved by other load on the
    # machine (the test suite of a colleague, say), so it is the steadier comparison.
    out["cpu_us"] = round(cpu / max(1, out["requests"]) * 1e6, 1)
    return out


def counter_delta(before: dict[str, float], after: dict[str, float], prefix: str) -> dict:
    return {
        k: after[k] - before.get(k, 0.0)
        for k in after
        if k.startswith(prefix) and after[k] - before.get(k, 0.0)
    }


def measure(
    server: Server, files: Path, scenario: Scenario, settings: Settings, tag: str
) -> dict[str, Any]:
    before = server.metrics()
    run = wrk(server, files, scenario, settings.duration, settings, tag)
    after = server.metrics()
    run["validations"] = counter_delta(before, after, "license_validations_total")
    run["activations"] = counter_delta(before, after, "license_activations_total")
    return run


def median(values: list[float]) -> float:
    return round(statistics.median(values), 3) if values else float("nan")


def summarise(rounds: list[dict[str, dict[str, Any]]], names: list[str]) -> dict[str, Any]:
    """Per scenario: median throughput, median ratio to the baseline of the same round,
    median p50/p99 (ms), errors summed over rounds."""
    out = {}
    for name in names:
        runs = [r[name] for r in rounds if name in r]
        ratios = [r[name]["rps"] / r["baseline"]["rps"] for r in rounds if name in r]
        out[name] = {
            "what": BY_NAME[name].what if name in BY_NAME else name,
            "rps": median([x["rps"] for x in runs]),
            "ratio": median(ratios),
            "ratios": [round(x, 3) for x in ratios],
            "cpu_us": median([x["cpu_us"] for x in runs]),
            # baseline's CPU per request / this one's: the throughput ratio an otherwise
            # idle machine would show (wrk's own CPU aside)
            "cpu_ratio": median(
                [r["baseline"]["cpu_us"] / r[name]["cpu_us"] for r in rounds if name in r]
            ),
            "p50_ms": median([x["latency_us"]["p50"] / 1000 for x in runs]),
            "p99_ms": median([x["latency_us"]["p99"] / 1000 for x in runs]),
            "errors": sum(x["error_total"] for x in runs),
            "requests": sum(x["requests"] for x in runs),
            "non_valid": sum(
                v
                for x in runs
                for k, v in x.get("validations", {}).items()
                if 'code="VALID"' not in k
            ),
        }
    return out


def run_matrix(
    server: Server, files: Path, settings: Settings, names: list[str], label: str
) -> dict[str, Any]:
    log(f"{label}: warm-up ({settings.warmup:g}s per scenario)")
    for name in names:
        wrk(server, files, BY_NAME[name], settings.warmup, settings, f"warm-{name}")
    rss = [server.rss_mib()]
    rounds = []
    for rep in range(settings.reps):
        this = {}
        for name in names:
            this[name] = measure(server, files, BY_NAME[name], settings, f"r{rep}-{name}")
            log(
                f"{label} round {rep + 1}/{settings.reps} {name:13s} "
                f"{this[name]['rps']:8.1f} req/s  p99 {this[name]['latency_us']['p99'] / 1000:7.1f}"
                f" ms  errors {this[name]['error_total']}"
            )
        rounds.append(this)
        rss.append(server.rss_mib())
    return {
        "scenarios": summarise(rounds, names),
        "rounds": rounds,
        "rss_mib": rss,
        "server_log": server.log_problems(),
    }


# --- phases -------------------------------------------------------------------------------


def seed_version() -> str:
    """Templates are rebuilt when the seeding code or the schema changes."""
    digest = hashlib.sha256((BENCH / "seed.py").read_bytes())
    for path in sorted((ROOT / "migrations" / "versions").glob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def template(users: int, audit: int) -> Path:
    """A seeded SQLite database, cached under bench/.cache (read-only afterwards)."""
    path = CACHE / f"scale-{users}-{audit}-{seed_version()}.db"
    if path.exists():
        return path
    for old in CACHE.glob(f"scale-{users}-{audit}-*.db*"):
        old.unlink()
    log(f"seeding {users:,} users/licenses and {audit:,} audit entries (cached afterwards)")
    started = time.monotonic()
    partial = path.with_suffix(".partial")
    for suffix in ("", "-wal", "-shm"):
        Path(f"{partial}{suffix}").unlink(missing_ok=True)
    env = service_env(f"sqlite:///{partial}", CACHE)
    migrate(env)
    python("-m", "bench.seed", "bulk", "--users", str(users), "--audit", str(audit), env=env)
    partial.rename(path)
    log(f"seeded in {time.monotonic() - started:.0f}s: {path.name}")
    return path


def request_files(env: dict[str, str], out: Path) -> dict[str, Any]:
    return json.loads(python("-m", "bench.seed", "requests", "--out", str(out), env=env))


def sqlite_phase(settings: Settings, workdir: Path, results: dict[str, Any]) -> None:
    source = template(settings.small_users, settings.small_audit)
    db = workdir / "main.db"
    shutil.copyfile(source, db)
    env = service_env(f"sqlite:///{db}", workdir)
    python("-m", "bench.seed", "accounts", env=env)
    files = workdir / "sqlite"
    seeded = request_files(env, files)
    server = Server("sqlite", env, workdir).start()
    variants: list[Server] = []
    try:
        names = [s.name for s in SCENARIOS]
        results["sqlite"] = {"seed": seeded, **run_matrix(server, files, settings, names, "sqlite")}
        if settings.overhead:
            variants = overhead_servers(env, workdir)
            # Fresh servers only, the full one included: they share one history (the
            # limiter's in-memory keys, for one, grow with it and cost per request).
            results["overhead"] = overhead_phase(variants[0], variants[1:], files, settings)
        if settings.profile:
            results["profile"] = profile(server, files, BY_NAME[settings.profile], settings)
        results["sqlite"]["rss_final_mib"] = server.rss_mib()
        results["sqlite"]["server_log"] = server.log_problems()
    finally:
        server.stop()
        for v in variants:
            v.stop()


def overhead_servers(env: dict[str, str], workdir: Path) -> list[Server]:
    variant = "bench.variants:app"
    no_metrics = {"BENCH_VARIANT": "no-metrics"}
    servers = [
        Server("full", env, workdir),
        Server("bare", {**env, "OWNERSHIP_GUARD": "off", **no_metrics}, workdir, app=variant),
        Server("no-guard", {**env, "OWNERSHIP_GUARD": "off"}, workdir),
        Server("no-metrics", {**env, **no_metrics}, workdir, app=variant),
        Server("recommended", {**env, "BENCH_VARIANT": "recommended"}, workdir, app=variant),
    ]
    if answers(6379):
        servers.append(Server("redis-limits", {**env, "REDIS_URL": REDIS_URL}, workdir))
    for s in servers:
        s.start()
    return servers


def overhead_phase(
    full: Server, variants: list[Server], files: Path, settings: Settings
) -> dict[str, Any]:
    """Validate on the same database, everything on vs. parts off, alternating rounds
    (and the baseline on the full and the "recommended" server, for their ratios)."""
    validate = BY_NAME["validate"]
    servers = [full, *variants]
    # the full and the "recommended" server also run these, for their own ratios
    compared, extra = {full.name, "recommended"}, ("baseline", "activate")
    for s in servers:
        wrk(s, files, validate, settings.warmup, settings, "warm")
    runs: dict[str, list[dict[str, Any]]] = {s.name: [] for s in servers}
    more: dict[str, dict[str, list[dict[str, Any]]]] = {
        name: {x: [] for x in extra} for name in compared
    }
    for rnd in range(settings.overhead_rounds):
        order = servers if rnd % 2 == 0 else list(reversed(servers))
        for s in order:
            runs[s.name].append(wrk(s, files, validate, settings.duration, settings, "ovh"))
            for x in extra if s.name in compared else ():
                more[s.name][x].append(wrk(s, files, BY_NAME[x], settings.duration, settings, x))
        done = ", ".join(f"{k} {v[-1]['rps']:.0f}" for k, v in runs.items())
        log(f"overhead round {rnd + 1}: validate {done} req/s")

    def per_round(name: str, key: str) -> list[float]:
        return [f[key] / v[key] for f, v in zip(runs[full.name], runs[name], strict=True)]

    out: dict[str, Any] = {}
    for name, values in runs.items():
        out[name] = {
            "rps": median([r["rps"] for r in values]),
            "p99_ms": median([r["latency_us"]["p99"] / 1000 for r in values]),
            "cpu_us": median([r["cpu_us"] for r in values]),
            "errors": sum(r["error_total"] for r in values),
            # full / variant per round, so each pair saw the same machine state
            "full_over_this": median(per_round(name, "rps")),
            "cpu_this_over_full": median([1 / x for x in per_round(name, "cpu_us")]),
        }
        if name in more:
            rounds = [
                {"validate": v, **{x: more[name][x][i] for x in extra}}
                for i, v in enumerate(values)
            ]
            out[name]["ratios"] = summarise(rounds, ["validate", "activate"])
    for part, name in (
        ("guard_and_metrics", "bare"),
        ("guard", "no-guard"),
        ("metrics", "no-metrics"),
    ):
        out[f"{part}_cost_pct"] = round((1 - out[name]["full_over_this"]) * 100, 1)
        out[f"{part}_cpu_cost_pct"] = round((1 - out[name]["cpu_this_over_full"]) * 100, 1)
    for s in variants:
        out[s.name]["server_log"] = s.log_problems()
    out["in_process"] = overhead_in_process(full.env, files, settings)
    return out


def overhead_in_process(env: dict[str, str], files: Path, settings: Settings) -> dict[str, Any]:
    """Guard and metrics cost as CPU per validation in one process (bench/micro.py),
    everything on vs both off, alternating runs: steadier than throughput on a busy
    machine."""
    sides = {
        "full": ({}, "wsgi"),
        "bare": ({"OWNERSHIP_GUARD": "off", "BENCH_VARIANT": "no-metrics"}, "bench.variants"),
    }
    cpu: dict[str, list[float]] = {name: [] for name in sides}
    # prometheus_client in multi-process mode (mmap files), as under gunicorn
    metrics_dir = Path(tempfile.mkdtemp(prefix="bench-metrics-"))
    env = {**env, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    for rnd in range(settings.micro_rounds):
        for name in list(sides)[:: 1 - 2 * (rnd % 2)]:
            extra, module = sides[name]
            out = python(
                *("-m", "bench.micro", str(files), "--app", module, "--requests", "2000"),
                *("--scenarios", "validate"),
                env={**env, **extra},
            )
            cpu[name].append(json.loads(out.strip().splitlines()[-1])["validate"])
    shutil.rmtree(metrics_dir, ignore_errors=True)
    full, bare = median(cpu["full"]), median(cpu["bare"])
    result = {
        "cpu_us": cpu,
        "full_us": full,
        "bare_us": bare,
        "cost_pct": round((full / bare - 1) * 100, 1),
    }
    log(f"guard + metrics in-process: {full:.0f} vs {bare:.0f} µs CPU per validation")
    return result


def timed_get(url: str, token: str, count: int) -> dict[str, Any]:
    """Sequential requests (one warm-up first): latency in ms, and the last body."""
    times = []
    body: Any = None
    for i in range(count + 1):
        request = urllib.request.Request(url, headers={"Authorization": token})  # noqa: S310
        started = time.perf_counter()
        with urllib.request.urlopen(request, timeout=120) as response:  # noqa: S310
            raw = response.read()
            status = response.status
        if i:
            times.append((time.perf_counter() - started) * 1000)
        body = json.loads(raw)
    return {
        "status": status,
        "p50_ms": round(statistics.median(times), 1),
        "max_ms": round(max(times), 1),
        "body": body,
    }


def scale_phase(settings: Settings, workdir: Path, results: dict[str, Any]) -> None:
    small = template(settings.small_users, settings.small_audit)
    big = template(settings.scale_users, settings.scale_audit)
    # Both templates are only read here (validate, admin reads), so they are served as is.
    servers = {}
    files = {}
    try:
        for label, path in (("10k", small), ("1m", big)):
            env = service_env(f"sqlite:///{path}", workdir)
            files[label] = workdir / f"scale-{label}"
            request_files(env, files[label])
            servers[label] = Server(f"scale-{label}", env, workdir).start()
        validate = BY_NAME["validate"]
        for label, s in servers.items():
            wrk(s, files[label], validate, settings.warmup * 2, settings, "warm")
        rps: dict[str, list[float]] = {k: [] for k in servers}
        p99: dict[str, list[float]] = {k: [] for k in servers}
        cpu: dict[str, list[float]] = {k: [] for k in servers}
        errors = dict.fromkeys(servers, 0)
        for rnd in range(settings.scale_rounds):
            order = list(servers) if rnd % 2 == 0 else list(reversed(servers))
            for label in order:
                run = wrk(servers[label], files[label], validate, settings.duration, settings, "s")
                rps[label].append(run["rps"])
                cpu[label].append(run["cpu_us"])
                p99[label].append(run["latency_us"]["p99"] / 1000)
                errors[label] += run["error_total"]
            log(f"scale round {rnd + 1}: 10k {rps['10k'][-1]:.0f}  1m {rps['1m'][-1]:.0f} req/s")
        ratio = median([b / a for a, b in zip(rps["10k"], rps["1m"], strict=True)])
        cpu_ratio = median([a / b for a, b in zip(cpu["10k"], cpu["1m"], strict=True)])
        out: dict[str, Any] = {
            "validate": {
                label: {"rps": median(v), "p99_ms": median(p99[label]), "errors": errors[label]}
                for label, v in rps.items()
            },
            "validate_1m_over_10k": ratio,
            # CPU per validation, 10k / 1M: the same question, steadier on a busy machine
            "validate_1m_over_10k_cpu": cpu_ratio,
        }
        out["admin"] = admin_latencies(servers["1m"], files["1m"])
        out["plans"] = json.loads(
            python("-m", "bench.explain", env=service_env(f"sqlite:///{big}", workdir))
        )
        out["server_log"] = {k: s.log_problems() for k, s in servers.items()}
        out["rss_final_mib"] = {k: s.rss_mib() for k, s in servers.items()}
        results["scale"] = out
    finally:
        for s in servers.values():
            s.stop()


def admin_latencies(server: Server, files: Path) -> dict[str, Any]:
    token = (files / "admin_stats.txt").read_text().split("\t")[2]
    base = server.url + "/api/v1/admin"
    first = timed_get(base + "/audit-logs?limit=20", token, 1)["body"]
    user_id = first["items"][0]["user_id"]
    since = "2026-01-01T00:00:00Z"
    urls = {
        "stats_users": "/stats/users",
        "stats_licenses": "/stats/licenses",
        "audit_first_page": "/audit-logs?limit=20",
        "audit_next_page": "/audit-logs?limit=20&cursor=" + first["next_cursor"],
        "audit_by_user": f"/audit-logs?limit=20&user_id={user_id}",
        "audit_by_action": "/audit-logs?limit=20&action=ORDER_PAID",
        "audit_by_action_since": "/audit-logs?limit=20&action=LICENSE_STATUS_CHANGED"
        f"&since={since}",
        "audit_time_window": "/audit-logs?limit=100&since=2026-03-01T00:00:00Z"
        "&until=2026-03-02T00:00:00Z",
    }
    out = {}
    for name, path in urls.items():
        result = timed_get(base + path, token, 5)
        body = result.pop("body")
        result["items"] = len(body.get("items", []))
        out[name] = result
        log(f"scale admin {name:22s} p50 {result['p50_ms']:8.1f} ms  max {result['max_ms']:8.1f}")
    return out


@contextlib.contextmanager
def postgres_database():
    import psycopg

    name = f"bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base, _, _ = PG_ADMIN_URL.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def postgres_phase(settings: Settings, workdir: Path, results: dict[str, Any]) -> None:
    with postgres_database() as url:
        env = service_env(url, workdir)
        migrate(env)
        python(
            "-m",
            "bench.seed",
            "bulk",
            "--users",
            str(settings.small_users),
            "--audit",
            str(settings.small_audit // 5),
            env=env,
        )
        python("-m", "bench.seed", "accounts", env=env)
        files = workdir / "postgres"
        seeded = request_files(env, files)
        server = Server("postgres", env, workdir).start()
        try:
            names = [s.name for s in SCENARIOS]
            # run_matrix reports the server log's problems itself
            results["postgres"] = {
                "seed": seeded,
                **run_matrix(server, files, settings, names, "postgres"),
            }
        finally:
            server.stop()


# --- before/after ---------------------------------------------------------------------------


def ab_phase(settings: Settings, workdir: Path) -> None:
    """This checkout ("after") against a git ref ("before"), on one database, in
    alternating rounds: each side's ratios to its own baseline, and after/before."""
    before_tree = workdir / "before"
    subprocess.run(
        ["git", "worktree", "add", "--detach", str(before_tree), settings.ab],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    servers: list[Server] = []
    try:
        db = workdir / "ab.db"
        shutil.copyfile(template(settings.small_users, settings.small_audit), db)
        env = service_env(f"sqlite:///{db}", workdir)
        python("-m", "bench.seed", "accounts", env=env)
        files = workdir / "files"
        request_files(env, files)
        before = Server("before", env, workdir, cwd=before_tree).start()
        servers.append(before)
        after = Server("after", env, workdir).start()
        servers.append(after)
        names = list(settings.ab_scenarios)
        for s in servers:
            for name in names:
                wrk(s, files, BY_NAME[name], settings.warmup, settings, "warm")
        rounds: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
        for rnd in range(settings.ab_rounds):
            order = servers if rnd % 2 == 0 else list(reversed(servers))
            this: dict[str, dict[str, Any]] = {"before": {}, "after": {}}
            for n in names:  # each scenario's before and after back to back
                for s in order:
                    this[s.name][n] = wrk(s, files, BY_NAME[n], settings.duration, settings, "ab")
            for side, runs in this.items():
                rounds[side].append(runs)
            log(
                f"ab round {rnd + 1}: "
                + "  ".join(
                    f"{side} " + " ".join(f"{n} {r[-1][n]['rps']:.0f}" for n in names)
                    for side, r in rounds.items()
                )
            )
        micro: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
        for rnd in range(settings.ab_rounds):
            for side, tree in (("before", before_tree), ("after", ROOT))[:: 1 - 2 * (rnd % 2)]:
                out = subprocess.run(
                    [
                        *(sys.executable, str(BENCH / "micro.py"), str(files)),
                        *("--distinct", str(settings.ab_micro_distinct)),
                    ],
                    cwd=tree,
                    env={**env, "PYTHONPATH": str(tree)},
                    capture_output=True,
                    text=True,
                    check=True,
                    timeout=600,
                ).stdout
                micro[side].append(json.loads(out.strip().splitlines()[-1]))
        summary = {side: summarise(r, names) for side, r in rounds.items()}
        print(f"\nbefore = {settings.ab}, after = this checkout; median of {settings.ab_rounds}")
        print(
            f"  {'scenario':13s} {'ratio: before':>13s} {'after':>6s}  {'cpu ratio: before':>17s}"
            f" {'after':>6s}  {'after/before rps':>16s} {'cpu/req':>7s}  p99"
        )
        for n in names:
            b, a = summary["before"][n], summary["after"][n]
            speed = median(
                [
                    x[n]["rps"] / y[n]["rps"]
                    for x, y in zip(rounds["after"], rounds["before"], strict=True)
                ]
            )
            cpu = median(
                [
                    x[n]["cpu_us"] / y[n]["cpu_us"]
                    for x, y in zip(rounds["after"], rounds["before"], strict=True)
                ]
            )
            print(
                f"  {n:13s} {b['ratio']:13.3f} {a['ratio']:6.3f}  {b['cpu_ratio']:17.3f}"
                f" {a['cpu_ratio']:6.3f}  {speed:16.3f} {cpu:7.3f}  "
                f"{b['p99_ms']:.1f} -> {a['p99_ms']:.1f} ms; errors {b['errors']}/{a['errors']}"
            )
        print("  in-process CPU per request (µs, median; bench/micro.py):")
        for n in ("baseline", "validate"):
            b = median([m[n] for m in micro["before"]])
            a = median([m[n] for m in micro["after"]])
            print(f"    {n:11s} before {b:8.1f}  after {a:8.1f}  after/before {a / b:6.3f}")
        b = median([m["baseline"] / m["validate"] for m in micro["before"]])
        a = median([m["baseline"] / m["validate"] for m in micro["after"]])
        print(f"    baseline/validate CPU: before {b:.3f}  after {a:.3f}")
    finally:
        for s in servers:
            s.stop()
        subprocess.run(
            ["git", "worktree", "remove", "--force", str(before_tree)], cwd=ROOT, check=False
        )


# --- profiling ----------------------------------------------------------------------------


def profile(server: Server, files: Path, scenario: Scenario, settings: Settings) -> dict:
    """py-spy on every worker while wrk drives `scenario`; a flame summary (collapsed)."""
    py_spy = BIN / "py-spy"
    if not py_spy.exists():
        return {"error": "py-spy is not installed (pip install -e '.[bench]')"}
    out = CACHE / f"profile-{scenario.name}.txt"
    assert server.proc is not None
    spy = subprocess.Popen(
        [
            py_spy,
            "record",
            "--pid",
            str(server.proc.pid),
            "--subprocesses",
            "--format",
            "raw",
            "--rate",
            "250",
            "--duration",
            str(int(settings.profile_seconds)),
            "-o",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    time.sleep(1.0)
    run = wrk(server, files, scenario, settings.profile_seconds - 2, settings, "profile")
    _, err = spy.communicate(timeout=120)
    if not out.exists():
        return {"error": err.decode(errors="replace")[-2000:]}
    summary = flame_summary(out.read_text())
    summary["rps_while_profiled"] = run["rps"]
    summary["raw"] = str(out.relative_to(ROOT))
    print_flame(summary)
    return summary


def _frame(raw: str) -> str:
    # py-spy raw frames: "function (path/to/file.py:line)"; keep function and short file.
    match = re.match(r"(.*) \((.*?):?(\d*)\)$", raw)
    if not match:
        return raw
    func, path, _line = match.groups()
    short = path.split("site-packages/")[-1].replace(str(ROOT) + "/", "")
    return f"{func} ({short})"


def flame_summary(collapsed: str, top: int = 30) -> dict[str, Any]:
    """Self and inclusive share of samples per function, from collapsed stacks."""
    total = 0
    self_time: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_frame(f) for f in stack.split(";")]
        frames = [f for f in frames if not f.startswith(("process ", "Thread "))]
        if not frames:
            continue
        total += n
        self_time[frames[-1]] = self_time.get(frames[-1], 0) + n
        for f in set(frames):
            inclusive[f] = inclusive.get(f, 0) + n

    def table(counts: dict[str, int]) -> list[tuple[str, float]]:
        ranked = sorted(counts.items(), key=lambda kv: -kv[1])[:top]
        return [(name, round(100 * n / total, 1)) for name, n in ranked]

    return {"samples": total, "self_pct": table(self_time), "inclusive_pct": table(inclusive)}


def print_flame(summary: dict[str, Any]) -> None:
    print(f"\nprofile: {summary['samples']} samples")
    for title, key in (("inclusive", "inclusive_pct"), ("self", "self_pct")):
        print(f"  top {title}:")
        for name, pct in summary[key][:20]:
            print(f"    {pct:5.1f}%  {name}")


# --- report -------------------------------------------------------------------------------


def leak_check(rss: list[dict[int, float]]) -> dict[str, Any]:
    """RSS per worker after warm-up and after each round; growth over the measured rounds."""
    if len(rss) < 3:
        return {"verdict": "not enough rounds"}
    first, last = rss[1], rss[-1]
    growth = {pid: round(last[pid] - first[pid], 1) for pid in last if pid in first}
    worst = max(growth.values(), default=0.0)
    return {
        "growth_mib_after_round_1": growth,
        "worst_mib": worst,
        "verdict": "flat" if worst <= 2.0 else "grows",
    }


def targets(results: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    sqlite = results.get("sqlite", {}).get("scenarios", {})
    if "validate" in sqlite:
        v = sqlite["validate"]
        out["validate"] = {
            "ratio": v["ratio"],
            "p99_ms": v["p99_ms"],
            "errors": v["errors"] + v["non_valid"],
            "met": v["ratio"] >= 0.6 and v["p99_ms"] <= 25 and v["errors"] + v["non_valid"] == 0,
        }
    if "activate" in sqlite:
        a = sqlite["activate"]
        busy = results["sqlite"]["server_log"]["sqlite_busy"]
        out["activate"] = {
            "ratio": a["ratio"],
            "errors": a["errors"],
            "sqlite_busy": busy,
            "met": a["ratio"] >= 0.3 and a["errors"] == 0 and busy == 0,
        }
    if "overhead" in results:
        o = results["overhead"]
        cost = o["in_process"]["cost_pct"]
        out["guard_and_metrics"] = {
            "cost_pct_cpu_in_process": cost,
            "cost_pct_wrk_throughput": o["guard_and_metrics_cost_pct"],
            "met": cost <= 5.0,
        }
    if "scale" in results:
        ratio = results["scale"]["validate_1m_over_10k"]
        cpu_ratio = results["scale"]["validate_1m_over_10k_cpu"]
        out["scale_validate"] = {
            "ratio": ratio,
            "cpu_ratio": cpu_ratio,
            "met": ratio >= 0.9 or cpu_ratio >= 0.9,
        }
        slowest = max(x["p50_ms"] for x in results["scale"]["admin"].values())
        out["scale_admin_interactive"] = {"slowest_p50_ms": slowest, "met": slowest <= 1000}
    return out


def print_table(results: dict[str, Any]) -> None:
    for backend in ("sqlite", "postgres"):
        if backend not in results:
            continue
        part = results[backend]
        print(
            f"\n{backend}: {results['settings']['connections']} connections, "
            f"{results['settings']['reps']} rounds x {results['settings']['duration']:g}s, "
            f"{part['seed']['licenses']:,} licenses"
        )
        print(
            f"  {'scenario':13s} {'req/s':>8s} {'ratio':>6s} {'p50 ms':>7s} {'p99 ms':>7s} "
            f"{'errors':>6s}"
        )
        for name, s in part["scenarios"].items():
            print(
                f"  {name:13s} {s['rps']:8.1f} {s['ratio']:6.2f} {s['p50_ms']:7.1f} "
                f"{s['p99_ms']:7.1f} {s['errors'] + s['non_valid']:6d}"
            )
        print(f"  server log: {part['server_log']}")
        print(
            f"  worker RSS MiB (final): {sorted(part['rss_mib'][-1].values())}; "
            f"leak check: {part['leak_check']['verdict']} "
            f"(worst growth {part['leak_check'].get('worst_mib')} MiB)"
        )
    if "overhead" in results:
        o = results["overhead"]
        print(
            "\noverhead on validate (throughput; CPU per request): "
            + ", ".join(
                f"{part} {o[part + '_cost_pct']}%; {o[part + '_cpu_cost_pct']}%"
                for part in ("guard_and_metrics", "guard", "metrics")
            )
        )
        m = o["in_process"]
        print(
            f"  guard + metrics, in-process CPU per validation: {m['full_us']} vs {m['bare_us']}"
            f" µs without them: {m['cost_pct']}%"
        )
        print("  ratios to the baseline, as run vs with the changes recommended outside this")
        print("  branch (bench/README.md), alternating rounds:")
        for n in ("validate", "activate"):
            f, r = o["full"]["ratios"][n], o["recommended"]["ratios"][n]
            print(
                f"    {n:9s} {f['ratio']:.3f} -> {r['ratio']:.3f} (CPU {f['cpu_ratio']:.3f} -> "
                f"{r['cpu_ratio']:.3f}); p99 {f['p99_ms']:.1f} -> {r['p99_ms']:.1f} ms"
            )
        if "redis-limits" in o:
            print(
                f"  Redis-backed rate limits: {o['redis-limits']['rps']} req/s "
                f"(full/this {o['redis-limits']['full_over_this']})"
            )
    if "scale" in results:
        sc = results["scale"]
        big, small = sc["validate"]["1m"], sc["validate"]["10k"]
        print(
            f"\nscale: validate 1M/10k = {sc['validate_1m_over_10k']} "
            f"(CPU per request: {sc['validate_1m_over_10k_cpu']}; "
            f"{big['rps']} vs {small['rps']} req/s; "
            f"p99 {big['p99_ms']} vs {small['p99_ms']} ms)"
        )
        for name, a in sc["admin"].items():
            print(f"  {name:22s} p50 {a['p50_ms']:8.1f} ms  max {a['max_ms']:8.1f} ms")
    print("\ntargets:")
    for name, t in results["targets"].items():
        print(f"  {'MET ' if t.pop('met') else 'MISS'} {name}: {t}")


README_START, README_END = "<!-- results: written by bench/run.py -->", "<!-- /results -->"


def record_in_readme(table: str, results: dict[str, Any]) -> None:
    """The latest table goes into bench/README.md, between its two markers."""
    readme = BENCH / "README.md"
    text = readme.read_text() if readme.exists() else ""
    if README_START not in text or README_END not in text:
        return
    head, _, rest = text.partition(README_START)
    _, _, tail = rest.partition(README_END)
    when = f"{results['started_at']}, {results['machine']['cpus']} cores, {results['elapsed_s']} s"
    block = f"{README_START}\nLatest full run ({when}):\n\n```\n{table.strip()}\n```\n{README_END}"
    readme.write_text(head + block + tail)


def machine() -> dict[str, Any]:
    import sqlite3

    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "platform": platform.platform(),
        "wrk": subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split("\n")[0],
    }


def parse_args(argv: list[str] | None) -> Settings:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="1 round of 2s; no scale phase; README untouched"
    )
    parser.add_argument("--reps", type=int)
    parser.add_argument("--duration", type=float)
    parser.add_argument("--connections", type=int)
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--no-scale", action="store_true")
    parser.add_argument("--no-overhead", action="store_true")
    parser.add_argument("--profile", choices=sorted(BY_NAME), help="py-spy one scenario")
    parser.add_argument(
        "--ab",
        metavar="GIT_REF",
        help="only compare this checkout with GIT_REF (before/after of an optimisation)",
    )
    parser.add_argument(
        "--ab-scenarios", default="baseline,validate", help="comma-separated, with baseline"
    )
    parser.add_argument("--ab-rounds", type=int, default=5)
    parser.add_argument(
        "--ab-micro-distinct",
        type=int,
        default=0,
        help="in-process part: cycle over N requests only (repeated tokens)",
    )
    args = parser.parse_args(argv)
    s = Settings()
    s.quick = args.quick
    if args.quick:
        s.reps, s.duration, s.warmup, s.overhead_rounds, s.scale = 1, 2.0, 1.0, 2, False
    s.reps = args.reps or s.reps
    s.duration = args.duration or s.duration
    s.connections = args.connections or s.connections
    s.postgres = s.postgres and not args.no_postgres
    s.scale = s.scale and not args.no_scale
    s.overhead = not args.no_overhead
    s.profile = args.profile
    s.ab = args.ab
    s.ab_scenarios = tuple(args.ab_scenarios.split(","))
    s.ab_rounds = args.ab_rounds
    s.ab_micro_distinct = args.ab_micro_distinct
    return s


def main(argv: list[str] | None = None) -> None:
    settings = parse_args(argv)
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install wrk (make bench does it)")
    started = time.monotonic()
    CACHE.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "settings": settings.__dict__,
        "server": {
            "gunicorn": "deploy/gunicorn.conf.py, sync workers, WEB_CONCURRENCY default "
            "(2 x cores + 1), GUNICORN_MAX_REQUESTS=0",
            "app": "APP_ENV=production: JSON access logs, metrics, ownership guard (raise), "
            f"rate limits on at {HIGH_LIMIT} (memory storage unless noted)",
        },
    }
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        workdir = Path(tmp)
        if settings.ab:
            ab_phase(settings, workdir)
            return
        sqlite_phase(settings, workdir, results)
        if settings.scale:
            scale_phase(settings, workdir, results)
        if settings.postgres:
            if answers(5432):
                postgres_phase(settings, workdir, results)
            else:
                results["postgres"] = None
                log("PostgreSQL does not answer on 127.0.0.1:5432: skipped")
    for backend in ("sqlite", "postgres"):
        if results.get(backend):
            results[backend]["leak_check"] = leak_check(results[backend]["rss_mib"])
    if results.get("postgres") is None:
        results.pop("postgres", None)
    results["targets"] = targets(results)
    results["elapsed_s"] = round(time.monotonic() - started)
    (BENCH / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    table = io.StringIO()
    with contextlib.redirect_stdout(table):
        print_table(json.loads(json.dumps(results, default=str)))
    print(table.getvalue(), end="")
    if not settings.quick:
        record_in_readme(table.getvalue(), results)
    log(f"done in {results['elapsed_s']}s; wrote bench/results.json")
