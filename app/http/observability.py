"""Request ids, one structured log line per request, and the /metrics endpoint."""

from __future__ import annotations

import json
import logging
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
    """Log records as one JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


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


def _start() -> None:
    incoming = request.headers.get("X-Request-ID", "")
    g.request_id = incoming if REQUEST_ID.match(incoming) else uuid.uuid4().hex
    g.started = time.perf_counter()


def _finish(response: Response) -> Response:
    duration = time.perf_counter() - g.get("started", time.perf_counter())
    route = request.url_rule.rule if request.url_rule is not None else UNMATCHED
    request_id = g.get("request_id", "-")
    response.headers["X-Request-ID"] = request_id
    method = method_label(request.method)
    metrics.HTTP_REQUESTS.labels(method, route, str(response.status_code)).inc()
    metrics.HTTP_LATENCY.labels(method, route).observe(duration)
    if response.status_code == 429:
        metrics.RATE_LIMITED.labels(route).inc()
    access_log.info(
        "%s %s %s",
        request.method,
        route,
        response.status_code,
        extra={
            "fields": {
                "request_id": request_id,
                "method": request.method,
                "route": route,
                "path": request.path,
                "status": response.status_code,
                "duration_ms": round(duration * 1000, 2),
                "user_id": current_subject(),
                "ip": request.remote_addr,
            }
        },
    )
    return response


def metrics_endpoint() -> Response:
    from prometheus_client import (
        CONTENT_TYPE_LATEST,
        CollectorRegistry,
        generate_latest,
        multiprocess,
    )

    pool = get_database().engine.pool
    if hasattr(pool, "checkedout"):
        metrics.DB_POOL_CHECKED_OUT.set(pool.checkedout())
        metrics.DB_POOL_SIZE.set(pool.size())
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        body = generate_latest(registry)
    else:
        body = generate_latest()
    return Response(body, mimetype=CONTENT_TYPE_LATEST)


def init_app(app: Any) -> None:
    app.before_request(_start)
    app.after_request(_finish)
    # Prometheus text, not part of the JSON API: kept out of the OpenAPI document.
    app.add_url_rule("/metrics", "metrics", app.doc(hide=True)(metrics_endpoint))
