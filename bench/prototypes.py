"""The prototyped optimisations (bench/variants.py), each measured against the service as
it is in the same run; and activation and orders under contention (issue 17 items 3, 4).

- **Prototypes**: per prototype, alternating runs of the service as it is and with the
  prototype — in-process (bench/micro.py: CPU and wall time per request) and over HTTP
  (wrk rounds back to back: throughput ratio, p99) on the scenarios it touches; then every
  prototype at once (`all`) beside the reference apps, for the targets' ratios after.
- **Contention**: activate and orders at 16 and 64 connections, the service as it is (SQLite
  writers queued: kernel.db) and with every prototype; p50/p99, errors, SQLITE_BUSY.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Any

from bench.load import median, preflight, ratio_per_round, rounds, summary, wrk
from bench.micro import REQUESTS
from bench.patches import ALL
from bench.scenarios import BY_NAME, HELLO, MINIMAL_VALIDATE, Settings
from bench.server import Server, log, python, start_all, stop_all

VARIANTS_APP = "bench.variants:app"


@dataclass(frozen=True)
class Prototype:
    variant: str  # BENCH_VARIANT (bench/variants.py), or "memory-limits" (an env change)
    backend: str
    scenarios: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.variant}-{self.backend}"


# Every patch prototyped here has since been made in app/ (bench/patches.py): what is left
# is rate limits per worker in memory against Redis, and what metrics cost in all.
PROTOTYPES = (
    Prototype("memory-limits", "sqlite", ("validate", "activate"), {"REDIS_URL": ""}),
    Prototype("no-metrics", "sqlite", ("healthz", "validate")),
)
ALL_SCENARIOS = ("healthz", "validate", "activate", "order")


def variant_server(name: str, env: dict[str, str], variant: str) -> Server:
    return Server(name, {**env, "BENCH_VARIANT": variant}, app=VARIANTS_APP)


def micro(env: dict[str, str], files: Any, scenario: str, variant: str) -> dict[str, float]:
    """One in-process run (bench/micro.py) of `scenario`, with BENCH_VARIANT=variant."""
    metrics_dir = tempfile.mkdtemp(prefix="bench-metrics-")
    try:
        out = python(
            *("-m", "bench.micro", str(files), "--app", "bench.variants"),
            *("--scenarios", scenario, "--requests", str(REQUESTS.get(scenario, 1000))),
            env={**env, "BENCH_VARIANT": variant, "PROMETHEUS_MULTIPROC_DIR": metrics_dir},
            log="micro.log",
        )
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return json.loads(out.strip().splitlines()[-1])[scenario]


def compare_in_process(
    proto: Prototype, backend: Any, settings: Settings
) -> dict[str, dict[str, float]]:
    """As-is and prototype alternately, settings.micro_rounds runs each, per scenario."""
    out = {}
    variant = "" if proto.variant == "memory-limits" else proto.variant
    for scenario in proto.scenarios:
        runs: dict[str, list[dict[str, float]]] = {"as_is": [], "prototype": []}
        for rnd in range(settings.micro_rounds):
            sides = [
                ("as_is", backend.env, ""),
                ("prototype", {**backend.env, **proto.env}, variant),
            ]
            for side, env, v in sides[:: 1 - 2 * (rnd % 2)]:
                runs[side].append(micro(env, backend.files, scenario, v))
        result = {
            f"{side}_{key}": median(r[key] for r in rs)
            for side, rs in runs.items()
            for key in ("cpu_us", "wall_us")
        }
        result["errors"] = sum(r["errors"] for rs in runs.values() for r in rs)
        result["cpu_gain_pct"] = round(
            (1 - result["prototype_cpu_us"] / result["as_is_cpu_us"]) * 100, 1
        )
        result["wall_gain_pct"] = round(
            (1 - result["prototype_wall_us"] / result["as_is_wall_us"]) * 100, 1
        )
        out[scenario] = result
    return out


def prototype_phase(settings: Settings, backends: dict[str, Any]) -> dict[str, Any]:
    wanted = [
        p
        for p in PROTOTYPES
        if p.backend in backends
        and (p.variant != "memory-limits" or backends[p.backend].env.get("REDIS_URL"))
    ]
    as_is = {b: Server(f"as-is-{b}", be.env) for b, be in backends.items()}
    out: dict[str, Any] = {}
    try:
        start_all(list(as_is.values()))
        for proto in wanted:
            backend = backends[proto.backend]
            env = {**backend.env, **proto.env}
            server = (
                Server(proto.name, env)
                if proto.variant == "memory-limits"
                else variant_server(proto.name, env, proto.variant)
            )
            try:
                start_all([server])
                base = as_is[proto.backend]
                problems = preflight(server, backend.files, proto.scenarios)
                plan = [(s, n) for n in proto.scenarios for s in (base, server)]
                runs = rounds(
                    plan,
                    lambda _s, f=backend.files: f,
                    settings_for(settings, settings.prototype_rounds),
                    f"prototype {proto.name}",
                )
                http = {
                    n: {
                        "x_as_is": median(ratio_per_round(runs, (server.name, n), (base.name, n))),
                        "cpu_x_as_is": median(
                            ratio_per_round(runs, (server.name, n), (base.name, n), "cpu_us")
                        ),
                        "as_is": summary([r[(base.name, n)] for r in runs]),
                        "prototype": summary([r[(server.name, n)] for r in runs]),
                    }
                    for n in proto.scenarios
                }
                log_problems = server.log_problems()
            finally:
                stop_all([server])
            out[proto.name] = {
                "variant": proto.variant,
                "backend": proto.backend,
                "http": http,
                "in_process": compare_in_process(proto, backend, settings),
                "problems": problems,
                "server_log": log_problems,
            }
            log(f"prototype {proto.name}: {out[proto.name]['in_process']}")
    finally:
        stop_all(list(as_is.values()))
    if ALL:  # every recommended patch at once; none is left to recommend today
        out["all"] = all_at_once(settings, backends)
    return out


def settings_for(settings: Settings, reps: int) -> Settings:
    """The prototypes' rounds: shorter runs (there are many), `reps` of them."""
    from dataclasses import replace

    return replace(settings, reps=reps, duration=min(settings.duration, 2.0))


