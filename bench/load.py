"""Load: wrk runs (bench/load.lua) and their summaries over interleaved rounds."""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from bench.scenarios import BY_NAME, Scenario, Settings
from bench.server import BENCH, Server, log, machine_cpu, request

# A run during which other processes used more than this many cores is reported as disturbed
# (bench/README.md, "Noise"): its figures say more about the machine than about the server.
DISTURBED_CORES = 0.25


def median(values: Iterable[float]) -> float:
    values = list(values)
    return round(statistics.median(values), 3) if values else float("nan")


def wrk(
    server: Server,
    files: Path,
    scenario: Scenario,
    seconds: float,
    settings: Settings,
    tag: str,
    connections: int | None = None,
) -> dict[str, Any]:
    """One wrk run; its summary with throughput, latency, errors and server CPU."""
    connections = connections or settings.connections
    args = [
        "wrk",
        f"-t{settings.threads}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "-s",
        str(BENCH / "load.lua"),
        server.url,
        "--",
        str(files / scenario.file),
        f"{tag}-{uuid.uuid4().hex[:6]}",
    ]
    if scenario.idempotency:
        args.append("idempotency")
    cpu, machine, children = server.cpu_seconds(), machine_cpu(), _children_cpu()
    started = time.monotonic()
    result = subprocess.run(args, capture_output=True, text=True, timeout=seconds + 60)
    elapsed = time.monotonic() - started
    cpu = server.cpu_seconds() - cpu
    load = others_cores(machine, machine_cpu(), cpu, _children_cpu() - children, elapsed)
    drain(server)
    line = next((x for x in result.stdout.splitlines() if x.startswith("BENCH ")), None)
    if result.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed: {result.stdout}\n{result.stderr}")
    out = json.loads(line[len("BENCH ") :])
    out["rps"] = round(out["requests"] / (out["duration_us"] / 1e6), 1)
    out["error_total"] = sum(out["errors"].values())
    out["p50_ms"] = out["latency_us"]["p50"] / 1000
    out["p99_ms"] = out["latency_us"]["p99"] / 1000
    # The server's CPU per request: unlike throughput, barely moved by other load on the
    # machine (the test suite of a colleague, say), so it is the steadier comparison.
    out["cpu_us"] = round(cpu / max(1, out["requests"]) * 1e6, 1)
    # ... but not unmoved: what the rest of the machine used meanwhile says whether a run's
    # figures are the server's or the machine's.
    out.update(load)
    return out


