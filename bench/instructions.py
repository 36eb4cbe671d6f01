"""Instructions per request, counted by valgrind's callgrind: the steady measure of a
small change in-process.

    python -m bench.instructions FILES_DIR --scenario validate [--requests 300]
        [--app wsgi] [--tree DIR]   (the server's environment, as for bench/micro.py)

bench/micro.py (the WSGI app called directly) runs twice under callgrind: its warm-up and
N requests, then the same warm-up and 2N; the difference of the two counts, divided by N,
is what one request costs — requests the process has not seen before (for validate: tokens
not yet in the verified-token cache, as wrk's rounds mostly send them). Timed in-process,
the same tree moves by ±20 % from run to run on these shared cores; the count does not,
whatever else the machine is doing, so a gain of a few percent shows. It leaves out the
kernel's time (system calls, fsync, waiting on Redis or the database): the wrk rounds
(`--ab`) measure those. Slow: about 50 times the requests' own time. `--tree` runs another
checkout's app (a `git worktree` of the commit before, say) for a before/after.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_COLLECTED = re.compile(r"Collected : (\d+)")


def collected(stderr: str) -> int:
    """The instructions callgrind counted, from what it wrote to stderr."""
    found = _COLLECTED.findall(stderr)
    if not found:
        raise RuntimeError(f"callgrind counted nothing:\n{stderr[-2000:]}")
    return int(found[-1])


def callgrind(
    files: Path, scenario: str, requests: int, app: str = "wsgi", tree: Path = ROOT
) -> int:
    """Instructions of one bench/micro.py process serving `requests` (after its warm-up)."""
    command = [
        *("valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"),
        *(sys.executable, "-m", "bench.micro", str(files)),
        *("--scenarios", scenario, "--requests", str(requests), "--app", app),
    ]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"callgrind failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return collected(done.stderr)


def per_request(count: Callable[[int], int], requests: int) -> dict[str, int | float]:
    """Instructions per request from a run of `requests` and one of twice as many (the
    warm-up, imports and start-up the same in both: bench/micro.py warms up on
    min(300, requests), so `requests` should be 300 or more)."""
    if requests < 300:
        raise ValueError("--requests must be 300 or more (bench/micro.py's warm-up)")
    once, twice = count(requests), count(2 * requests)
    return {
        "instructions_per_request": round((twice - once) / requests),
        "requests": requests,
        "collected": [once, twice],
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions")
    parser.add_argument("files", type=Path)
    parser.add_argument("--scenario", default="validate")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--app", default="wsgi", help="module with the WSGI `app`")
    parser.add_argument("--tree", type=Path, default=ROOT, help="the checkout to run")
    args = parser.parse_args()
    tree = args.tree.resolve()
    result = per_request(
        lambda n: callgrind(args.files.resolve(), args.scenario, n, args.app, tree),
        args.requests,
    )
    print(json.dumps({"tree": str(tree), "scenario": args.scenario, **result}))


if __name__ == "__main__":
    main()
