"""The report: targets (MET/MISS), the table on stdout, and bench/README.md's results."""

from __future__ import annotations

import os
import platform
import subprocess
from typing import Any

from bench.load import DISTURBED_CORES
from bench.server import BENCH

# Issue 17's targets: medians of interleaved rounds, all features on.
HEALTHZ_X_HELLO = 0.8
VALIDATE_X_MINIMAL, VALIDATE_P99_MS = 1.0, 10.0
POSTGRES_X_SQLITE = 0.8
ACTIVATE_X_MINIMAL, ACTIVATE_P99_MS = 0.3, 50.0
ORDER_X_MINIMAL = 0.1
SCALE_1M_X_10K = 0.9


def _scenario(results: dict[str, Any], backend: str, name: str) -> dict[str, Any] | None:
    return (results.get(backend) or {}).get("scenarios", {}).get(name)


def _latency_context(
    results: dict[str, Any], x: dict[str, Any], backend: str, scenario: str
) -> dict[str, Any]:
    """What a p99 target is up against in the same run: the references' own p99 at the same
    connection count, and the mean latency that the scenario's throughput alone implies
    (Little's law: connections / throughput) — every request waits for the ones queued before
    it, so no p99 can be below that mean — and the scenario's p99 in the latency rounds
    (as many connections as cores: a request's own time)."""
    refs = results.get("references", {})
    connections = results.get("settings", {}).get("connections", 16)
    latency = results.get("latency") or {}
    few = (latency.get("runs") or {}).get(f"service-{backend}/{scenario}")
    return {
        **({f"p99_ms_at_{latency['connections']}": few["p99_ms"]} if few else {}),
        "hello_p99_ms": (refs.get("hello") or {}).get("p99_ms"),
        "minimal_p99_ms": (refs.get(f"minimal_validate-{backend}") or {}).get("p99_ms"),
        "queue_mean_ms": round(connections * 1000 / x["rps"], 1) if x.get("rps") else None,
    }


def _featured_context(results: dict[str, Any], validate: dict[str, Any]) -> dict[str, Any]:
    """Beside the validate target, for information (it is judged against the minimal alone):
    the service over the featured validate (the minimal with the features written bare), and
    the featured over the minimal — how much of the gap the features cost at least."""
    featured = results.get("featured")
    if not featured:
        return {}
    refs = results.get("references", {})
    return {
        "x_featured": validate.get("x_featured"),
        "featured_x_minimal": featured["x_minimal"],
        "featured_p99_ms": (refs.get("featured_validate-sqlite") or {}).get("p99_ms"),
    }


def _featured_healthz_context(results: dict[str, Any], healthz: dict[str, Any]) -> dict[str, Any]:
    """Beside the healthz target, for information (it is judged against Flask hello alone):
    the service's healthz over the featured healthz (the liveness answer through the
    features written bare), and the featured healthz over hello — what the features cost at
    least on a trivial view."""
    featured = results.get("featured_healthz")
    if not featured:
        return {}
    refs = results.get("references", {})
    return {
        "x_featured": healthz.get("x_featured"),
        "featured_x_hello": featured["x_hello"],
        "featured_p99_ms": (refs.get("featured_healthz-sqlite") or {}).get("p99_ms"),
    }