def _children_cpu() -> float:
    """CPU seconds of this process's finished children (wrk, once it has been waited for)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def others_cores(
    before: dict[str, Any],
    after: dict[str, Any],
    server_cpu: float,
    wrk_cpu: float,
    elapsed: float,
) -> dict[str, float]:
    """Cores used during a run (`machine_cpu()` before and after it) by the database server
    and by every other process but the server under test and wrk: another session's test
    suite, say. On 2 cores one such process takes half of what the server could have had
    (issue 17: the service's throughput halved between rounds, its CPU per request +25 %)."""
    # per process: one that ended during the run takes its whole CPU time out of a sum
    # (what it used during the run is counted with the others)
    database = sum(t - before["postgres"].get(pid, 0.0) for pid, t in after["postgres"].items())
    others = after["busy"] - before["busy"] - server_cpu - wrk_cpu - database
    return {
        "others_cores": round(max(0.0, others) / elapsed, 2),
        "database_cores": round(database / elapsed, 2),
    }


def drain(server: Server, timeout: float = 30.0) -> None:
    """Wait until the server has answered what wrk left behind. wrk stops reading when its
    time is up, but the requests waiting in the listen backlog (up to the connections
    beyond the workers) are still served, one after the other: the next run would start
    behind them (64 queued orders kept the next 6 s run from completing any request).
    A request sent now is answered after the backlog; the other workers may still be busy
    with its last requests then (after logins at 16 connections, all 5 for ~0.2 s), so
    the wait ends when every worker is back waiting for connections."""
    import contextlib

    with contextlib.suppress(OSError):  # a timeout too: the run after it shows the rest
        request(server.url + "/healthz", "GET", None, None)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not all(map(server.worker_idle, server.workers())):
        time.sleep(0.005)


def measure(
    server: Server, files: Path, scenario: Scenario, settings: Settings, tag: str
) -> dict[str, Any]:
    """A wrk run, plus what the service itself counted: validations by code (a
    validation that is not VALID did not do the work the scenario means)."""
    counted = scenario.name == "validate" and not server.app.startswith("bench.reference")
    before = server.counters("license_validations", "code") if counted else {}
    run = wrk(server, files, scenario, settings.duration, settings, tag)
    if counted:
        after = server.counters("license_validations", "code")
        run["not_valid"] = sum(v - before.get(k, 0.0) for k, v in after.items() if k != "VALID")
    return run


def preflight(server: Server, files: Path, names: Iterable[str]) -> dict[str, str]:
    """One request of each scenario, checked before any load: 2xx, and VALID for a
    validation (the reference's answer too). Returns {scenario: problem} (empty: fine)."""
    problems = {}
    for name in names:
        first = (files / BY_NAME[name].file).read_text().splitlines()[0].split("\t")
        method, path, auth, body = first
        if BY_NAME[name].idempotency or "{seq}" in body:
            continue  # needs a unique key or client id: wrk's load checks its status
        status, answer = request(
            server.url + path, method, None if body == "-" else body, None if auth == "-" else auth
        )
        if not 200 <= status < 300:
            problems[name] = f"{status}: {answer}"
        elif name == "validate" and not (isinstance(answer, dict) and answer.get("valid")):
            problems[name] = f"not valid: {answer}"
    return problems


Plan = list[tuple[Server, str]]  # (server, scenario) pairs of one round, in order


def rounds(
    plan: Plan,
    files: Callable[[Server], Path],
    settings: Settings,
    label: str,
    after_round: Callable[[int], None] | None = None,
) -> list[dict[tuple[str, str], dict[str, Any]]]:
    """Warm every (server, scenario) up, then `settings.reps` rounds of the plan, the
    order reversed every other round (a slow drift of the machine then cancels out in
    the medians of per-round ratios). Returns, per round, {(server, scenario): run}.
    `after_round(n)` is called after the warm-up (0) and after each round (1, 2, …)."""
    log(f"{label}: warm-up ({settings.warmup:g}s per run)")
    for server, name in plan:
        wrk(server, files(server), BY_NAME[name], settings.warmup, settings, f"warm-{name}")
    if after_round:
        after_round(0)
    out = []
    for rep in range(settings.reps):
        this = {}
        for server, name in plan if rep % 2 == 0 else reversed(plan):
            run = measure(server, files(server), BY_NAME[name], settings, f"r{rep}-{name}")
            this[(server.name, name)] = run
            log(
                f"{label} round {rep + 1}/{settings.reps} {server.name:18s} {name:13s} "
                f"{run['rps']:8.1f} req/s  p99 {run['p99_ms']:7.1f} ms  "
                f"errors {run['error_total']}  others {run['others_cores']:.2f} cores"
            )
        out.append(this)
        if after_round:
            after_round(rep + 1)
    return out


def disturbed(runs: list[dict[tuple[str, str], dict[str, Any]]]) -> list[tuple[int, str, float]]:
    """(round, server/scenario, cores) of each run during which other processes used more
    than DISTURBED_CORES cores, rounds counted from 1."""
    return [
        (i, f"{server}/{scenario}", run["others_cores"])
        for i, r in enumerate(runs, 1)
        for (server, scenario), run in r.items()
        if run.get("others_cores", 0.0) > DISTURBED_CORES
    ]


def ratio_per_round(
    runs: list[dict[tuple[str, str], dict[str, Any]]],
    top: tuple[str, str],
    bottom: tuple[str, str],
    key: str = "rps",
) -> list[float]:
    """top / bottom in each round where both ran (for CPU per request: bottom / top)."""
    out = []
    for r in runs:
        if top in r and bottom in r:
            a, b = r[top][key], r[bottom][key]
            out.append(a / b if key == "rps" else b / a)
    return out


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over rounds of one (server, scenario)'s runs; errors summed."""
    return {
        "rps": median(r["rps"] for r in runs),
        "cpu_us": median(r["cpu_us"] for r in runs),
        "p50_ms": median(r["p50_ms"] for r in runs),
        "p99_ms": median(r["p99_ms"] for r in runs),
        "errors": sum(r["error_total"] for r in runs),
        "not_valid": sum(r.get("not_valid", 0) for r in runs),
        "requests": sum(r["requests"] for r in runs),
    }


def leak_check(
    rss: list[dict[int, float]], caches: list[dict[int, float]] | None = None
) -> dict[str, Any]:
    """RSS per worker after warm-up and after each round: growth from the end of the first
    round to the end of the last, less what the worker's bounded caches took meanwhile
    (`caches`: each worker's own figure for them, in bytes, read off /metrics at the same
    moments — the verified license-token cache and SQLite's page caches fill over several
    rounds, up to their bounds, and no further). "Flat": no worker grew more than 2 MiB
    beyond its caches."""
    if len(rss) < 3:
        return {"verdict": "not enough rounds"}
    first, last = rss[1], rss[-1]
    growth = {pid: round(last[pid] - first[pid], 1) for pid in last if pid in first}
    cached = {pid: 0.0 for pid in growth}
    if caches and len(caches) == len(rss):
        for pid in growth:
            took = caches[-1].get(pid, 0.0) - caches[1].get(pid, 0.0)
            cached[pid] = round(took / 2**20, 1)
    beyond = {pid: round(growth[pid] - cached[pid], 1) for pid in growth}
    worst = max(beyond.values(), default=0.0)
    return {
        "growth_mib_after_round_1": growth,
        "caches_mib_after_round_1": cached,
        "worst_growth_mib": max(growth.values(), default=0.0),
        "worst_mib": worst,  # beyond the caches
        "verdict": "flat" if worst <= 2.0 else "grows",
    }
