"""Request ids, one structured log line per request, and the /metrics endpoint."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from flask import Response, g, request

from app.http.bearer import current_subject
from app.kernel import metrics
from app.kernel.db import get_database

access_log = logging.getLogger("app.access")
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
# Metric labels come from closed sets, so no request can create new series: any other
# method is "other"; a path no route matches is "<unmatched>".
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "<unmatched>"
# Control characters (C0, DEL, C1) and Unicode's line and paragraph separators: a logged
# value holding one could start what looks like a new log line. Lone surrogates too: the
# log stream could not encode them.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def escape_controls(value: object) -> str:
    """`value` as text with every control character written as an escape (\\n, \\x1b…)."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), str(value))


def method_label(method: str) -> str:
    return method if method in METHODS else "other"


class JsonFormatter(logging.Formatter):
    """Log records as one JSON object per line.

    Every request writes one (the access log), so the line is made cheaply: the timestamp's
    date and time of day are written once per second (only the milliseconds change between
    the lines of one second), and one encoder serves every line (`json.dumps` with an
    argument builds a new one per call)."""

    _encode = json.JSONEncoder(default=str).encode

    def __init__(self) -> None:
        super().__init__()
        self._second: tuple[int, str] = (-1, "")  # a second since the epoch, as ISO 8601

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": self.timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return self._encode(entry)

    def timestamp(self, record: logging.LogRecord) -> str:
        """When `record` was made, in UTC to the millisecond: 2026-12-01T20:00:41.549+00:00
        (what `datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")`
        writes: the time rounded to the microsecond as it rounds it, then cut)."""
        fraction, whole = math.modf(record.created)
        microseconds = round(fraction * 1e6)
        if microseconds >= 1_000_000:
            whole, microseconds = whole + 1, microseconds - 1_000_000
        second = int(whole)
        known, text = self._second
        if second != known:
            text = datetime.fromtimestamp(second, UTC).isoformat(timespec="seconds")[:-6]
            self._second = (second, text)
        return f"{text}.{microseconds // 1000:03d}+00:00"


class TextFormatter(logging.Formatter):
    """Plain lines for development, with the structured fields appended as key=value.

    The message and every field have their control characters escaped, so what a client
    sends (a path with %0a) cannot forge a line; a traceback's lines are indented, so
    only a record's first line starts at the margin."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_controls(record.message)
        return super().formatMessage(record)

    def formatException(self, ei: Any) -> str:
        return "\n".join("    " + line for line in super().formatException(ei).splitlines())

    def formatStack(self, stack_info: str) -> str:
        return "\n".join("    " + line for line in stack_info.splitlines())

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = getattr(record, "fields", None)
        if fields:
            line += " " + " ".join(
                f"{escape_controls(k)}={_text_value(v)}" for k, v in fields.items() if v is not None
            )
        return line


def _text_value(value: Any) -> str:
    """A field's value for the text format: quoted when it holds a space, a quote or `=`,
    so that a value a client chose (a path) cannot pose as fields of its own."""
    text = escape_controls(value)
    if text and not any(c in text for c in ' "=\\'):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def configure_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)


def request_id(incoming: str) -> str:
    """The request's id: the caller's (nginx's) `X-Request-ID` when it is well formed, else
    a new one."""
    return incoming if REQUEST_ID.match(incoming) else uuid.uuid4().hex


def _start() -> None:
    g.request_id = request_id(request.headers.get("X-Request-ID", ""))
    g.started = time.perf_counter()


def _finish(response: Response) -> Response:
    duration = time.perf_counter() - g.get("started", time.perf_counter())
    rule = request.url_rule
    route = rule.rule if rule is not None else UNMATCHED
    request_id = g.get("request_id", "-")
    status = response.status_code
    response.headers["X-Request-ID"] = request_id
    observe(request.method, route, status, duration, request_id)
    return response


def observe(
    method: str,
    route: str,
    status: int,
    duration: float,
    request_id: str,
    where: tuple[str, str | None, str | None] | None = None,
) -> None:
    """A request's metrics and its access-log line. `where` is its (path, user id, client
    address), asked of Flask's current request when not given (`edge` gives it)."""
    requests_child, latency_child = _route_metrics(method, route, status)
    requests_child.inc()
    latency_child.observe(duration)
    if status == 429:
        metrics.RATE_LIMITED.labels(route).inc()
    if access_log.isEnabledFor(logging.INFO):
        if where is None:
            where = (request.path, current_subject(), request.remote_addr)
        _log_access(request_id, method, route, status, duration, where)


# Each (method, route, status) child of the request metrics, resolved once: prometheus'
# labels() checks and converts its values and takes a lock on every call. The labels come
# from closed sets (METHODS, the route table, HTTP statuses), so this stays small.
_metric_children: dict[tuple[Any, str, str, int], tuple[Any, Any]] = {}


def _route_metrics(method: str, route: str, status: int) -> tuple[Any, Any]:
    label = method_label(method)  # any other method is "other": the key stays bounded
    key = (metrics.HTTP_REQUESTS, label, route, status)  # a metric replaced: new children
    children = _metric_children.get(key)
    if children is None:
        children = _metric_children[key] = (
            metrics.HTTP_REQUESTS.labels(label, route, str(status)),
            metrics.HTTP_LATENCY.labels(label, route),
        )
    return children


def _log_access(
    request_id: str,
    method: str,
    route: str,
    status: int,
    duration: float,
    where: tuple[str, str | None, str | None],
) -> None:
    """One access-log record, built once and handed to the handlers (Logger.info would
    also look for the caller's frame and check the `extra` keys again, for every request)."""
    path, user_id, ip = where
    record = access_log.makeRecord(
        access_log.name,
        logging.INFO,
        "",
        0,
        "%s %s %s",
        (method, route, status),
        None,
        extra={
            "fields": {  # the line's fields, in its order
                "request_id": request_id,
                "method": method,
                "route": route,
                "path": path,
                "status": status,
                "duration_ms": round(duration * 1000, 2),
                "user_id": user_id,
                "ip": ip,
            }
        },
    )
    access_log.handle(record)


def metrics_endpoint() -> Response:
    from prometheus_client import (
        CONTENT_TYPE_LATEST,
        CollectorRegistry,
        generate_latest,
        multiprocess,
    )

    pool = get_database().engine.pool
    if hasattr(pool, "checkedout"):
        metrics.db_pool_checked_out().set(pool.checkedout())
        metrics.db_pool_size().set(pool.size())
    if folder := os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        metrics.forget_the_dead(folder)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        body = generate_latest(registry)
    else:
        body = generate_latest()
    return Response(body, content_type=CONTENT_TYPE_LATEST)  # it names its charset


def init_app(app: Any) -> None:
    app.before_request(_start)
    app.after_request(_finish)
    # Prometheus text, not part of the JSON API: kept out of the OpenAPI document.
    app.add_url_rule("/metrics", "metrics", app.doc(hide=True)(metrics_endpoint))
