"""Time per request inside one process: the WSGI app called directly (no gunicorn, no
network) with prebuilt environs — the steady companion of the wrk figures when comparing
two versions of the code.

    python -m bench.micro FILES_DIR [--scenarios healthz,validate] [--app MODULE]
        (the server's environment; BENCH_VARIANT for bench.variants)

Replays the requests of scenario files written by bench/seed.py, with the headers nginx
adds, unique client ids and Idempotency-Keys where needed, and prints per scenario the
process CPU time and the wall time per request in µs, as JSON. CPU time, not wall time,
is what other load on the machine moves least. Standard library and werkzeug only: the
before/after comparison (`--ab REF`) runs this file in an older checkout too.
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from pathlib import Path
from typing import Any

# nginx's headers, as bench/load.lua sends them
PROXY_HEADERS = {"X-Forwarded-For": "198.51.100.7", "X-Forwarded-Proto": "http"}
# requests per in-process run: a few seconds for each scenario
REQUESTS = {"healthz": 2000, "validate": 800, "activate": 200, "order": 80}


def environs(files: Path, scenario: str, count: int, distinct: int = 0) -> list[dict[str, Any]]:
    """`count` WSGI environs cycling through a scenario's request file (its first
    `distinct` lines only, when given), with a new client id where the body says {seq}
    and, for orders, a new Idempotency-Key per request."""
    from werkzeug.test import EnvironBuilder

    text = (files / f"{scenario}.txt").read_text()
    lines = [x.split("\t") for x in text.splitlines() if x]
    lines = lines[:distinct] if distinct else lines
    run = uuid.uuid4().hex[:8]
    out = []
    for i in range(count):
        method, path, auth, body = lines[i % len(lines)]
        headers = {**PROXY_HEADERS, "X-Request-ID": f"micro-{i}"}
        if auth != "-":
            headers["Authorization"] = auth
        if scenario == "order":
            headers["Idempotency-Key"] = f"micro-{run}-{i}"
        data = None if body == "-" else body.replace("{seq}", f"micro-{run}-{i}")
        builder = EnvironBuilder(
            path=path,
            method=method,
            headers=headers,
            data=data,
            content_type="application/json" if data else None,
            environ_base={"REMOTE_ADDR": "127.0.0.1"},
        )
        out.append(builder.get_environ())
    return out


def call_all(app: Any, batch: list[dict[str, Any]]) -> int:
    """Serve each environ as gunicorn would (body iterated, closed); the non-2xx count."""
    bad = 0
    status: list[str] = []

    def start_response(s: str, _headers: Any, _exc: Any = None) -> Any:
        status.append(s)
        return lambda _data: None

    for environ in batch:
        body = app(environ, start_response)
        for _chunk in body:
            pass
        if hasattr(body, "close"):
            body.close()
        if not status[-1].startswith("2"):
            bad += 1
    return bad


def timed(app: Any, batch: list[dict[str, Any]]) -> tuple[float, float, int]:
    """(CPU µs, wall µs) per request, and the non-2xx count."""
    started, started_cpu = time.perf_counter(), time.process_time()
    bad = call_all(app, batch)
    n = len(batch)
    return (
        (time.process_time() - started_cpu) / n * 1e6,
        (time.perf_counter() - started) / n * 1e6,
        bad,
    )


def main() -> None:
    import importlib

    parser = argparse.ArgumentParser(prog="python -m bench.micro")
    parser.add_argument("files", type=Path)
    parser.add_argument("--requests", type=int, default=1500)
    parser.add_argument("--scenarios", default="healthz,validate")
    parser.add_argument("--app", default="wsgi", help="module with the WSGI `app`")
    parser.add_argument(
        "--distinct", type=int, default=0, help="cycle over only the first N requests of a file"
    )
    args = parser.parse_args()
    app = importlib.import_module(args.app).app
    out: dict[str, Any] = {}
    for name in args.scenarios.split(","):
        call_all(app, environs(args.files, name, min(300, args.requests), args.distinct))
        batch = environs(args.files, name, args.requests, args.distinct)
        cpu, wall, bad = timed(app, batch)
        out[name] = {"cpu_us": round(cpu, 1), "wall_us": round(wall, 1), "errors": bad}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
