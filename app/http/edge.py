"""Fixed answers served before Flask, every feature kept (ADR 0017).

A path registered with `serve_fixed` (the liveness probe, /healthz) is answered for GET and
HEAD by the edge itself: the request id, the security headers, the metrics and the access-log
line come from the functions Flask's hooks use (`observability`, `security_headers`), and
the body and Content-Type are what the view's return value renders to with the app's JSON
provider. Everything else goes to Flask — other methods, other paths, and the registered
paths too whenever the app configures limits for every route (flask-limiter must count
those requests) — and Flask keeps serving the registered route (the OpenAPI document
describes it).

What an app-wide hook adds to every Flask answer must be added here too:
tests/test_edge.py compares the edge's answers with Flask's, header by header.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from app.http import observability

EXTENSION = "app.edge"
_METHODS = frozenset({"GET", "HEAD"})
_SECURE_SCHEMES = frozenset({"https", "wss"})  # what werkzeug's `is_secure` accepts


@dataclass(frozen=True)
class _Answer:
    route: str
    body: bytes
    headers: list[tuple[str, str]]  # over HTTP
    secure_headers: list[tuple[str, str]]  # over HTTPS: with HSTS


class Edge:
    """The WSGI app in front of Flask's own (`app.wsgi_app`), inside the proxy fix."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.wsgi_app = app.wsgi_app
        self.payloads: dict[str, Any] = {}
        self.answers: dict[str, _Answer] | None = None  # made at the first request
        app.extensions[EXTENSION] = self

    def serve(self, path: str, payload: Any) -> None:
        self.payloads[path] = payload
        self.answers = None

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        answers = self.answers
        if answers is None:
            answers = self.answers = self._prepare()
        answer = answers.get(environ.get("PATH_INFO", ""))
        method = environ.get("REQUEST_METHOD", "")
        if answer is None or method not in _METHODS:
            return self.wsgi_app(environ, start_response)
        started = time.perf_counter()
        request_id = observability.request_id(environ.get("HTTP_X_REQUEST_ID", ""))
        secure = environ.get("wsgi.url_scheme") in _SECURE_SCHEMES
        headers = answer.secure_headers if secure else answer.headers
        start_response("200 OK", [*headers, ("X-Request-ID", request_id)])
        where = (answer.route, None, environ.get("REMOTE_ADDR"))  # path, user, address
        duration = time.perf_counter() - started
        observability.observe(method, answer.route, 200, duration, request_id, where)
        return [] if method == "HEAD" else [answer.body]

    def _prepare(self) -> dict[str, _Answer]:
        from app.http import security_headers
        from app.http.limits import limits_every_route

        if limits_every_route(self.app):
            return {}  # every request passes flask-limiter's hooks: Flask serves them all
        answers = {}
        for path, payload in self.payloads.items():
            response = self.app.json.response(payload)  # as Flask renders a view's dict
            body = response.get_data()
            base = [("Content-Type", response.content_type), ("Content-Length", str(len(body)))]
            plain, secure = (
                [*base, *((name, value) for _lower, name, value in security_headers(path, s))]
                for s in (False, True)
            )
            answers[path] = _Answer(path, body, plain, secure)
        return answers


def serve_fixed(app: Any, path: str, payload: Any) -> None:
    """Answer GET and HEAD `path` with `payload` (what its Flask view returns, always) at the
    edge, when the app has one (`http.init_app` puts it there)."""
    edge = app.extensions.get(EXTENSION)
    if edge is not None:
        edge.serve(path, payload)
