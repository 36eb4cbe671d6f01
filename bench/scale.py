"""Scale: validate on 10,000 vs 1,000,000 licenses; admin statistics on 1,000,000 users and
audit search on 10,000,000 entries (latency, and the query plans behind them)."""

from __future__ import annotations

import json
import statistics
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.load import median, wrk
from bench.phases import limits_storage, request_files, template
from bench.scenarios import BY_NAME, Settings
from bench.server import Server, log, python, service_env, start_all, stop_all


def timed_get(url: str, token: str, count: int) -> dict[str, Any]:
    """Sequential requests (one warm-up first): latency in ms, and the last body."""
    times = []
    body: Any = None
    status = 0
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
    servers: dict[str, Server] = {}
    files = {}
    storage = limits_storage(settings)
    try:
        for label, path in (("10k", small), ("1m", big)):
            env = service_env(f"sqlite:///{path}", workdir, **storage)
            files[label] = workdir / f"scale-{label}"
            request_files(env, files[label])
            servers[label] = Server(f"scale-{label}", env)
        start_all(list(servers.values()))
        validate = BY_NAME["validate"]
        for label, s in servers.items():
            wrk(s, files[label], validate, settings.warmup * 2, settings, "warm")
        runs: dict[str, list[dict[str, Any]]] = {k: [] for k in servers}
        for rnd in range(settings.scale_rounds):
            order = list(servers) if rnd % 2 == 0 else list(reversed(servers))
            for label in order:
                runs[label].append(
                    wrk(servers[label], files[label], validate, settings.duration, settings, "s")
                )
            log(
                f"scale round {rnd + 1}: 10k {runs['10k'][-1]['rps']:.0f}  "
                f"1m {runs['1m'][-1]['rps']:.0f} req/s"
            )
        pairs = list(zip(runs["10k"], runs["1m"], strict=True))
        out: dict[str, Any] = {
            "validate": {
                label: {
                    "rps": median(r["rps"] for r in v),
                    "p99_ms": median(r["p99_ms"] for r in v),
                    "errors": sum(r["error_total"] for r in v),
                }
                for label, v in runs.items()
            },
            "validate_1m_over_10k": median(b["rps"] / a["rps"] for a, b in pairs),
            # CPU per validation, 10k / 1M: the same question, steadier on a busy machine
            "validate_1m_over_10k_cpu": median(a["cpu_us"] / b["cpu_us"] for a, b in pairs),
        }
        out["admin"] = admin_latencies(servers["1m"], files["1m"])
        out["plans"] = json.loads(
            python("-m", "bench.explain", env=service_env(f"sqlite:///{big}", workdir))
        )
        out["server_log"] = {k: s.log_problems() for k, s in servers.items()}
        out["rss_final_mib"] = {k: s.rss_mib() for k, s in servers.items()}
        results["scale"] = out
    finally:
        stop_all(list(servers.values()))


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


def print_scale(sc: dict[str, Any]) -> None:
    big, small = sc["validate"]["1m"], sc["validate"]["10k"]
    print(
        f"\nscale: validate 1M/10k = {sc['validate_1m_over_10k']} "
        f"(CPU per request: {sc['validate_1m_over_10k_cpu']}; "
        f"{big['rps']} vs {small['rps']} req/s; "
        f"p99 {big['p99_ms']} vs {small['p99_ms']} ms)"
    )
    for name, a in sc["admin"].items():
        print(f"  {name:22s} p50 {a['p50_ms']:8.1f} ms  max {a['max_ms']:8.1f} ms")
