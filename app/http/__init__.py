"""The HTTP layer: the only place that knows APIFlask's and Flask's request machinery,
flask-limiter and flask-jwt-extended. `init_app` wires it into an app; the modules' routes
use `blueprints.module_blueprint`, `limits` and `bearer`.

- `problems`: every error rendered as problem+json;
- `limits`: the rate limiter, its storage and its key functions;
- `bearer`: the JWT manager, each token verified once per request;
- `observability`: request ids, the access log, metrics and /metrics;
- `blueprints`: a blueprint whose requests run as its module;
- `edge`: fixed answers (liveness) served before Flask, every feature kept (ADR 0017).
"""

from __future__ import annotations

import ipaddress
from typing import Any

from flask import Request, request
from flask.json.provider import DefaultJSONProvider
from flask.sessions import NullSession, SessionInterface
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.wsgi import LimitedStream

from app.kernel.errors import MalformedJSON, ProblemError

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'; base-uri 'none'",
    "Cross-Origin-Resource-Policy": "same-origin",
}
HSTS = "max-age=63072000; includeSubDomains"


class NoCookieSession(SessionInterface):
    """The API authenticates with Bearer tokens and keeps no cookie session: skip Flask's
    (opening and saving it is measurable per request: bench/README.md)."""

    def open_session(self, app: Any, request: Any) -> NullSession:
        return NullSession()

    def save_session(self, app: Any, session: Any, response: Any) -> None:
        return None


_OVER_LIMIT = "app.streamed_body_over_limit"  # environ: the verdict of ApiRequest.get_data


class ApiRequest(Request):
    """Bodies are JSON, sent as JSON: `application/json` or a `+json` type, else 415; and
    malformed JSON is a 400 problem with code `malformed_json`, not a bare BadRequest.

    Views read bodies with `get_json(force=True)` (APIFlask does): `force` is ignored
    here, so a `text/plain` or form body (which a cross-site page can post without a
    CORS preflight) is never parsed as JSON."""

    def get_json(self, force: bool = False, silent: bool = False, cache: bool = True) -> Any:
        if not self.is_json:
            if silent:
                return None
            raise ProblemError(
                "Send the body as JSON, with Content-Type: application/json.",
                status=415,
                code="unsupported_media_type",
            )
        return super().get_json(force=False, silent=silent, cache=cache)

    def get_data(self, *args: Any, **kwargs: Any) -> Any:
        """The body, refused with 413 when it is over `max_content_length` also when it was
        streamed (chunked, no Content-Length): werkzeug stops reading such a body at the
        limit and hands on what it read as if it were all of it."""
        data = super().get_data(*args, **kwargs)
        over = self.environ.get(_OVER_LIMIT)
        if over is None:  # decided once: the check consumes the byte it looks for
            stream = self.stream  # streamed: read up to the limit at most (LimitedStream)
            over = self.environ[_OVER_LIMIT] = bool(
                self.content_length is None
                and isinstance(stream, LimitedStream)
                and stream.is_exhausted
                and self.environ["wsgi.input"].read(1)  # a byte beyond the limit
            )
        if over:
            raise RequestEntityTooLarge()
        return data

    def on_json_loading_failed(self, e: ValueError | None) -> Any:
        raise MalformedJSON("The request body is not valid JSON.")


class ApiJSONProvider(DefaultJSONProvider):
    """Request bodies are strict UTF-8 JSON (RFC 8259); anything else is malformed input.

    - Python's parser recurses and raises RecursionError (not ValueError) on a body like
      `[[[[…]]]]` ten thousand deep; Flask only turns ValueError into "bad JSON" (and
      `get_json(silent=True)`, as the rate-limit keys use it, only swallows ValueError).
    - `json.loads(bytes)` decodes with "surrogatepass", so encoded surrogates (invalid
      UTF-8) would get through as lone surrogates, and it guesses UTF-16 and UTF-32.
    - Duplicate member names (`{"seats": 1, "seats": 50}`) are refused, at any depth:
      Python keeps the last one, another parser (a proxy, a log reader) may keep the first.
    """

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        if isinstance(s, bytes | bytearray):
            s = bytes(s).decode("utf-8-sig")  # UnicodeDecodeError is a ValueError
        kwargs.setdefault("object_pairs_hook", _unique_members)
        try:
            return super().loads(s, **kwargs)
        except RecursionError:
            raise ValueError("JSON nested too deeply") from None


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    members = dict(pairs)
    if len(members) != len(pairs):
        raise ValueError("duplicate member names in a JSON object")
    return members


