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

from werkzeug.wsgi import get_host

from app.http import observability

EXTENSION = "app.edge"
_METHODS = frozenset({"GET", "HEAD"})
_SCHEMES = frozenset({"http", "https"})


@dataclass(frozen=True)
class _Answer:
    route: str
    body: bytes
    headers: list[tuple[str, str]]  # over HTTP
    secure_headers: list[tuple[str, str]]  # over HTTPS: with HSTS


class Edge:
    """The WSGI app in front of Flask's own (`app.wsgi_app`), inside the proxy fix."""

    KNOWN_HOSTS = 1024  # Host headers decided; beyond that, decided afresh

    def __init__(self, app: Any) -> None:
        self.app = app
        self.wsgi_app = app.wsgi_app
        self.payloads: dict[str, Any] = {}
        self.answers: dict[str, _Answer] | None = None  # made at the first request
        self.hosts: dict[str, bool] = {}  # Host header: whether Flask can route it
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
        if answer is None or method not in _METHODS or not self._routable(environ):
            return self.wsgi_app(environ, start_response)
        started = time.perf_counter()
        request_id = observability.request_id(environ.get("HTTP_X_REQUEST_ID", ""))
        secure = environ["wsgi.url_scheme"] == "https"
        headers = answer.secure_headers if secure else answer.headers
        start_response("200 OK", [*headers, ("X-Request-ID", request_id)])
        where = (answer.route, None, environ.get("REMOTE_ADDR"))  # path, user, address
        duration = time.perf_counter() - started
        observability.observe(method, answer.route, 200, duration, request_id, where)
        return [] if method == "HEAD" else [answer.body]

    def _routable(self, environ: dict[str, Any]) -> bool:
        """Whether Flask's URL map would route this request at all: a plain HTTP(S)
        request (werkzeug routes a websocket upgrade, or a ws/wss scheme, to websocket
        rules only: 400 here) whose host name it can encode (IDNA: a label over 63
        characters, an empty one — `.a`, `a..b` — is a 400). Anything else goes to Flask,
        which answers it as it always did. Decided once per Host header."""
        if environ.get("wsgi.url_scheme") not in _SCHEMES or "HTTP_UPGRADE" in environ:
            return False
        header = environ.get("HTTP_HOST")
        known = self.hosts.get(header) if header is not None else None
        if known is None:
            name = get_host(environ).lower().partition(":")[0]  # as werkzeug's bind does
            try:
                name.encode("idna")
                known = True
            except UnicodeError:
                known = False
            if header is not None and len(self.hosts) < self.KNOWN_HOSTS:
                self.hosts[header] = known
        return known

    def _prepare(self) -> dict[str, _Answer]:
        from app.http import security_headers
        from app.http.limits import limits_every_route

        app = self.app
        if limits_every_route(app):
            return {}  # every request passes flask-limiter's hooks: Flask serves them all
        if app.config.get("SERVER_NAME") or app.config.get("TRUSTED_HOSTS"):
            return {}  # Flask checks the host against them: it answers every request
        if app.url_map.host_matching or app.subdomain_matching:
            return {}
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
