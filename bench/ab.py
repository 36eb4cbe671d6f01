"""Before/after of a change: this checkout against a git ref, on one database, in
alternating rounds (`python -m bench --ab REF`), on SQLite or PostgreSQL
(`--ab-backend`), at one or more connection counts (`--ab-connections 16,64`: activate
and orders under contention)."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench import server
from bench.load import median, wrk
from bench.phases import limits_storage, postgres_database, request_files, template
from bench.scenarios import BY_NAME, Settings
from bench.server import BENCH, ROOT, Server, log


def ab_database(settings: Settings, workdir: Path, stack: contextlib.ExitStack) -> dict[str, str]:
    """The service's environment on a seeded database both sides share: a copy of the
    SQLite template, or a throwaway PostgreSQL database (dropped afterwards); rate limits
    in Redis when it answers, as in the main phase (`--memory-limits`: in memory)."""
    if settings.ab_backend == "postgres":
        env = server.service_env(stack.enter_context(postgres_database()), workdir)
        server.migrate(env)
        users, audit = str(settings.small_users), str(settings.small_audit // 5)
        server.python("-m", "bench.seed", "bulk", "--users", users, "--audit", audit, env=env)
    else:
        db = workdir / "ab.db"
        shutil.copyfile(template(settings.small_users, settings.small_audit), db)
        env = server.service_env(f"sqlite:///{db}", workdir)
    env |= limits_storage(settings)
    server.python("-m", "bench.seed", "accounts", env=env)
    return env


def case_name(scenario: str, connections: int, settings: Settings) -> str:
    return scenario if len(settings.ab_connections) == 1 else f"{scenario}@{connections}"


def ab_phase(settings: Settings, workdir: Path) -> None:
    """Each side's throughput, CPU per request and latency, after/before per round, and
    the in-process CPU per request of bench/micro.py in both trees."""
    before_tree = workdir / "before"
    subprocess.run(
        ["git", "worktree", "add", "--detach", str(before_tree), settings.ab],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    servers: list[Server] = []
    with contextlib.ExitStack() as stack:  # the database outlives the servers
        try:
            env = ab_database(settings, workdir, stack)
            files = workdir / "files"
            request_files(env, files)
            servers = server.start_all(
                [Server("before", env, cwd=before_tree), Server("after", env)]
            )
            names = list(settings.ab_scenarios)
            cases = [(n, c) for c in settings.ab_connections for n in names]
            for s in servers:
                for name, conns in cases:
                    wrk(s, files, BY_NAME[name], settings.warmup, settings, "warm", conns)
            rounds = ab_rounds(settings, servers, files, cases)
            micro = ab_micro(settings, env, files, names, before_tree)
            labels = [case_name(n, c, settings) for n, c in cases]
            print_ab(settings, labels, names, rounds, micro)
        finally:
            server.stop_all(servers)
            subprocess.run(
                ["git", "worktree", "remove", "--force", str(before_tree)], cwd=ROOT, check=False
            )


def ab_rounds(
    settings: Settings, servers: list[Server], files: Path, cases: list[tuple[str, int]]
) -> dict[str, list[dict[str, Any]]]:
    rounds: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
    for rnd in range(settings.ab_rounds):
        order = servers if rnd % 2 == 0 else list(reversed(servers))
        this: dict[str, dict[str, Any]] = {"before": {}, "after": {}}
        for n, c in cases:  # each case's before and after back to back
            for s in order:
                this[s.name][case_name(n, c, settings)] = wrk(
                    s, files, BY_NAME[n], settings.duration, settings, "ab", c
                )
        for side, runs in this.items():
            rounds[side].append(runs)
        log(
            f"ab round {rnd + 1}: "
            + "  ".join(
                f"{side} " + " ".join(f"{k} {v['rps']:.0f}" for k, v in r[-1].items())
                for side, r in rounds.items()
            )
        )
    return rounds


def ab_micro(
    settings: Settings, env: dict[str, str], files: Path, names: list[str], before_tree: Path
) -> dict[str, list[dict[str, Any]]]:
    micro: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
    for rnd in range(settings.ab_rounds if settings.ab_micro else 0):
        for side, tree in (("before", before_tree), ("after", ROOT))[:: 1 - 2 * (rnd % 2)]:
            out = subprocess.run(
                [
                    *(sys.executable, str(BENCH / "micro.py"), str(files)),
                    *("--scenarios", ",".join(names)),
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
    return micro


def print_ab(
    settings: Settings,
    cases: list[str],
    names: list[str],
    rounds: dict[str, list[dict[str, Any]]],
    micro: dict[str, list[dict[str, Any]]],
) -> None:
    pairs = list(zip(rounds["before"], rounds["after"], strict=True))
    print(
        f"\nbefore = {settings.ab}, after = this checkout; {settings.ab_backend}; "
        f"median of {settings.ab_rounds}"
    )
    print(
        f"  {'scenario':13s} {'req/s before':>12s} {'after':>8s} {'after/before':>12s}"
        f" {'cpu/req after/before':>20s}  p50 / p99 ms before -> after  errors"
    )
    for n in cases:
        b = median(x[n]["rps"] for x, _ in pairs)
        a = median(y[n]["rps"] for _, y in pairs)
        # A round where a side answered nothing (a machine too busy for the duration) has
        # no ratio: left out rather than divided by.
        speed = median(y[n]["rps"] / x[n]["rps"] for x, y in pairs if x[n]["rps"])
        cpu = median(y[n]["cpu_us"] / x[n]["cpu_us"] for x, y in pairs if x[n]["cpu_us"])
        p50b, p50a = (median(r[n]["p50_ms"] for r in rounds[side]) for side in ("before", "after"))
        p99b, p99a = (median(r[n]["p99_ms"] for r in rounds[side]) for side in ("before", "after"))
        errors = [sum(r[n]["error_total"] for r in rounds[side]) for side in ("before", "after")]
        print(
            f"  {n:13s} {b:12.1f} {a:8.1f} {speed:12.3f} {cpu:20.3f}  "
            f"{p50b:.0f} / {p99b:.0f} -> {p50a:.0f} / {p99a:.0f}  {errors[0]} / {errors[1]}"
        )
    if not micro["before"]:
        return
    print("  in-process CPU per request (µs, median; bench/micro.py):")
    for n in names:
        b = median(m[n]["cpu_us"] for m in micro["before"])
        a = median(m[n]["cpu_us"] for m in micro["after"])
        print(f"    {n:11s} before {b:8.1f}  after {a:8.1f}  after/before {a / b:6.3f}")