class TrustedProxyFix:
    """ProxyFix for requests that come from a trusted proxy only.

    Believe exactly `hops` X-Forwarded-* hops (anything further left is the client's own
    claim), and only when the peer is one of `addresses` (networks): a client that reaches
    gunicorn directly is its own socket address, whatever it writes in the header.

    Whether a peer is trusted is decided once per peer address (behind nginx there is one:
    the proxy), not parsed again on every request."""

    KNOWN_PEERS = 1024  # decisions kept; beyond that they are made afresh

    def __init__(self, wsgi_app: Any, hops: int, addresses: str) -> None:
        self.wsgi_app = wsgi_app
        self.fixed = ProxyFix(wsgi_app, x_for=hops, x_proto=hops)
        self.proxies = [
            ipaddress.ip_network(a.strip(), strict=False) for a in addresses.split(",") if a.strip()
        ]
        self.trusted: dict[str, bool] = {}

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        peer = environ.get("REMOTE_ADDR", "")
        trusted = self.trusted.get(peer)
        if trusted is None:
            trusted = self.is_proxy(peer)
            if len(self.trusted) < self.KNOWN_PEERS:
                self.trusted[peer] = trusted
        if trusted:
            return self.fixed(environ, start_response)
        return self.wsgi_app(environ, start_response)

    def is_proxy(self, peer: str) -> bool:
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped  # a dual-stack bind: ::ffff:127.0.0.1 is 127.0.0.1
        return any(address in network for network in self.proxies)


# (lower-case name, name, value): one pass over a response's headers adds the missing ones.
_SECURITY = [(name.lower(), name, value) for name, value in SECURITY_HEADERS.items()]
_NO_STORE = ("cache-control", "Cache-Control", "no-store")
_HSTS = ("strict-transport-security", "Strict-Transport-Security", HSTS)


def security_headers(path: str, secure: bool) -> list[tuple[str, str, str]]:
    """The security headers of an answer at `path`, as (lower-case name, name, value);
    HSTS only when the request came over HTTPS."""
    wanted = _SECURITY
    if path.startswith("/api/"):
        # Tokens, signed verdicts, personal data: no API answer is for a cache to keep.
        wanted = [*wanted, _NO_STORE]
    if secure:
        wanted = [*wanted, _HSTS]
    return wanted


def add_security_headers(response: Any) -> Any:
    """Security headers on every response; a header the view set itself is kept. (One
    pass: werkzeug's `setdefault` scans every header, for each header added.)"""
    headers = response.headers
    present = {name.lower() for name, _value in headers.items()}
    for lower, name, value in security_headers(request.path, request.is_secure):
        if lower not in present:
            headers.add(name, value)
    return response


def use_api_classes(app: Any) -> None:
    """The request, JSON and session classes of an API app: set before anything reads a
    request or dumps JSON (create_app does it first)."""
    app.request_class = ApiRequest
    app.session_interface = NoCookieSession()
    app.json = ApiJSONProvider(app)


def init_app(app: Any) -> None:
    """Error rendering, the limiter, the JWT manager, request ids, the access log, metrics,
    security headers and (with TRUSTED_PROXIES) the proxy fix."""
    from app.http import bearer, edge, limits, observability, problems

    bearer.init_app(app)
    limits.init_app(app)
    observability.init_app(app)
    app.after_request(add_security_headers)
    problems.init_app(app)
    app.wsgi_app = edge.Edge(app)  # inside the proxy fix: it sees the client's address
    if app.config["TRUSTED_PROXIES"] > 0:
        app.wsgi_app = TrustedProxyFix(
            app.wsgi_app, app.config["TRUSTED_PROXIES"], app.config["TRUSTED_PROXY_ADDRESSES"]
        )
