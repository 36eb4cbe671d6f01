"""Where the time of a request goes, piece by piece (issue 17 item 3).

Two profiles of the same scenarios, both split into pieces by bench/pieces.py:
- **workers**: py-spy on every worker of a running service while wrk drives one scenario;
  each piece's share of the samples times the server's CPU per request = µs per request.
- **in-process**: `python -m bench.anatomy inprocess …` calls the WSGI app directly (no
  gunicorn, no network) with prebuilt environs, under pyinstrument; each piece's share of
  the time times the CPU per request measured without the profiler = µs per request.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.load import wrk
from bench.micro import REQUESTS, call_all, environs, timed
from bench.pieces import ORDER, frame, pyspy_frames, shares
from bench.scenarios import BY_NAME, Settings
from bench.server import BIN, CACHE, Server, log, python, start_all, stop_all

SCENARIOS = ("healthz", "validate", "activate", "order")
PYSPY_RATE = 250


def anatomy_phase(settings: Settings, backends: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, backend in backends.items():
        server = Server(f"anatomy-{name}", backend.env)
        try:
            start_all([server])
            out[name] = {}
            for scenario in SCENARIOS:
                workers = profile_workers(server, backend.files, scenario, settings)
                inproc = profile_in_process(backend.env, backend.files, scenario, settings)
                out[name][scenario] = {"workers": workers, "in_process": inproc}
                log(
                    f"anatomy {name} {scenario}: workers {workers.get('cpu_us')} µs CPU/request, "
                    f"in-process {inproc.get('cpu_us')} µs"
                )
        finally:
            stop_all([server])
    return out


def profile_workers(
    server: Server, files: Path, scenario: str, settings: Settings
) -> dict[str, Any]:
    """py-spy (200 Hz) on the master and its workers while wrk drives `scenario`."""
    py_spy = BIN / "py-spy"
    if not py_spy.exists():
        return {"error": "py-spy is not installed (pip install -e '.[bench]')"}
    raw = CACHE / f"profile-{server.name}-{scenario}.txt"
    assert server.proc is not None
    wrk(server, files, BY_NAME[scenario], settings.warmup, settings, "warm")
    seconds = int(settings.anatomy_seconds)
    spy = subprocess.Popen(
        [
            *(py_spy, "record", "--pid", str(server.proc.pid), "--subprocesses"),
            *(
                "--format",
                "raw",
                "--rate",
                str(PYSPY_RATE),
                "--duration",
                str(seconds + 1),
                "-o",
                str(raw),
            ),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    time.sleep(1.0)
    # One connection: one worker busy at a time, so a sample is that worker's time (its
    # CPU, and its waits on Redis or the database), not time spent queued for a core
    # behind the other workers (which py-spy cannot tell from work).
    run = wrk(server, files, BY_NAME[scenario], seconds - 1, settings, "profile", connections=1)
    _, err = spy.communicate(timeout=120)
    if not raw.exists():
        return {"error": err.decode(errors="replace")[-2000:]}
    samples = [s for line in raw.read_text().splitlines() if (s := pyspy_frames(line))]
    # samples / rate = busy seconds; per request (py-spy ran a little longer than wrk,
    # but an idle worker is not sampled)
    busy_us = sum(n for _, n in samples) / PYSPY_RATE / max(1, run["requests"]) * 1e6
    return breakdown(shares(samples), round(busy_us, 1)) | {
        "rps": run["rps"],
        "cpu_us": run["cpu_us"],
        "mean_latency_us": run["latency_us"]["mean"],
        "errors": run["error_total"],
        "samples": sum(n for _, n in samples),
        "raw": str(raw.relative_to(CACHE.parent.parent)),
    }


def profile_in_process(
    env: dict[str, str], files: Path, scenario: str, settings: Settings, app: str = "wsgi"
) -> dict[str, Any]:
    metrics_dir = tempfile.mkdtemp(prefix="bench-metrics-")
    try:
        out = python(
            *("-m", "bench.anatomy", "inprocess", str(files), scenario, "--app", app),
            *("--requests", str(REQUESTS[scenario])),
            env={**env, "PROMETHEUS_MULTIPROC_DIR": metrics_dir},
            log="anatomy-in-process.log",
        )
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return json.loads(out.strip().splitlines()[-1])


def breakdown(share: dict[str, float], total_us: float) -> dict[str, Any]:
    """Each piece's share, and the µs per request it stands for out of `total_us`."""
    return {
        "total_us": total_us,
        "pieces": {
            k: {"pct": round(v * 100, 1), "us": round(v * total_us, 1)} for k, v in share.items()
        },
    }


