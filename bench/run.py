"""The benchmark (issues 9 and 17): the real service under gunicorn, driven by wrk on
loopback, beside two bare reference apps.

    make bench                       # or: .venv/bin/python -m bench [options]
    make bench BENCH_ARGS="--quick"  # one short round of every scenario: a smoke test
    make bench BENCH_ARGS="--ab HEAD~1"   # before/after of a change

Phases (bench/README.md says more), each on servers started with deploy/gunicorn.conf.py
and APP_ENV=production:
1. Main (bench/phases.py): every scenario on SQLite and PostgreSQL, beside Flask hello,
   the minimal validate and (SQLite) the featured validate and its healthz
   (bench/reference/), in interleaved rounds; ratios per round.
2. Contention (bench/prototypes.py): activate and orders at 16 and 64 connections, the
   service as it is and with every prototype.
3. Prototypes (bench/prototypes.py, bench/variants.py): each recommended optimisation
   applied from outside app/, against the service as it is, in alternating rounds.
4. Scale (bench/scale.py): validate on 10k vs 1M licenses; admin reads at 1M/10M rows.
5. Anatomy (bench/anatomy.py): where the time goes per request, py-spy on the workers
   and pyinstrument in-process.
Then MET/MISS per target (bench/report.py), bench/results.json, and the table in
bench/README.md (full runs only).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.scenarios import BY_NAME, Settings
from bench.server import BENCH, CACHE, HIGH_LIMIT, WORKERS, answers, log


def parse_args(argv: list[str] | None) -> Settings:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="every scenario once, briefly (no contention, prototypes, scale or anatomy); "
        "exit 1 on any error; README untouched",
    )
    parser.add_argument("--reps", type=int)
    parser.add_argument("--duration", type=float)
    parser.add_argument("--connections", type=int)
    parser.add_argument("--scenarios", help="comma-separated subset of the main phase's")
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--no-scale", action="store_true")
    parser.add_argument("--no-prototypes", action="store_true")
    parser.add_argument("--no-contention", action="store_true")
    parser.add_argument("--no-anatomy", action="store_true")
    parser.add_argument(
        "--memory-limits",
        action="store_true",
        help="rate limits in memory (per worker) even when Redis answers",
    )
    parser.add_argument(
        "--ab",
        metavar="GIT_REF",
        help="only compare this checkout with GIT_REF (before/after of an optimisation)",
    )
    parser.add_argument("--ab-scenarios", default="healthz,validate", help="comma-separated")
    parser.add_argument("--ab-rounds", type=int, default=5)
    parser.add_argument("--ab-backend", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument(
        "--ab-no-micro", action="store_true", help="wrk rounds only (no in-process part)"
    )
    parser.add_argument(
        "--ab-connections", help="comma-separated wrk connection counts (default: --connections)"
    )
    parser.add_argument(
        "--ab-micro-distinct",
        type=int,
        default=0,
        help="in-process part: cycle over N requests only (repeated tokens)",
    )
    args = parser.parse_args(argv)
    s = Settings.quick_round() if args.quick else Settings()
    s.reps = args.reps or s.reps
    s.duration = args.duration or s.duration
    s.connections = args.connections or s.connections
    if args.scenarios:
        s.scenarios = tuple(n for n in args.scenarios.split(",") if n in BY_NAME)
    s.postgres = s.postgres and not args.no_postgres
    s.scale = s.scale and not args.no_scale
    s.prototypes = s.prototypes and not args.no_prototypes
    s.contention = s.contention and not args.no_contention
    s.anatomy = s.anatomy and not args.no_anatomy
    s.redis_limits = not args.memory_limits
    s.ab = args.ab
    s.ab_scenarios = tuple(args.ab_scenarios.split(","))
    s.ab_rounds = args.ab_rounds
    s.ab_backend = args.ab_backend
    s.ab_micro = not args.ab_no_micro
    s.ab_connections = (
        tuple(int(c) for c in args.ab_connections.split(","))
        if args.ab_connections
        else (s.connections,)
    )
    s.ab_micro_distinct = args.ab_micro_distinct
    return s


def main(argv: list[str] | None = None) -> None:
    from bench import anatomy, phases, prototypes, report, scale
    from bench.ab import ab_phase

    settings = parse_args(argv)
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install wrk (make bench does it)")
    started = time.monotonic()
    CACHE.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": report.machine(),
        "settings": settings.__dict__,
        "server": {
            "gunicorn": f"deploy/gunicorn.conf.py, sync workers, {WORKERS} (2 x cores + 1, "
            "its default), GUNICORN_MAX_REQUESTS=0; the reference apps alike",
            "app": "APP_ENV=production: JSON access logs, metrics, ownership guard (raise), "
            f"TRUSTED_PROXIES=1, rate limits on at {HIGH_LIMIT}",
            "rate_limit_storage": "Redis"
            if settings.redis_limits and answers(6379)
            else "memory (per worker)",
        },
    }
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp, contextlib.ExitStack() as stack:
        workdir = Path(tmp)
        if settings.ab:
            ab_phase(settings, workdir)
            return
        backends = phases.prepare(settings, workdir, stack)
        problems += phases.main_phase(settings, backends, results)
        if settings.contention:
            results["contention"] = prototypes.contention_phase(settings, backends)
        if settings.prototypes:
            results["prototypes"] = prototypes.prototype_phase(settings, backends)
        if settings.scale:
            scale.scale_phase(settings, workdir, results)
        if settings.anatomy:
            results["anatomy"] = anatomy.anatomy_phase(settings, backends)
    results["targets"] = report.targets(results)
    results["problems"] = problems
    results["elapsed_s"] = round(time.monotonic() - started)
    name = "results-quick.json" if settings.quick else "results.json"
    (BENCH / name).write_text(json.dumps(results, indent=2, default=str) + "\n")
    table = io.StringIO()
    with contextlib.redirect_stdout(table):
        report.print_table(json.loads(json.dumps(results, default=str)))
    print(table.getvalue(), end="")
    if not settings.quick:
        report.record_in_readme(table.getvalue(), results)
    log(f"done in {results['elapsed_s']}s; wrote bench/{name}")
    if problems:
        print("\nproblems:\n  " + "\n  ".join(problems))
        if settings.quick:
            sys.exit(1)
