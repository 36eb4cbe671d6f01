"""gunicorn settings for `make run` and production (`gunicorn -c deploy/gunicorn.conf.py wsgi:app`).

Workers import the app themselves (no preload): each gets its own database pool, never one
inherited across fork(). Metrics from all workers are summed through files in
PROMETHEUS_MULTIPROC_DIR (a fresh temporary directory unless one is given).
"""

import multiprocessing
import os
import shutil
import sys
import tempfile


def _int(name: str, default: int | str) -> int:
    """A number this file needs before the app is imported (importing it here would start the
    app's metrics before on_starting clears their folder); the app checks it again (HOST,
    PORT and the rest too: app/settings), before the port is bound."""
    raw = os.environ.get(name) or str(default)
    try:
        return int(raw)
    except ValueError:
        sys.stderr.write(f"error: {name} must be an integer, got {raw!r}\n")
        sys.exit(2)


# The upstream of deploy/nginx.conf is 127.0.0.1:8000: change PORT and that line together.
_host = os.environ.get("HOST", "127.0.0.1")
if ":" in _host and not _host.startswith("["):
    _host = f"[{_host}]"  # an IPv6 address (HOST=::) is bracketed before the port
bind = f"{_host}:{_int('PORT', '8000')}"
# The master's pid, for a graceful reload after a deploy: kill -HUP "$(cat "$GUNICORN_PIDFILE")".
pidfile = os.environ.get("GUNICORN_PIDFILE") or None
# gunicorn 27's control socket lives at one path per user (~/.gunicorn/gunicorn.ctl): every
# instance on a host would share it, and the last to stop would delete it for all. The
# pidfile and signals (README, "Operations") are how this service is run; older gunicorns
# ignore the setting.
control_socket_disable = True
workers = _int("WEB_CONCURRENCY", multiprocessing.cpu_count() * 2 + 1)
worker_class = "sync"
timeout = _int("GUNICORN_TIMEOUT", 30)
graceful_timeout = 30
keepalive = 5
# Recycle workers now and then (with jitter, so they do not all restart at once).
max_requests = _int("GUNICORN_MAX_REQUESTS", 5000)
max_requests_jitter = max_requests // 10
# nginx (deploy/nginx.conf) refuses request lines and headers that are too large, with a
# problem+json answer. gunicorn's own limits sit at or above nginx's (8 KiB per line, 32 KiB
# of headers), so it never answers a request nginx let through with its HTML 414/431 page:
# the request line at gunicorn's maximum, 8190 bytes (nginx's: 8 KiB with its CRLF); as
# many header fields as fit in 32 KiB; a field as long as all of them (nginx joins a
# client's repeated X-Forwarded-For into one and appends the address it saw).
limit_request_line = 8190
limit_request_fields = 32768
limit_request_field_size = 65536
# Only the local reverse proxy may set X-Forwarded-*; the app's ProxyFix decides how many
# hops to believe (TRUSTED_PROXIES).
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")
# The app logs one structured line per request (with its request id); gunicorn's own access
# log is optional and carries the same id.
accesslog = os.environ.get("GUNICORN_ACCESS_LOG") or None
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(M)sms rid=%({x-request-id}o)s'
# With --daemon there is no terminal: GUNICORN_ERROR_LOG names a file for gunicorn's log and
# (capture_output) the app's own output.
errorlog = os.environ.get("GUNICORN_ERROR_LOG") or "-"
capture_output = errorlog != "-"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()

if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="licensing-metrics-")


def on_starting(server):
    """Before any socket or worker: the metrics folder cleared (`metrics.clear_folder`),
    then the app built once and checked that it can serve (app/startup.py). A broken
    production deployment exits here, code 2, with the CLI's one-line message — instead of
    workers failing to boot and being restarted forever."""
    from app.kernel import metrics  # loading the app writes nothing to the folder
    from app.startup import preflight

    folder = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    problem = metrics.metrics_folder_problem(folder)
    if problem is None:
        metrics.clear_folder(folder)
        problem = preflight()
    if problem:
        sys.stderr.write(f"error: {problem}\n")
        sys.stderr.flush()
        if server.pidfile is not None:
            server.pidfile.unlink()
        on_exit(server)
        sys.exit(2)


def post_fork(server, worker):
    """Each worker's own gauges (a pid label each), made in the worker only: the master and
    other processes sharing PROMETHEUS_MULTIPROC_DIR (cron commands, the webhook worker)
    would leave series behind."""
    from app.kernel import metrics

    metrics.start_per_worker()


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
    if folder.startswith(tempfile.gettempdir()) and "licensing-metrics-" in folder:
        shutil.rmtree(folder, ignore_errors=True)