def all_at_once(settings: Settings, backends: dict[str, Any]) -> dict[str, Any]:
    """Every prototype together, beside the service as it is and the reference apps, in
    interleaved rounds: the ratios the targets are judged on, before and after."""
    first = next(iter(backends.values()))
    hello = Server(HELLO.name, first.env, app=HELLO.app)
    minimal = {
        b: Server(f"{MINIMAL_VALIDATE.name}-{b}", be.env, app=MINIMAL_VALIDATE.app)
        for b, be in backends.items()
    }
    as_is = {b: Server(f"as-is-{b}", be.env) for b, be in backends.items()}
    after = {b: variant_server(f"all-{b}", be.env, "all") for b, be in backends.items()}
    files = {hello.name: first.files}
    for b, be in backends.items():
        for s in (minimal[b], as_is[b], after[b]):
            files[s.name] = be.files
    servers = [hello, *minimal.values(), *as_is.values(), *after.values()]
    out: dict[str, Any] = {}
    try:
        start_all(servers)
        plan = [
            (hello, HELLO.scenario),
            *[(m, MINIMAL_VALIDATE.scenario) for m in minimal.values()],
        ]
        for n in ALL_SCENARIOS:
            for b in backends:
                plan += [(as_is[b], n), (after[b], n)]
        runs = rounds(
            plan,
            lambda s: files[s.name],
            settings_for(settings, settings.prototype_rounds),
            "prototypes all",
        )
        h = (hello.name, HELLO.scenario)
        for b in backends:
            m = (minimal[b].name, MINIMAL_VALIDATE.scenario)
            for side, server in (("as_is", as_is[b]), ("all", after[b])):
                out.setdefault(b, {})[side] = {
                    n: {
                        **summary([r[(server.name, n)] for r in runs]),
                        "x_hello": median(ratio_per_round(runs, (server.name, n), h)),
                        "x_minimal": median(ratio_per_round(runs, (server.name, n), m)),
                    }
                    for n in ALL_SCENARIOS
                }
        if "postgres" in backends:
            out["postgres_over_sqlite"] = {
                side: median(
                    ratio_per_round(
                        runs, (f"{side}-postgres", "validate"), (f"{side}-sqlite", "validate")
                    )
                )
                for side in ("as-is", "all")
            }
        out["server_log"] = {s.name: s.log_problems() for s in after.values()}
    finally:
        stop_all(servers)
    return out


