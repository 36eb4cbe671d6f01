"""The databases the benchmark runs on, and its main phase: every scenario on SQLite and
PostgreSQL beside the reference apps, in interleaved rounds."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bench.load import (
    Plan,
    disturbed,
    leak_check,
    median,
    preflight,
    ratio_per_round,
    rounds,
    summary,
)
from bench.scenarios import (
    FEATURED_HEALTHZ,
    FEATURED_VALIDATE,
    HELLO,
    MINIMAL_VALIDATE,
    Settings,
)
from bench.server import (
    BENCH,
    CACHE,
    PG_ADMIN_URL,
    REDIS_URL,
    ROOT,
    Server,
    answers,
    log,
    migrate,
    python,
    service_env,
    start_all,
    stop_all,
)

# As in the tests (CI): a service that does not answer fails the run instead of being skipped.
REQUIRED = os.environ.get("REQUIRE_SERVICES") == "1"
# the latency rounds: as many requests at once as there are cores (no queue of requests)
LATENCY_CONNECTIONS = os.cpu_count() or 2
# Per-worker gauges of the service's bounded caches, in bytes: the leak check subtracts
# what they took from each worker's growth (the verified-token cache and SQLite's page
# caches fill over several rounds, up to their bounds).
BOUNDED_CACHES = ("license_token_cache_bytes", "sqlite_memory_bytes")


@dataclass
class Backend:
    """One database the service runs on in this benchmark, seeded, with its request files."""

    name: str  # sqlite | postgres
    env: dict[str, str]  # the service's environment on it
    files: Path  # request files (bench/seed.py requests)
    seed: dict[str, Any]


def seed_version() -> str:
    """Templates are rebuilt when the seeding code or the schema changes."""
    digest = hashlib.sha256()
    for path in (BENCH / "seed.py", BENCH / "bulk.py"):
        digest.update(path.read_bytes())
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


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A throwaway PostgreSQL database for the run, dropped afterwards."""
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


def limits_storage(settings: Settings) -> dict[str, str]:
    """Rate limits in Redis when it answers (production's storage: shared by every worker),
    else the service's default (in memory, per worker)."""
    if settings.redis_limits and answers(6379):
        return {"REDIS_URL": REDIS_URL}
    if settings.redis_limits and REQUIRED:
        raise SystemExit("REQUIRE_SERVICES=1: Redis does not answer on 127.0.0.1:6379")
    return {}


