"""Prometheus metrics, defined once; modules increment them, /metrics exposes them.

Under gunicorn every worker is a process: with PROMETHEUS_MULTIPROC_DIR set (the gunicorn
config sets it) prometheus_client writes each process's values to files there and the
/metrics endpoint sums them, so a scrape sees the whole server, not one worker.

Every gauge is "live": a process's gauges leave the folder when it exits (`_forget`, and
gunicorn's child_exit for a worker), as cron's `flask` commands and the webhook worker
share the folder. Counters and histograms stay: their counts are part of the totals.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import threading
from pathlib import Path

from prometheus_client import Counter, Gauge, Histogram

HTTP_REQUESTS = Counter(
    "http_requests_total", "HTTP requests by route and status", ["method", "route", "status"]
)
HTTP_LATENCY = Histogram(
    "http_request_duration_seconds",
    "HTTP request latency by route",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
RATE_LIMITED = Counter("rate_limit_rejections_total", "Requests refused with 429", ["route"])
LICENSE_ACTIVATIONS = Counter(
    "license_activations_total", "License activations by result", ["result"]
)
LICENSE_VALIDATIONS = Counter("license_validations_total", "License validations by code", ["code"])
WEBHOOK_DELIVERIES = Counter(
    "webhook_deliveries_total",
    "Webhook delivery attempts by result (succeeded, retrying, failed, gone)",
    ["result"],
)

# Gauges without labels, made where they are first measured, never at import: such a gauge
# writes its process's file in PROMETHEUS_MULTIPROC_DIR as it is made, so every process
# that loaded the app (gunicorn's master, each cron command) wrote there before the folder
# could be checked (`metrics_folder_problem`), and a gauge made at import is 0 in every
# process — the maximum of the webhook backlog's age was 0 with no delivery worker running.
_GAUGES: dict[str, Gauge] = {}
_MAKING = threading.Lock()


def _gauge(name: str, documentation: str, mode: str) -> Gauge:
    gauge = _GAUGES.get(name)
    if gauge is None:
        with _MAKING:
            gauge = _GAUGES.get(name)
            if gauge is None:
                gauge = _GAUGES[name] = Gauge(name, documentation, multiprocess_mode=mode)
    return gauge


def db_pool_checked_out() -> Gauge:
    return _gauge("db_pool_checked_out_connections", "Database connections in use", "livesum")


def db_pool_size() -> Gauge:
    return _gauge("db_pool_size", "Configured database pool size", "livemax")


def webhook_backlog_age() -> Gauge:
    """The age of the oldest pending webhook delivery, as a delivery worker last saw it —
    only delivery workers measure it, so only they have it. The oldest age a running worker
    saw (`livemax`): a stopped worker's goes with it, and the series is absent when none
    runs (the README: alert on its absence)."""
    return _gauge(
        "webhook_backlog_age_seconds",
        "Age of the oldest pending webhook delivery, as the delivery worker last saw it",
        "livemax",
    )


def metrics_folder_problem(folder: str | None) -> str | None:
    """PROMETHEUS_MULTIPROC_DIR made when missing, or why it cannot be used (one line):
    asked by wsgi.py and by gunicorn's start before anything is measured — a missing folder
    made every `flask` command end in a traceback at its first metric."""
    if folder:
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as exc:
            return f"PROMETHEUS_MULTIPROC_DIR={folder} cannot be made ({exc.strerror})"
        if not os.access(folder, os.W_OK | os.X_OK):
            return f"PROMETHEUS_MULTIPROC_DIR={folder} is not a folder this user can write to"
    return None


# Gauges each gunicorn worker keeps for itself (`liveall`: one series per worker, its pid as
# a label; gunicorn's child_exit removes a dead worker's): the verified license-token cache's
# fill, and what SQLite's page caches hold — a worker's memory grows while they fill, up to
# their bounds. Made by `start_per_worker`, in a gunicorn worker (deploy/gunicorn.conf.py's
# post_fork) or in a process without multi-process files, never at import: with
# PROMETHEUS_MULTIPROC_DIR set, a gauge writes its process's file as it is made, and each cron
# command, the webhook worker and gunicorn's master would leave a series behind for good.
# Until then they are None and nothing is reported.
LICENSE_TOKEN_CACHE_ENTRIES: Gauge | None = None
LICENSE_TOKEN_CACHE_BYTES: Gauge | None = None
SQLITE_MEMORY_BYTES: Gauge | None = None


def start_per_worker() -> None:
    """Make this process's per-worker gauges (once)."""
    global LICENSE_TOKEN_CACHE_ENTRIES, LICENSE_TOKEN_CACHE_BYTES, SQLITE_MEMORY_BYTES
    if LICENSE_TOKEN_CACHE_ENTRIES is not None:
        return
    LICENSE_TOKEN_CACHE_ENTRIES = Gauge(
        "license_token_cache_entries",
        "Verified license tokens this worker remembers",
        multiprocess_mode="liveall",
    )
    LICENSE_TOKEN_CACHE_BYTES = Gauge(
        "license_token_cache_bytes",
        "Memory the verified license-token cache of this worker holds (entries and table)",
        multiprocess_mode="liveall",
    )
    SQLITE_MEMORY_BYTES = Gauge(
        "sqlite_memory_bytes",
        "Memory SQLite's allocator holds in this worker (its page caches mostly)",
        multiprocess_mode="liveall",
    )