def contention_phase(settings: Settings, backends: dict[str, Any]) -> dict[str, Any]:
    """Activate and orders at each of settings.contention_connections."""
    out: dict[str, Any] = {}
    for b, be in backends.items():
        servers = [Server(f"contention-as-is-{b}", be.env)]
        if ALL:  # beside every recommended patch at once, when one is left to recommend
            servers.append(variant_server(f"contention-all-{b}", be.env, "all"))
        try:
            start_all(servers)
            for conns in settings.contention_connections:
                for n in ("activate", "order"):
                    runs: dict[str, list[dict[str, Any]]] = {s.name: [] for s in servers}
                    for s in servers:
                        wrk(s, be.files, BY_NAME[n], settings.warmup, settings, "warm", conns)
                    for rnd in range(settings.prototype_rounds):
                        for s in servers if rnd % 2 == 0 else list(reversed(servers)):
                            runs[s.name].append(
                                wrk(
                                    s, be.files, BY_NAME[n], settings.duration, settings, "c", conns
                                )
                            )
                    for s in servers:
                        side = s.name.removeprefix("contention-").removesuffix(f"-{b}")
                        out.setdefault(b, {}).setdefault(f"{n}@{conns}", {})[side] = summary(
                            runs[s.name]
                        )
                    log(
                        f"contention {b} {n}@{conns}: "
                        + ", ".join(
                            f"{k} p99 {v['p99_ms']:.0f} ms"
                            for k, v in out[b][f"{n}@{conns}"].items()
                        )
                    )
            out[b]["server_log"] = {s.name: s.log_problems() for s in servers}
        finally:
            stop_all(servers)
    return out


def print_prototypes(p: dict[str, Any]) -> None:
    print("\nprototypes (bench/variants.py) against the service as it is, same run:")
    print(
        f"  {'prototype':30s} {'scenario':9s} {'in-process CPU µs':>19s} {'gain':>6s} "
        f"{'wall gain':>9s} {'http x as-is':>12s} {'cpu x':>6s} {'p99 ms as-is -> proto':>22s}"
    )
    for name, x in p.items():
        if name == "all":
            continue
        for n, m in x["in_process"].items():
            h = x["http"][n]
            print(
                f"  {name:30s} {n:9s} {m['as_is_cpu_us']:8.0f} -> {m['prototype_cpu_us']:7.0f} "
                f"{m['cpu_gain_pct']:5.1f}% {m['wall_gain_pct']:8.1f}% {h['x_as_is']:12.3f} "
                f"{h['cpu_x_as_is']:6.3f} {h['as_is']['p99_ms']:10.1f} -> "
                f"{h['prototype']['p99_ms']:6.1f}"
            )
    if "all" not in p:
        return
    a = p["all"]
    print("\nevery prototype at once (`all`), ratios to the references in the same rounds:")
    for b in ("sqlite", "postgres"):
        if b not in a:
            continue
        print(
            f"  {b}: {'scenario':9s} {'req/s':>15s} {'x hello':>13s} {'x minval':>13s} "
            f"{'p99 ms':>13s}"
        )
        for n in ALL_SCENARIOS:
            s0, s1 = a[b]["as_is"][n], a[b]["all"][n]
            print(
                f"  {'':{len(b) + 1}s} {n:9s} {s0['rps']:7.0f} -> {s1['rps']:5.0f} "
                f"{s0['x_hello']:5.2f} -> {s1['x_hello']:4.2f} "
                f"{s0['x_minimal']:5.2f} -> {s1['x_minimal']:4.2f} "
                f"{s0['p99_ms']:5.1f} -> {s1['p99_ms']:5.1f}"
            )
    if "postgres_over_sqlite" in a:
        v = a["postgres_over_sqlite"]
        print(f"  validate postgres / sqlite: {v['as-is']} -> {v['all']}")


def print_contention(c: dict[str, Any]) -> None:
    print("\ncontention: activate and orders (p50 / p99 ms, req/s, errors)")
    for b, cases in c.items():
        for case, sides in cases.items():
            if case == "server_log":
                continue
            cells = "; ".join(
                f"{side} {s['p50_ms']:.0f}/{s['p99_ms']:.0f} ms {s['rps']:.0f}/s e{s['errors']}"
                for side, s in sides.items()
            )
            print(f"  {b:8s} {case:12s} {cells}")
        busy = {k: v["sqlite_busy"] for k, v in cases.get("server_log", {}).items()}
        print(f"  {b:8s} SQLITE_BUSY in logs: {busy}")