def prepare(settings: Settings, workdir: Path, stack: contextlib.ExitStack) -> dict[str, Backend]:
    """Seed SQLite (a copy of the cached template) and, when it answers, PostgreSQL."""
    storage = limits_storage(settings)
    db = workdir / "main.db"
    shutil.copyfile(template(settings.small_users, settings.small_audit), db)
    env = service_env(f"sqlite:///{db}", workdir, **storage)
    python("-m", "bench.seed", "accounts", env=env)
    backends = {"sqlite": Backend("sqlite", env, workdir / "sqlite", {})}
    backends["sqlite"].seed = request_files(env, backends["sqlite"].files)
    if not settings.postgres:
        return backends
    if not answers(5432):
        if REQUIRED:
            raise SystemExit("REQUIRE_SERVICES=1: PostgreSQL does not answer on 127.0.0.1:5432")
        log("PostgreSQL does not answer on 127.0.0.1:5432: skipped")
        return backends
    url = stack.enter_context(postgres_database())
    env = service_env(url, workdir, **storage)
    migrate(env)
    log(f"seeding PostgreSQL: {settings.small_users:,} users/licenses")
    users, audit = str(settings.small_users), str(settings.small_audit // 5)
    python("-m", "bench.seed", "bulk", "--users", users, "--audit", audit, env=env)
    python("-m", "bench.seed", "accounts", env=env)
    backends["postgres"] = Backend("postgres", env, workdir / "postgres", {})
    backends["postgres"].seed = request_files(env, backends["postgres"].files)
    return backends


def main_phase(
    settings: Settings, backends: dict[str, Backend], results: dict[str, Any]
) -> list[str]:
    """Every scenario on every backend, beside Flask hello and the minimal validate (on
    each backend) and the featured reference (on SQLite: its validate and its healthz, each
    when the service's runs), in interleaved rounds. Returns the problems a smoke test fails
    on."""
    first = next(iter(backends.values()))
    hello = Server(HELLO.name, first.env, app=HELLO.app)
    services = {b: Server(f"service-{b}", be.env) for b, be in backends.items()}
    minimal = {
        b: Server(f"{MINIMAL_VALIDATE.name}-{b}", be.env, app=MINIMAL_VALIDATE.app)
        for b, be in backends.items()
    }
    featured = None
    featured_names = featured_scenarios(settings) if "sqlite" in backends else []
    if featured_names:
        sqlite = backends["sqlite"]
        featured = Server(f"{FEATURED_VALIDATE.name}-sqlite", sqlite.env, app=FEATURED_VALIDATE.app)
    files = {hello.name: first.files}
    for b, be in backends.items():
        files[services[b].name] = files[minimal[b].name] = be.files
    references = [hello, *minimal.values()]
    if featured is not None:
        files[featured.name] = backends["sqlite"].files
        references.append(featured)
    servers = [*references, *services.values()]
    problems: list[str] = []
    try:
        start_all(servers)
        for s in servers:
            names = [HELLO.scenario] if s is hello else None
            if s in minimal.values():
                names = [MINIMAL_VALIDATE.scenario]
            if s is featured:
                names = featured_names
            for name, problem in preflight(s, files[s.name], names or settings.scenarios).items():
                problems.append(f"{s.name} {name}: {problem}")
        plan: Plan = [(hello, HELLO.scenario)]
        plan += [(m, MINIMAL_VALIDATE.scenario) for m in minimal.values()]
        if featured is not None:
            plan += [(featured, name) for name in featured_names]
        plan += [(services[b], name) for name in settings.scenarios for b in backends]
        rss: dict[str, list[dict[int, float]]] = {b: [] for b in backends}
        caches: dict[str, list[dict[int, float]]] = {b: [] for b in backends}

        def sample_rss(_round: int) -> None:
            for b, s in services.items():
                rss[b].append(s.rss_mib())
                caches[b].append(s.per_worker(*BOUNDED_CACHES))

        runs = rounds(plan, lambda s: files[s.name], settings, "main", after_round=sample_rss)
        results["references"] = {
            reference_key(s, n, featured): summary([r[(s.name, n)] for r in runs])
            for s, n in plan
            if s in references
        }
        for b, be in backends.items():
            results[b] = backend_summary(
                be, services[b].name, minimal[b].name, hello.name, runs, settings
            )
            results[b]["rss_mib"] = rss[b]
            results[b]["bounded_caches_bytes"] = caches[b]
            results[b]["leak_check"] = leak_check(rss[b], caches[b])
            results[b]["server_log"] = services[b].log_problems()
        if FEATURED_VALIDATE.scenario in featured_names:
            results["featured"] = featured_summary(
                results["sqlite"], services["sqlite"].name, featured, minimal["sqlite"].name, runs
            )
        if FEATURED_HEALTHZ.scenario in featured_names:
            results["featured_healthz"] = featured_healthz_summary(
                results["sqlite"], services["sqlite"].name, featured, hello.name, runs
            )
        if "postgres" in backends:
            results["postgres_over_sqlite"] = {
                name: median(
                    ratio_per_round(runs, ("service-postgres", name), ("service-sqlite", name))
                )
                for name in settings.scenarios
            }
        results["main_rounds"] = [{f"{k[0]}/{k[1]}": v for k, v in r.items()} for r in runs]
        results["disturbed_runs"] = disturbed(runs)
        results["latency"] = latency_rounds(settings, hello, minimal, services, files)
    finally:
        stop_all(servers)
    for b in backends:
        part = results.get(b, {})
        for name, s in part.get("scenarios", {}).items():
            if s["errors"] or s["not_valid"]:
                problems.append(f"{b} {name}: {s['errors']} errors, {s['not_valid']} not VALID")
        if any(part.get("server_log", {}).values()):
            problems.append(f"{b} server log: {part['server_log']}")
    for name, s in results.get("references", {}).items():
        if s["errors"]:
            problems.append(f"{name}: {s['errors']} errors")
    for part in ("featured", "featured_healthz"):
        if any((results.get(part) or {}).get("server_log", {}).values()):
            problems.append(f"featured reference server log: {results[part]['server_log']}")
            break  # one server: its log once
    return problems


def featured_scenarios(settings: Settings) -> list[str]:
    """What the featured reference serves in the main rounds: its validate and its healthz,
    each when the service's scenario runs."""
    names = (FEATURED_VALIDATE.scenario, FEATURED_HEALTHZ.scenario)
    return [name for name in names if name in settings.scenarios]


def reference_key(server: Server, scenario: str, featured: Server | None) -> str:
    """A reference run's name in the results: its server's, except the featured server's
    healthz (one server, two references)."""
    if server is featured and scenario == FEATURED_HEALTHZ.scenario:
        return f"{FEATURED_HEALTHZ.name}-sqlite"
    return server.name


def featured_summary(
    sqlite: dict[str, Any],
    service: str,
    featured: Server,
    minimal: str,
    runs: list[dict[tuple[str, str], dict[str, Any]]],
) -> dict[str, Any]:
    """The featured validate's ratios, per round: the service's SQLite validate over it
    (`x_featured`, also kept with the service's validate) — how much of the gap to the
    minimal is the service's own — and it over the minimal validate: what the features
    cost at least."""
    name = FEATURED_VALIDATE.scenario
    return _featured_ratios(sqlite, service, featured, name, (minimal, name), "minimal", runs)


def featured_healthz_summary(
    sqlite: dict[str, Any],
    service: str,
    featured: Server,
    hello: str,
    runs: list[dict[tuple[str, str], dict[str, Any]]],
) -> dict[str, Any]:
    """The featured healthz's ratios, per round: the service's healthz over it (`x_featured`,
    also kept with the service's healthz) — how much of the gap to Flask hello is the
    service's own — and it over Flask hello: what the features cost at least on a trivial
    view."""
    name, base = FEATURED_HEALTHZ.scenario, (hello, HELLO.scenario)
    return _featured_ratios(sqlite, service, featured, name, base, "hello", runs)


def _featured_ratios(
    sqlite: dict[str, Any],
    service: str,
    featured: Server,
    name: str,
    base: tuple[str, str],
    label: str,
    runs: list[dict[tuple[str, str], dict[str, Any]]],
) -> dict[str, Any]:
    """The service's scenario `name` over the featured reference's (kept with the
    service's scenario too), and the featured's over `base` (`x_<label>`), per round."""
    top, f = (service, name), (featured.name, name)
    row = sqlite["scenarios"][name]
    row["x_featured"] = median(ratio_per_round(runs, top, f))
    row["cpu_x_featured"] = median(ratio_per_round(runs, top, f, "cpu_us"))
    row["x_featured_rounds"] = [round(x, 3) for x in ratio_per_round(runs, top, f)]
    return {
        f"x_{label}": median(ratio_per_round(runs, f, base)),
        f"cpu_x_{label}": median(ratio_per_round(runs, f, base, "cpu_us")),
        f"x_{label}_rounds": [round(x, 3) for x in ratio_per_round(runs, f, base)],
        "service_x_featured": row["x_featured"],
        "service_cpu_x_featured": row["cpu_x_featured"],
        "server_log": featured.log_problems(),
    }


def latency_rounds(
    settings: Settings,
    hello: Server,
    minimal: dict[str, Server],
    services: dict[str, Server],
    files: dict[str, Path],
) -> dict[str, Any]:
    """The latency targets' scenarios again with LATENCY_CONNECTIONS connections — as many
    requests at once as the machine has cores, so that p50/p99 are a request's own time
    rather than its wait behind the 15 others of the main rounds (whose mean wait alone is
    connections / throughput). The references beside them, in the same interleaved rounds."""
    plan: Plan = [(hello, HELLO.scenario)]
    for b, service in services.items():
        plan.append((minimal[b], MINIMAL_VALIDATE.scenario))
        plan += [(service, n) for n in ("validate", "activate") if n in settings.scenarios]
    few = replace(settings, connections=LATENCY_CONNECTIONS)
    label = f"latency ({LATENCY_CONNECTIONS} connections)"
    runs = rounds(plan, lambda s: files[s.name], few, label)
    return {
        "connections": LATENCY_CONNECTIONS,
        "runs": {f"{s.name}/{n}": summary([r[(s.name, n)] for r in runs]) for s, n in plan},
    }


def backend_summary(
    backend: Backend,
    service: str,
    minimal: str,
    hello: str,
    runs: list[dict[tuple[str, str], dict[str, Any]]],
    settings: Settings,
) -> dict[str, Any]:
    """Per scenario: medians over rounds, and the medians of the per-round ratios to Flask
    hello and to the minimal validate on the same backend (throughput, and CPU per request:
    what the ratio would be on an idle machine)."""
    out: dict[str, Any] = {"seed": backend.seed, "scenarios": {}}
    h, m = (hello, HELLO.scenario), (minimal, MINIMAL_VALIDATE.scenario)
    for name in settings.scenarios:
        key = (service, name)
        out["scenarios"][name] = {
            **summary([r[key] for r in runs]),
            "x_hello": median(ratio_per_round(runs, key, h)),
            "x_minimal": median(ratio_per_round(runs, key, m)),
            "cpu_x_hello": median(ratio_per_round(runs, key, h, "cpu_us")),
            "cpu_x_minimal": median(ratio_per_round(runs, key, m, "cpu_us")),
            "x_minimal_rounds": [round(x, 3) for x in ratio_per_round(runs, key, m)],
        }
    return out