# A process's file in the folder: `<kind>_<pid>.db` (prometheus_client's names).
_PROCESS_FILE = re.compile(
    r"(?:counter|histogram|summary|gauge_[a-z]+)_([1-9][0-9]{0,9})\.db", re.A
)


def _running(pid: int) -> bool:
    """Whether a process `pid` runs (a zombie, dead but not yet reaped by its parent, does
    not). Its pid given again to another process reads as running: that process's life
    long, the dead one's gauges stay (rare with Linux's millions of pids; a check by the
    file's age was tried and undone — a step of the clock made every running process's
    files look older than their process)."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:  # another user's: running
        pass
    try:  # the state, after the command's ")": Z zombie, X dead
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return True  # no /proc to ask (not Linux), or gone this instant
    return state not in ("Z", "X")


def clear_folder(folder: str) -> None:
    """Empty the folder of a previous run's files as gunicorn starts (their values would be
    summed in), but not of processes still running: a delivery worker shares the folder
    and may live through a restart of gunicorn (its files deleted under it, its metrics
    were gone until it restarted: tests/test_observability.py)."""
    for entry in os.scandir(folder):
        if entry.is_dir(follow_symlinks=False):
            continue  # not one of ours
        found = _PROCESS_FILE.fullmatch(entry.name)
        if found and _running(int(found[1])):
            continue
        os.remove(entry.path)


def forget_the_dead(folder: str) -> None:
    """Before a scrape: the gauges of processes that are gone without saying so (killed
    outright, or by a signal they do not handle) leave the folder, as a process's own leave
    at its exit (`_forget`) — a killed delivery worker's backlog age would stay the
    maximum, its absence never seen. Counters stay: their counts are part of the totals.
    The folder is one host's (one pid namespace), as gunicorn's is."""
    from prometheus_client import multiprocess

    for entry in os.scandir(folder):
        if not entry.name.startswith("gauge_live"):
            continue
        found = _PROCESS_FILE.fullmatch(entry.name)
        with contextlib.suppress(FileNotFoundError):  # its process removed it meanwhile
            if found and not _running(int(found[1])):
                multiprocess.mark_process_dead(int(found[1]), folder)


def _forget(folder: str) -> None:
    """At exit, this process's gauges leave the multi-process folder: a `flask` command
    run by cron each minute left three files a run for good (~4,300 a day, each read by
    every scrape) and its last pool count in the sum."""
    from prometheus_client import multiprocess

    with contextlib.suppress(OSError):  # the folder is gone (gunicorn's temporary one)
        multiprocess.mark_process_dead(os.getpid(), folder)


if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    start_per_worker()  # one process, no files: nothing is left behind
else:
    # in each forked worker too: its own pid, at its exit
    atexit.register(_forget, os.environ["PROMETHEUS_MULTIPROC_DIR"])
