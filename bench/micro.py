"""CPU per request inside one process (Flask's test client, no network): the precise
companion of the wrk figures when comparing two versions of the code.

    python -m bench.micro FILES_DIR [--requests N]     (the server's environment)

Replays the requests of a scenario file written by bench/seed.py (validate, baseline)
and prints the process CPU time per request in µs as JSON. CPU time, not wall time, so
other load on the machine moves it little. `bench/run.py --ab REF` runs it in both trees.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def replay(client, lines: list[list[str]], count: int) -> float:
    started = time.process_time()
    for i in range(count):
        method, path, auth, body = lines[i % len(lines)]
        headers = {} if auth == "-" else {"Authorization": auth}
        data = None if body == "-" else body
        response = client.open(
            path, method=method, headers=headers, data=data, content_type="application/json"
        )
        if response.status_code >= 400:
            raise SystemExit(f"{path}: {response.status_code} {response.get_data(as_text=True)}")
    return (time.process_time() - started) / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.micro")
    parser.add_argument("files")
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--scenarios", default="baseline,validate")
    parser.add_argument("--app", default="wsgi", help="module with the WSGI `app`")
    parser.add_argument(
        "--distinct", type=int, default=0, help="cycle over only the first N requests of a file"
    )
    args = parser.parse_args()
    import importlib

    client = importlib.import_module(args.app).app.test_client()
    out = {}
    for name in args.scenarios.split(","):
        text = (Path(args.files) / f"{name}.txt").read_text()
        lines = [line.split("\t") for line in text.splitlines() if line]
        lines = lines[: args.distinct] if args.distinct else lines
        replay(client, lines, min(500, args.requests))  # warm-up
        out[name] = round(replay(client, lines, args.requests), 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