# --- in-process: the WSGI app called directly (bench/micro.py) -------------------------


def in_process_main(argv: list[str] | None = None) -> None:
    import importlib

    from pyinstrument import Profiler

    parser = argparse.ArgumentParser(prog="python -m bench.anatomy inprocess")
    parser.add_argument("files", type=Path)
    parser.add_argument("scenario", choices=SCENARIOS)
    parser.add_argument("--app", default="wsgi")
    parser.add_argument("--requests", type=int, default=1500)
    args = parser.parse_args(argv)
    app = importlib.import_module(args.app).app
    n = args.requests
    batches = [environs(args.files, args.scenario, n) for _ in range(3)]
    errors = call_all(app, environs(args.files, args.scenario, min(300, n)))  # warm-up
    cpu, wall = [], []
    for i, batch in enumerate(batches):
        if i == 1:  # the middle batch under the profiler, the others timed without it
            profiler = Profiler(interval=0.0002, async_mode="disabled")
            profiler.start()
            errors += call_all(app, batch)
            session = profiler.stop()
            continue
        cpu_us, wall_us, bad = timed(app, batch)
        cpu.append(cpu_us)
        wall.append(wall_us)
        errors += bad
    samples = [
        ([frame(*ident.split("\x00")[:2]) for ident in stack], seconds)
        for stack, seconds in session.frame_records
    ]
    # pyinstrument samples wall time: the pieces are wall µs (waits on Redis or
    # PostgreSQL included), beside the CPU per request.
    result = breakdown(shares(samples), round(min(wall), 1))  # type: ignore[arg-type]
    result["wall_us"] = result["total_us"]
    result["cpu_us"] = round(min(cpu), 1)
    result["errors"] = errors
    print(json.dumps(result))


def print_anatomy(anatomy: dict[str, Any]) -> None:
    titles = {
        "workers": "workers (py-spy, 1 connection): worker time",
        "in_process": "in-process (pyinstrument): wall time",
    }
    for backend, scenarios in anatomy.items():
        for source, title in titles.items():
            names = list(scenarios)
            print(f"\nwhere the time goes, {backend}, {title} per request, µs (%)")
            print(f"  {'piece':48s}" + "".join(f"{n:>16s}" for n in names))
            for label, key in (("total", "total_us"), ("CPU (measured apart)", "cpu_us")):
                cells = "".join(f"{scenarios[n][source].get(key, 0):>13.0f}   " for n in names)
                print(f"  {label:48s}{cells}")
            for piece in ORDER:
                cells = []
                for n in names:
                    p = scenarios[n][source].get("pieces", {}).get(piece)
                    cells.append(f"{p['us']:>7.0f} ({p['pct']:4.1f}%)" if p else "-")
                if any(c != "-" for c in cells):
                    print(f"  {piece[:48]:48s}" + "".join(f"{c:>16s}" for c in cells))


if __name__ == "__main__":
    import sys

    if len(sys.argv) > 1 and sys.argv[1] == "inprocess":
        in_process_main(sys.argv[2:])
    else:
        sys.exit("usage: python -m bench.anatomy inprocess FILES SCENARIO [--app MODULE]")