def targets(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each target with the figures it is judged on and `met`; a target whose phase did
    not run is left out (a quick or partial run judges what it measured)."""
    out: dict[str, dict[str, Any]] = {}
    if h := _scenario(results, "sqlite", "healthz"):
        out["healthz >= 0.8 x Flask hello"] = {
            "x_hello": h["x_hello"],
            **_featured_healthz_context(results, h),
            "met": h["x_hello"] >= HEALTHZ_X_HELLO and h["errors"] == 0,
        }
    if v := _scenario(results, "sqlite", "validate"):
        bad = v["errors"] + v["not_valid"]
        out["validate SQLite >= 1.0 x minimal validate, p99 <= 10 ms"] = {
            "x_minimal": v["x_minimal"],
            "p99_ms": v["p99_ms"],
            "errors": bad,
            **_latency_context(results, v, "sqlite", "validate"),
            **_featured_context(results, v),
            "met": v["x_minimal"] >= VALIDATE_X_MINIMAL
            and v["p99_ms"] <= VALIDATE_P99_MS
            and bad == 0,
        }
    if "postgres_over_sqlite" in results:
        ratio = results["postgres_over_sqlite"]["validate"]
        v = _scenario(results, "postgres", "validate") or {}
        bad = v.get("errors", 0) + v.get("not_valid", 0)
        out["validate PostgreSQL >= 0.8 x validate SQLite"] = {
            "x_sqlite": ratio,
            "errors": bad,
            "met": ratio >= POSTGRES_X_SQLITE and bad == 0,
        }
    for backend in ("sqlite", "postgres"):
        if a := _scenario(results, backend, "activate"):
            busy = results[backend]["server_log"]["sqlite_busy"]
            out[f"activate {backend} >= 0.3 x minimal validate, p99 <= 50 ms"] = {
                "x_minimal": a["x_minimal"],
                "p99_ms": a["p99_ms"],
                "errors": a["errors"] + busy,
                **_latency_context(results, a, backend, "activate"),
                "met": a["x_minimal"] >= ACTIVATE_X_MINIMAL
                and a["p99_ms"] <= ACTIVATE_P99_MS
                and a["errors"] + busy == 0,
            }
    for backend in ("sqlite", "postgres"):
        if o := _scenario(results, backend, "order"):
            out[f"paid order {backend} >= 0.1 x minimal validate"] = {
                "x_minimal": o["x_minimal"],
                "errors": o["errors"],
                "met": o["x_minimal"] >= ORDER_X_MINIMAL and o["errors"] == 0,
            }
    for backend in ("sqlite", "postgres"):
        if "leak_check" in (results.get(backend) or {}):
            check = results[backend]["leak_check"]
            if check["verdict"] != "not enough rounds":
                out[f"worker memory flat ({backend})"] = {
                    "worst_growth_beyond_caches_mib": check["worst_mib"],
                    "worst_growth_mib": check.get("worst_growth_mib"),
                    "met": check["verdict"] == "flat",
                }
    if "scale" in results:
        sc = results["scale"]
        out["validate at 1M >= 0.9 x at 10k"] = {
            "ratio": sc["validate_1m_over_10k"],
            "cpu_ratio": sc["validate_1m_over_10k_cpu"],
            "met": sc["validate_1m_over_10k"] >= SCALE_1M_X_10K,
        }
    return out


def print_main(results: dict[str, Any]) -> None:
    s = results["settings"]
    refs = results.get("references", {})
    print(
        f"references ({s['connections']} connections, {s['reps']} rounds x {s['duration']:g}s, "
        "median req/s): " + ", ".join(f"{name} {r['rps']:.0f}" for name, r in refs.items())
    )
    for backend in ("sqlite", "postgres"):
        part = results.get(backend)
        if not part:
            continue
        print(
            f"\n{backend}: {part['seed']['licenses']:,} licenses; rate limits in "
            f"{results['server']['rate_limit_storage']}"
        )
        print(
            f"  {'scenario':13s} {'req/s':>8s} {'xhello':>7s} {'xminval':>7s} {'cpu xmin':>8s} "
            f"{'xfeat':>6s} {'p50 ms':>7s} {'p99 ms':>7s} {'errors':>6s}"
        )
        for name, x in part["scenarios"].items():
            feat = f"{x['x_featured']:6.3f}" if "x_featured" in x else f"{'-':>6s}"
            print(
                f"  {name:13s} {x['rps']:8.1f} {x['x_hello']:7.3f} {x['x_minimal']:7.3f} "
                f"{x['cpu_x_minimal']:8.3f} {feat} {x['p50_ms']:7.1f} {x['p99_ms']:7.1f} "
                f"{x['errors'] + x['not_valid']:6d}"
            )
        if backend == "sqlite" and (featured := results.get("featured_healthz")):
            print_featured_healthz(featured, refs.get("featured_healthz-sqlite") or {})
        if backend == "sqlite" and (featured := results.get("featured")):
            print_featured(featured, refs.get("featured_validate-sqlite") or {})
        print(f"  server log: {part['server_log']}")
        print(
            f"  worker RSS MiB (final): {sorted(part['rss_mib'][-1].values())}; "
            f"leak check: {part['leak_check']['verdict']} "
            f"(worst growth {part['leak_check'].get('worst_growth_mib')} MiB, "
            f"{part['leak_check'].get('worst_mib')} MiB beyond its bounded caches' own)"
        )
    if noisy := results.get("disturbed_runs"):
        print(
            f"\nmain rounds disturbed (other processes used > {DISTURBED_CORES} core during the "
            f"run; its ratios compare the machine, not the server): {len(noisy)} of "
            f"{sum(len(r) for r in results['main_rounds'])} runs: "
            + ", ".join(f"round {i} {name} {cores:.2f}" for i, name, cores in noisy)
        )
    if latency := results.get("latency"):
        print(f"\nlatency rounds ({latency['connections']} connections, median over rounds):")
        for name, x in latency["runs"].items():
            print(
                f"  {name:36s} {x['rps']:8.1f} req/s  p50 {x['p50_ms']:6.1f} ms  "
                f"p99 {x['p99_ms']:6.1f} ms  errors {x['errors'] + x['not_valid']}"
            )
    if "postgres_over_sqlite" in results:
        ratios = results["postgres_over_sqlite"]
        print("\npostgres / sqlite, per round: " + ", ".join(f"{k} {v}" for k, v in ratios.items()))


def print_featured(featured: dict[str, Any], run: dict[str, Any]) -> None:
    """The featured validate's line under the SQLite table (xfeat: service / featured)."""
    f = featured
    print(
        f"  featured validate (reference: the minimal + the features, bare) "
        f"{run.get('rps', 0):.1f} req/s, p99 {run.get('p99_ms', 0):.1f} ms: "
        f"{f['x_minimal']:.3f} x minimal (cpu {f['cpu_x_minimal']:.3f}, per round "
        f"{f['x_minimal_rounds']}); validate / featured {f['service_x_featured']:.3f} "
        f"(cpu {f['service_cpu_x_featured']:.3f})"
    )


def print_featured_healthz(featured: dict[str, Any], run: dict[str, Any]) -> None:
    """The featured healthz's line under the SQLite table (xfeat: service / featured)."""
    f = featured
    print(
        f"  featured healthz (reference: liveness + the features, bare) "
        f"{run.get('rps', 0):.1f} req/s, p99 {run.get('p99_ms', 0):.1f} ms: "
        f"{f['x_hello']:.3f} x hello (cpu {f['cpu_x_hello']:.3f}, per round "
        f"{f['x_hello_rounds']}); healthz / featured {f['service_x_featured']:.3f} "
        f"(cpu {f['service_cpu_x_featured']:.3f})"
    )


def print_table(results: dict[str, Any]) -> None:
    from bench import anatomy, prototypes, scale

    if "references" in results:
        print_main(results)
    if "contention" in results:
        prototypes.print_contention(results["contention"])
    if "prototypes" in results:
        prototypes.print_prototypes(results["prototypes"])
    if "scale" in results:
        scale.print_scale(results["scale"])
    if "anatomy" in results:
        anatomy.print_anatomy(results["anatomy"])
    print("\ntargets:")
    for name, t in results["targets"].items():
        figures = {k: v for k, v in t.items() if k != "met"}
        print(f"  {'MET ' if t['met'] else 'MISS'} {name}: {figures}")


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
