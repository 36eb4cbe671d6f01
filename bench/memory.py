"""Worker memory over a long run (issue 17, "worker memory flat over the run"): what grows,
and whether it stops.

    python -m bench.memory server [--minutes 12] [--interval 30] [--scenarios ...]
        [--run-seconds 15] [--probe no-token-cache]
    python -m bench.memory inprocess [--requests 50000] [--every 5000] [--scenario validate]

`server`: the service on SQLite (a copy of the seeded template, as the main phase runs it)
driven by wrk through the scenarios in turn for `--minutes`, every worker's RSS (anonymous
and file-backed apart: SQLite's -shm is a shared file mapping) sampled every `--interval`
seconds (`--interval 0`: after each round of every scenario, as the main phase does), with
`--probe` the service with a cache off (bench/memory_probe.py) under the same load beside
it. `inprocess`: the WSGI app called directly in one process (as bench/micro.py), with,
every `--every` requests, the RSS, what SQLite's allocator holds (`sqlite3_memory_used`,
its page caches mostly), what Python's allocations hold (tracemalloc) and the fill of the
bounded caches; then the tracemalloc difference between the first checkpoint after the
caches filled and the last one, by line. Both print JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import re
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.scenarios import BY_NAME, Settings

SERVER_SCENARIOS = ("validate", "activate", "order", "healthz")


def status_kib(pid: int | str, *fields: str) -> dict[str, int]:
    text = Path(f"/proc/{pid}/status").read_text()
    out = {}
    for name in fields:
        found = re.search(rf"{name}:\s+(\d+)", text)
        out[name] = int(found.group(1)) if found else 0
    return out


def sqlite_memory_used() -> int:
    """Bytes SQLite's allocator holds now, in this process (page caches, statements, …)."""
    lib = ctypes.CDLL("libsqlite3.so.0")
    lib.sqlite3_memory_used.restype = ctypes.c_int64
    return lib.sqlite3_memory_used()


def run_server(args: argparse.Namespace) -> dict[str, Any]:
    from bench.load import wrk
    from bench.phases import prepare
    from bench.server import Server, log, start_all, stop_all

    settings = Settings(postgres=False)
    out: dict[str, Any] = {"samples": []}
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp, contextlib.ExitStack() as st:
        backend = prepare(settings, Path(tmp), st)["sqlite"]
        db = Path(backend.env["DATABASE_URL"].removeprefix("sqlite:///"))
        servers = {"service": Server("memory-service", backend.env)}
        for probe in filter(None, args.probe.split(",")):
            env = {**backend.env, "MEMORY_PROBE": probe}
            servers[probe] = Server(f"memory-{probe}", env, app="bench.memory_probe:app")
        start_all(list(servers.values()))
        st.callback(stop_all, list(servers.values()))
        started = time.monotonic()

        def sample(label: str) -> None:
            minute = round((time.monotonic() - started) / 60, 2)
            files = {
                s: round(Path(f"{db}{s}").stat().st_size / 2**20, 2)
                for s in ("", "-wal", "-shm")
                if Path(f"{db}{s}").exists()
            }
            point: dict[str, Any] = {"minute": minute, "after": label, **files}
            for name, server in servers.items():
                workers = {}
                for pid in server.workers():
                    with contextlib.suppress(OSError):
                        kib = status_kib(pid, "VmRSS", "RssAnon", "RssFile", "RssShmem")
                        workers[pid] = {k: round(v / 1024, 2) for k, v in kib.items()}
                point[name] = workers
                rss = " ".join(f"{w['VmRSS']:.1f}/{w['RssAnon']:.1f}" for w in workers.values())
                log(f"{minute:6.2f} min {label:9s} {name:15s} RSS/anon MiB: {rss}")
            out["samples"].append(point)

        sample("start")
        names = args.scenarios.split(",")
        last, cycle = time.monotonic(), 0
        while time.monotonic() - started < args.minutes * 60:
            cycle += 1
            for name in names if cycle % 2 else reversed(names):
                for server in servers.values():
                    wrk(server, backend.files, BY_NAME[name], args.run_seconds, settings, name)
                if args.interval and time.monotonic() - last >= args.interval:
                    sample(name)
                    last = time.monotonic()
            if not args.interval:
                sample(f"round {cycle}")
        sample("end")
        out["requests_files"] = str(backend.files)
    return out


def cache_fill(app: Any) -> dict[str, Any]:
    """How full the bounded caches are: the verified-token LRU, SQLAlchemy's compiled
    statements (per engine), the rate limiter's dictionaries."""
    from app.auth.licensing.signing import KeySet

    fill: dict[str, Any] = {}
    for obj in gc.get_objects():
        if isinstance(obj, KeySet):
            fill["verified_tokens"] = len(obj._verified)
    database = app.extensions["db"]
    engines = {
        **database.engines(),
        **{f"autocommit-{i}": e for i, e in enumerate(database.autocommit_engines.values())},
    }
    for name, engine in engines.items():
        cache = engine._compiled_cache  # an LRUCache, bounded (500 by default)
        fill[f"compiled[{name}]"] = len(cache) if cache is not None else 0
    return fill


