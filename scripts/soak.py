"""`make soak`: the reliability suite at full length, with a summary per category.

Runs the fuzzing, race, crash, outage, authorization, hostile-input and secrets tests with
their long settings (more fuzz examples on both backends, more users under the kills), then
prints, per category, what was tried and what held — from the lines the tests append to
SOAK_REPORT, and from pytest's own results for the categories that are plain test files.
Exits non-zero when anything failed. `make test` runs the same tests with short settings.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# category -> test files (those that do not exist yet are left out, and said so)
CATEGORIES = {
    "fuzz": ["tests/test_fuzz.py"],
    "races": [
        "tests/test_auth_processes.py",
        "tests/test_license_processes.py",
        "tests/test_order_processes.py",
        "tests/test_admin_processes.py",
        "tests/test_db.py",
    ],
    "crash": ["tests/test_crash.py"],
    "outages": ["tests/test_outages.py", "tests/test_ops.py", "tests/test_admin_own_database.py"],
    "authz": ["tests/test_authz_matrix.py", "tests/test_admin.py"],
    "hostile": ["tests/test_hostile_input.py", "tests/test_errors.py"],
    "secrets": ["tests/test_secrets.py", "tests/test_observability.py"],
    "money": ["tests/test_order_semantics.py", "tests/test_orders.py"],
    "operations": ["tests/test_restore.py", "tests/test_startup.py", "tests/test_cli_errors.py"],
}

LONG_SETTINGS = {
    "FUZZ_EXAMPLES": os.environ.get("FUZZ_EXAMPLES", "100"),
    "FUZZ_BACKENDS": os.environ.get("FUZZ_BACKENDS", "sqlite,postgresql"),
    "CRASH_USERS": os.environ.get("CRASH_USERS", "120"),
    # Generated order sequences (ADR 0006): 8 x 10 steps in `make test`.
    "ORDER_STATE_EXAMPLES": os.environ.get("ORDER_STATE_EXAMPLES", "200"),
    "ORDER_STATE_STEPS": os.environ.get("ORDER_STATE_STEPS", "25"),
}


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        report = Path(tmp) / "report.jsonl"
        fuzz = Path(tmp) / "fuzz.jsonl"
        junit = Path(tmp) / "junit.xml"
        files = sorted({f for fs in CATEGORIES.values() for f in fs if (ROOT / f).exists()})
        env = {
            **os.environ,
            **LONG_SETTINGS,
            "SOAK_REPORT": str(report),
            "FUZZ_REPORT": str(fuzz),
            "REQUIRE_SERVICES": os.environ.get("REQUIRE_SERVICES", "1"),
        }
        started = time.monotonic()
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                f"--junitxml={junit}",
                *files,
            ],
            cwd=ROOT,
            env=env,
        )
        elapsed = time.monotonic() - started
        outcome = _outcomes(junit)
        lines = (
            [json.loads(line) for line in report.read_text().splitlines()]
            if report.exists()
            else []
        )
        fuzzed = (
            [json.loads(line) for line in fuzz.read_text().splitlines()] if fuzz.exists() else []
        )

    print(f"\nsoak: {elapsed / 60:.1f} min, settings {LONG_SETTINGS}\n")
    for category, category_files in CATEGORIES.items():
        passed = sum(outcome[f][0] for f in category_files)
        failed = sum(outcome[f][1] for f in category_files)
        missing = [f for f in category_files if not (ROOT / f).exists()]
        verdict = "HELD" if failed == 0 and passed else "FAILED" if failed else "NOT RUN"
        print(
            f"{category}: {verdict} — {passed} tests passed, {failed} failed"
            + (f" (not present: {', '.join(missing)})" if missing else "")
        )
        if category == "fuzz" and fuzzed:
            requests = sum(f["requests"] for f in fuzzed)
            server_errors = sum(f["failures"] for f in fuzzed)
            print(
                f"  fuzz: {requests:,} requests over {max(f['operations'] for f in fuzzed)} "
                f"operations on {len(fuzzed)} backend(s), {server_errors} failing operations"
            )
        for line in lines:
            if line["category"].startswith(category.rstrip("s")):
                print(f"  {line['category']}: tried {line['tried']}; held: {line['held']}")
    return result.returncode


def _outcomes(junit: Path) -> dict[str, tuple[int, int]]:
    """(passed, failed) per test file, from pytest's junit XML."""
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    if not junit.exists():
        return defaultdict(lambda: (0, 0))
    # pytest wrote this file a moment ago, in our own temporary directory.
    for case in ET.parse(junit).getroot().iter("testcase"):  # noqa: S314
        path = "tests/" + case.get("classname", "").split(".")[1] + ".py"
        bad = case.find("failure") is not None or case.find("error") is not None
        skipped = case.find("skipped") is not None
        if not skipped:
            counts[path][1 if bad else 0] += 1
    return defaultdict(lambda: (0, 0), {k: (v[0], v[1]) for k, v in counts.items()})


if __name__ == "__main__":
    sys.exit(main())
