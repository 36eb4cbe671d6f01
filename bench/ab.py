"""Before/after of a change: this checkout against a git ref, on one database, in
alternating rounds (`python -m bench --ab REF`)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.load import median, wrk
from bench.phases import request_files, template
from bench.scenarios import BY_NAME, Settings
from bench.server import BENCH, ROOT, Server, log, python, service_env, start_all, stop_all


def ab_phase(settings: Settings, workdir: Path) -> None:
    """Each side's throughput and CPU per request, after/before per round, and the
    in-process CPU per request of bench/micro.py in both trees."""
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
        servers = start_all([Server("before", env, cwd=before_tree), Server("after", env)])
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
        micro: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
        for rnd in range(settings.ab_rounds):
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
        print_ab(settings, names, rounds, micro)
    finally:
        stop_all(servers)
        subprocess.run(
            ["git", "worktree", "remove", "--force", str(before_tree)], cwd=ROOT, check=False
        )


def print_ab(
    settings: Settings,
    names: list[str],
    rounds: dict[str, list[dict[str, Any]]],
    micro: dict[str, list[dict[str, Any]]],
) -> None:
    pairs = list(zip(rounds["before"], rounds["after"], strict=True))
    print(f"\nbefore = {settings.ab}, after = this checkout; median of {settings.ab_rounds}")
    print(
        f"  {'scenario':13s} {'req/s before':>12s} {'after':>8s} {'after/before':>12s}"
        f" {'cpu/req after/before':>20s}  p99 before -> after"
    )
    for n in names:
        b = median(x[n]["rps"] for x, _ in pairs)
        a = median(y[n]["rps"] for _, y in pairs)
        speed = median(y[n]["rps"] / x[n]["rps"] for x, y in pairs)
        cpu = median(y[n]["cpu_us"] / x[n]["cpu_us"] for x, y in pairs)
        p99b = median(x[n]["p99_ms"] for x, _ in pairs)
        p99a = median(y[n]["p99_ms"] for _, y in pairs)
        print(
            f"  {n:13s} {b:12.1f} {a:8.1f} {speed:12.3f} {cpu:20.3f}  {p99b:.1f} -> {p99a:.1f} ms"
        )
    print("  in-process CPU per request (µs, median; bench/micro.py):")
    for n in names:
        b = median(m[n]["cpu_us"] for m in micro["before"])
        a = median(m[n]["cpu_us"] for m in micro["after"])
        print(f"    {n:11s} before {b:8.1f}  after {a:8.1f}  after/before {a / b:6.3f}")