def run_inprocess(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    """Seed a copy of the SQLite template, then measure in a child process with the
    service's environment on it."""
    import sys

    from bench.phases import prepare
    from bench.server import python

    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp, contextlib.ExitStack() as st:
        backend = prepare(Settings(postgres=False), Path(tmp), st)["sqlite"]
        rest = argv[argv.index("inprocess") + 1 :]
        child = python("-m", "bench.memory", "child", str(backend.files), *rest, env=backend.env)
        sys.stderr.write(child)
        return json.loads(child[child.index("\n{\n") + 1 :])


def _reusable(environ: dict[str, Any]) -> dict[str, Any]:
    """An environ with its body read out, to be served again and again by `_fresh` copies
    (a served environ holds the request object, the limiter's hits, …: not the app's)."""
    return {**environ, "wsgi.input": environ["wsgi.input"].read()}


def _fresh(environ: dict[str, Any]) -> dict[str, Any]:
    import io

    return {**environ, "wsgi.input": io.BytesIO(environ["wsgi.input"])}


def run_child(args: argparse.Namespace) -> dict[str, Any]:
    import importlib
    import tracemalloc

    from bench.micro import call_all, environs

    app = importlib.import_module(args.app).app
    files = Path(args.files)
    if args.frames:
        tracemalloc.start(args.frames)
    checkpoints: list[dict[str, Any]] = []
    snapshots: dict[int, Any] = {}
    done = 0
    # request environs built once and reused (their memory is not the app's), cycling over
    # every line of the scenario's file; --fresh: new ones per batch (new client ids)
    lines = len((files / BY_NAME[args.scenario].file).read_text().splitlines())
    pool = [_reusable(e) for e in environs(files, args.scenario, max(lines, args.every))]
    batch = [_fresh(e) for e in pool[: args.every]]
    cpu0 = time.process_time()
    while done < args.requests:
        bad = call_all(app, batch)
        done += len(batch)
        gc.collect()
        traced, _peak = tracemalloc.get_traced_memory()
        point = {
            "requests": done,
            "rss_mib": round(status_kib("self", "VmRSS")["VmRSS"] / 1024, 2),
            "anon_mib": round(status_kib("self", "RssAnon")["RssAnon"] / 1024, 2),
            "sqlite_mib": round(sqlite_memory_used() / 2**20, 3),
            "traced_mib": round(traced / 2**20, 3),
            "errors": bad,
            **cache_fill(app),
        }
        checkpoints.append(point)
        print(json.dumps(point), flush=True)
        if args.frames:
            snapshots[done] = tracemalloc.take_snapshot()
        if args.fresh:
            batch = environs(files, args.scenario, args.every)
        else:
            start = done % len(pool)
            batch = [_fresh(e) for e in (pool + pool)[start : start + args.every]]
    cpu = (time.process_time() - cpu0) / done * 1e6
    out = {
        "scenario": args.scenario,
        "cpu_us_per_request": round(cpu, 1),
        "checkpoints": checkpoints,
    }
    if not args.frames:
        return out
    first = min(n for n in snapshots if n >= args.diff_from)
    filters = [tracemalloc.Filter(False, tracemalloc.__file__)]
    diff = (
        snapshots[done]
        .filter_traces(filters)
        .compare_to(snapshots[first].filter_traces(filters), "lineno")
    )
    return {
        **out,
        f"growth_{first}_to_{done}": [
            {"where": str(d.traceback), "kib": round(d.size_diff / 1024, 1), "count": d.count_diff}
            for d in diff[: args.top]
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.memory")
    sub = parser.add_subparsers(dest="mode", required=True)
    server = sub.add_parser("server")
    server.add_argument("--minutes", type=float, default=12)
    server.add_argument("--interval", type=float, default=30)
    server.add_argument("--run-seconds", type=float, default=15)
    server.add_argument("--scenarios", default=",".join(SERVER_SCENARIOS))
    server.add_argument("--probe", default="", help="bench/memory_probe.py servers beside it")
    sub.add_parser("inprocess", add_help=False)  # the child's options, for the child
    inproc = sub.add_parser("child", help="run with the server's environment")
    inproc.add_argument("files", help="request files (bench/seed.py requests)")
    inproc.add_argument("--app", default="wsgi")
    inproc.add_argument("--scenario", default="validate")
    inproc.add_argument("--requests", type=int, default=50_000)
    inproc.add_argument("--every", type=int, default=5_000)
    inproc.add_argument("--diff-from", type=int, default=10_000)
    inproc.add_argument("--frames", type=int, default=1, help="0: no tracemalloc")
    inproc.add_argument("--top", type=int, default=15)
    inproc.add_argument("--fresh", action="store_true", help="new environs (client ids) per batch")
    import sys

    args, _ = parser.parse_known_args()
    if args.mode == "inprocess":
        result = run_inprocess(args, sys.argv)
    else:
        args = parser.parse_args()
        result = run_server(args) if args.mode == "server" else run_child(args)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
