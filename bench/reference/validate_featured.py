"""The minimal validate WITH the service's features, written bare: the floor any
implementation of POST /licenses/validate pays for them (issue 17). GET /healthz too, as
the service answers it, through the same features but no rate limit (the service's has
none): the floor under the healthz target, beside Flask hello's.

bench/reference/validate.py does a validation's work and nothing else. This is that, plus
what the service does around it, each written with its library directly — Flask, redis-py,
PyJWT/cryptography, `logging`, prometheus_client; no flask-limiter, no APIFlask, no ORM
session, no ownership guard:

- the two validate limits (per client address, then per token digest; the rates from
  RATELIMIT_VALIDATE_PER_IP / _PER_TOKEN, e.g. "10000000/minute"), fixed windows counted
  exactly in Redis (REDIS_URL) in one round trip: a Lua script increments both counters,
  sets each window's expiry on its first hit and returns the counts and TTLs, stopping at
  the first over its limit as the service's limiter does (EVALSHA, the script loaded again
  on NOSCRIPT). Over a limit: 429 problem+json with Retry-After. X-RateLimit-Limit,
  -Remaining and -Reset on every answer that reached the limits (not on a malformed
  body's 415/422, which it answers before counting; the service counts those too), for
  the first limit (or the one refused), as flask-limiter reports them. Without REDIS_URL
  (or when Redis fails) the windows are counted in this process, like the service's
  fallback;
- the request id: X-Request-ID echoed when well-formed, else a uuid4 hex, in the response
  and in the log line;
- the service's security headers (and Cache-Control: no-store on /api/, HSTS over HTTPS);
- one JSON access-log line per request through `logging`, to stderr (the service's fields);
- Prometheus: requests by method, route and status, latency by method and route,
  validations by code, 429s by route (prometheus_client's multi-process mode when
  PROMETHEUS_MULTIPROC_DIR is set, as deploy/gunicorn.conf.py sets it), and /metrics;
- the signed verdict (Ed25519 JWS, `typ: license-verdict+jwt`, the service's claims and
  `kid`) with the first key of LICENSE_SIGNING_KEYS, and the service's answer's shape
  (valid, code, license, checked_at, token, verdict);
- the body checked as the service's schema checks it (types, lengths, the nonce's
  pattern: 422), a verdict refused as a license token (INVALID_TOKEN);
- TRUSTED_PROXIES hops of X-Forwarded-For/-Proto believed (werkzeug's ProxyFix).

Like the service, a token whose signature verified is remembered (its claims, by the
token's digest, at most VERIFIED_CACHE_SIZE, least recently used out) so that the next
validation of it skips the Ed25519 check; the license row is read every time. Not done:
the service's renewed `token` for a stale one (the benchmark's tokens are fresh: it signs
none there either), several verifying keys, the service's held Redis connection and other
hand-made shortcuts (this is the plain library call), strict JSON parsing (duplicate
members, surrogates), 413 for a streamed body over the limit.

    DATABASE_URL=… LICENSE_SIGNING_KEYS=key.pem REDIS_URL=redis://… \\
        gunicorn -c deploy/gunicorn.conf.py bench.reference.validate_featured:app
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import logging
import os
import re
import threading
import time
import uuid
from collections import OrderedDict
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any

import jwt
import redis
from cryptography.hazmat.primitives import serialization
from flask import Flask, Response, g, jsonify, request
from limits import parse as parse_rate
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from sqlalchemy import (
    Column,
    DateTime,
    Integer,
    MetaData,
    String,
    Table,
    bindparam,
    create_engine,
    event,
    select,
)
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix

# --- the database: as bench/reference/validate.py ------------------------------------------

url = os.environ["DATABASE_URL"]
if url.startswith("postgresql://"):
    url = "postgresql+psycopg://" + url[len("postgresql://") :]
engine = create_engine(url)
if engine.dialect.name == "sqlite":

    @event.listens_for(engine, "connect")
    def _wal(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.execute("PRAGMA journal_mode=WAL")


licenses = Table(
    "licenses",
    MetaData(),
    Column("license_id", String, primary_key=True),
    Column("user_id", String),
    Column("client_id", String),
    Column("status", String),
    Column("created_at", DateTime(timezone=True)),
    Column("expires_at", DateTime(timezone=True)),
    Column("version", Integer),
)
BY_ID = select(licenses).where(licenses.c.license_id == bindparam("license_id"))

# --- keys: the first of LICENSE_SIGNING_KEYS signs verdicts and verifies tokens -------------

ISSUER = "licensing-platform"
VERDICT_TYP = "license-verdict+jwt"
VERDICT_TTL_SECONDS = 300
REQUIRED_CLAIMS = ["iss", "license_id", "user_id", "client_id", "exp"]

with open(os.environ["LICENSE_SIGNING_KEYS"].split(",")[0].strip(), "rb") as pem:
    PRIVATE_KEY = serialization.load_pem_private_key(pem.read(), password=None)
PUBLIC_KEY = PRIVATE_KEY.public_key()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def key_id(public: Any) -> str:
    """The key's RFC 7638 thumbprint: the `kid` the service's JWKS names it by."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    members = json.dumps({"crv": "Ed25519", "kty": "OKP", "x": _b64(raw)}, separators=(",", ":"))
    return _b64(hashlib.sha256(members.encode()).digest())


KID = key_id(PUBLIC_KEY)

# Verified tokens' claims by the token's digest, least recently used first (the service's
# KeySet keeps 16,384 per process): a token that verified once is not verified again.
VERIFIED_CACHE_SIZE = int(os.environ.get("VERIFIED_CACHE_SIZE", "16384"))
_verified: OrderedDict[bytes, dict[str, Any]] = OrderedDict()
_verified_lock = threading.Lock()


def verified_claims(token: str) -> dict[str, Any]:
    """The claims of a license token signed with our key (expiry is the row's business);
    jwt.InvalidTokenError for anything else, a validation verdict included."""
    digest = hashlib.blake2b(token.encode(), digest_size=20).digest()
    with _verified_lock:
        claims = _verified.get(digest)
        if claims is not None:
            _verified.move_to_end(digest)
            return claims
    decoded = jwt.api_jwt.decode_complete(
        token,
        PUBLIC_KEY,
        algorithms=["EdDSA"],
        issuer=ISSUER,
        options={"verify_exp": False, "require": REQUIRED_CLAIMS},
    )
    if decoded["header"].get("typ") == VERDICT_TYP:
        raise jwt.InvalidTokenError("a validation verdict is not a license token")
    claims = decoded["payload"]
    with _verified_lock:
        _verified[digest] = claims
        while len(_verified) > VERIFIED_CACHE_SIZE:
            _verified.popitem(last=False)
    return claims


def sign_verdict(
    code: str, license_id: str | None, client_id: str | None, nonce: str | None, now: datetime
) -> str:
    """The service's verdict: a short-lived JWS over the answer and the app's nonce."""
    iat = int(now.timestamp())
    claims = {
        "iss": ISSUER,
        "code": code,
        "license_id": license_id,
        "client_id": client_id,
        "nonce": nonce,
        "iat": iat,
        "exp": iat + VERDICT_TTL_SECONDS,
    }
    return jwt.encode(
        claims, PRIVATE_KEY, algorithm="EdDSA", headers={"kid": KID, "typ": VERDICT_TYP}
    )


# --- rate limits: fixed windows, both hits in one round trip ---------------------------------

LIMIT_PER_IP = parse_rate(os.environ.get("RATELIMIT_VALIDATE_PER_IP", "120/minute"))
LIMIT_PER_TOKEN = parse_rate(os.environ.get("RATELIMIT_VALIDATE_PER_TOKEN", "60/minute"))
KEY_PREFIX = os.environ.get("RATELIMIT_KEY_PREFIX", "") + "/featured-validate/"

# Each key in turn (ARGV: its window in seconds, its limit): INCR, the expiry set on the
# window's first hit, the count and TTL returned; stop after the first count over its limit.
HITS_SCRIPT = """
local out = {}
for i, key in ipairs(KEYS) do
    local current = redis.call("incr", key)
    if current == 1 then
        redis.call("expire", key, ARGV[2 * i - 1])
    end
    out[#out + 1] = current
    out[#out + 1] = redis.call("ttl", key)
    if current > tonumber(ARGV[2 * i]) then
        break
    end
end
return out
"""
HITS_SHA = hashlib.sha1(HITS_SCRIPT.encode()).hexdigest()  # noqa: S324 - Redis names scripts so

REDIS = (
    redis.Redis.from_url(os.environ["REDIS_URL"], socket_connect_timeout=0.5, socket_timeout=0.5)
    if os.environ.get("REDIS_URL")
    else None
)
log = logging.getLogger("bench.reference.validate_featured")


def hits_in_redis(keys: list[str], args: list[int]) -> list[int]:
    """The script's answer: EVALSHA, and the script loaded again if Redis lost it."""
    assert REDIS is not None
    try:
        return REDIS.evalsha(HITS_SHA, len(keys), *keys, *args)  # type: ignore[no-any-return]
    except redis.exceptions.NoScriptError:
        REDIS.script_load(HITS_SCRIPT)
        return REDIS.evalsha(HITS_SHA, len(keys), *keys, *args)  # type: ignore[no-any-return]


# The fallback without Redis: this process's windows, key -> (count, window's end).
_windows: dict[str, tuple[int, float]] = {}
_windows_lock = threading.Lock()


def hits_in_memory(keys: list[str], args: list[int]) -> list[int]:
    """What the script answers, counted in this process (no Redis, or Redis failing)."""
    out: list[int] = []
    now = time.time()
    with _windows_lock:
        for i, key in enumerate(keys):
            count, ends = _windows.get(key, (0, 0.0))
            if ends <= now:
                count, ends = 0, now + args[2 * i]
            _windows[key] = (count + 1, ends)
            out += [count + 1, int(ends - now)]
            if count + 1 > args[2 * i + 1]:
                break
    return out


def client_ip() -> str:
    """The client's address (after ProxyFix), canonical; "unknown" when it is none."""
    try:
        address = ipaddress.ip_address(request.remote_addr or "")
    except ValueError:
        return "unknown"
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return str(address)


def hit_limits(token: str) -> tuple[bool, int, int, int]:
    """Count this request against both limits: (allowed, the reported limit's amount,
    remaining, reset time) — the first limit's, or the one that refused."""
    digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    limits = [(LIMIT_PER_IP, "ip:" + client_ip()), (LIMIT_PER_TOKEN, "tok:" + digest)]
    keys = [f"{KEY_PREFIX}{key}/{item.amount}/{item.get_expiry()}" for item, key in limits]
    args = [n for item, _ in limits for n in (item.get_expiry(), item.amount)]
    answer = None
    if REDIS is not None:
        try:
            answer = hits_in_redis(keys, args)
        except redis.RedisError as exc:
            log.warning("rate limits in memory: Redis failed (%s)", type(exc).__name__)
    if answer is None:
        answer = hits_in_memory(keys, args)
    counts = [(int(c), int(t)) for c, t in zip(answer[::2], answer[1::2], strict=True)]
    reported = len(counts) - 1 if counts[-1][0] > limits[len(counts) - 1][0].amount else 0
    item, (count, ttl) = limits[reported][0], counts[reported]
    reset = int(time.time() + max(ttl, 0) + 1)  # as flask-limiter writes X-RateLimit-Reset
    return count <= item.amount, item.amount, max(0, item.amount - count), reset


# --- answers ----------------------------------------------------------------------------------

PROBLEM = "application/problem+json"
NONCE = re.compile(r"^[A-Za-z0-9_-]{8,128}$")


def problem(status: int, code: str, detail: str | None = None, **extra: Any) -> Response:
    """The service's problem+json body for `status`."""
    phrase = HTTPStatus(status)
    body = {
        "type": "/problems/" + code,
        "title": phrase.phrase,
        "status": status,
        "detail": detail or phrase.description,
        "code": code,
        **extra,
    }
    return Response(json.dumps(body, sort_keys=True), status=status, mimetype=PROBLEM)


def body_errors(body: Any) -> list[dict[str, Any]]:
    """What the service's schema (ValidateIn) would refuse in `body`, as its `errors`."""
    if not isinstance(body, dict):
        return [{"loc": ["json"], "msg": "Input should be an object"}]
    errors = [
        {"loc": ["json", name], "msg": "Extra inputs are not permitted"}
        for name in body
        if name not in ("token", "client_id", "nonce")
    ]
    token, client_id, nonce = body.get("token"), body.get("client_id"), body.get("nonce")
    if not isinstance(token, str) or not 1 <= len(token) <= 4096:
        errors.append({"loc": ["json", "token"], "msg": "a string of 1 to 4096 characters"})
    if client_id is not None and (not isinstance(client_id, str) or not 1 <= len(client_id) <= 128):
        errors.append({"loc": ["json", "client_id"], "msg": "a string of 1 to 128 characters"})
    if nonce is not None and (not isinstance(nonce, str) or not NONCE.match(nonce)):
        errors.append({"loc": ["json", "nonce"], "msg": f"String should match {NONCE.pattern!r}"})
    return errors


def rfc3339(moment: datetime) -> str:
    """As the service's JSON writes a UTC time: 2026-12-01T20:00:41.549123Z."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def verdict_of(token: str, client_id: str | None, now: datetime) -> tuple[str, Any]:
    """The validation's code and the license row (None when there is none to show)."""
    try:
        claims = verified_claims(token)
    except jwt.InvalidTokenError:
        return "INVALID_TOKEN", None
    with engine.connect() as conn:
        row = conn.execute(BY_ID, {"license_id": claims["license_id"]}).first()
    if row is None:
        return "NOT_FOUND", claims["license_id"]
    if client_id is not None and client_id != row.client_id:
        return "CLIENT_MISMATCH", row.license_id
    if row.status != "active":
        return row.status.upper(), row
    if row.expires_at.replace(tzinfo=row.expires_at.tzinfo or UTC) <= now:
        return "EXPIRED", row
    return "VALID", row


def license_out(row: Any) -> dict[str, Any]:
    return {
        "license_id": row.license_id,
        "user_id": row.user_id,
        "client_id": row.client_id,
        "status": row.status,
        "created_at": rfc3339(row.created_at.replace(tzinfo=row.created_at.tzinfo or UTC)),
        "expires_at": rfc3339(row.expires_at.replace(tzinfo=row.expires_at.tzinfo or UTC)),
        "version": row.version,
    }


# --- metrics and the access log -----------------------------------------------------------------

# A registry of its own: the gunicorn master built the service's app (its start-up check)
# before forking, so the default registry already holds the service's metrics of these names.
REGISTRY = CollectorRegistry()
HTTP_REQUESTS = Counter(
    "http_requests_total",
    "HTTP requests by route and status",
    ["method", "route", "status"],
    registry=REGISTRY,
)
HTTP_LATENCY = Histogram(
    "http_request_duration_seconds",
    "HTTP request latency by route",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
RATE_LIMITED = Counter(
    "rate_limit_rejections_total", "Requests refused with 429", ["route"], registry=REGISTRY
)
VALIDATIONS = Counter(
    "license_validations_total", "License validations by code", ["code"], registry=REGISTRY
)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


class JsonLines(logging.Formatter):
    """A record as one JSON object: ts, level, logger, message, then its `fields`."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **getattr(record, "fields", {}),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


_handler = logging.StreamHandler()  # stderr: gunicorn's log, as the service's
_handler.setFormatter(JsonLines())
logging.getLogger().handlers[:] = [_handler]
logging.getLogger().setLevel(os.environ.get("LOG_LEVEL", "INFO").upper())
access_log = logging.getLogger("app.access")

# --- the app --------------------------------------------------------------------------------

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'; base-uri 'none'",
    "Cross-Origin-Resource-Policy": "same-origin",
}
HSTS = "max-age=63072000; includeSubDomains"

app = Flask(__name__)
HOPS = int(os.environ.get("TRUSTED_PROXIES", "0") or 0)
if HOPS > 0:
    app.wsgi_app = ProxyFix(app.wsgi_app, x_for=HOPS, x_proto=HOPS)  # type: ignore[method-assign]


@app.before_request
def start() -> None:
    incoming = request.headers.get("X-Request-ID", "")
    g.request_id = incoming if REQUEST_ID.match(incoming) else uuid.uuid4().hex
    g.started = time.perf_counter()


@app.after_request
def finish(response: Response) -> Response:
    """Security headers, the request id, metrics and one access-log line."""
    headers = response.headers
    wanted = dict(SECURITY_HEADERS)
    if request.path.startswith("/api/"):
        wanted["Cache-Control"] = "no-store"
    if request.is_secure:
        wanted["Strict-Transport-Security"] = HSTS
    for name, value in wanted.items():
        if name not in headers:
            headers[name] = value
    request_id = g.get("request_id") or uuid.uuid4().hex
    headers["X-Request-ID"] = request_id
    duration = time.perf_counter() - g.get("started", time.perf_counter())
    route = request.url_rule.rule if request.url_rule is not None else "<unmatched>"
    method = request.method if request.method in METHODS else "other"
    status = response.status_code
    HTTP_REQUESTS.labels(method, route, str(status)).inc()
    HTTP_LATENCY.labels(method, route).observe(duration)
    if status == 429:
        RATE_LIMITED.labels(route).inc()
    fields = {
        "request_id": request_id,
        "method": request.method,
        "route": route,
        "path": request.path,
        "status": status,
        "duration_ms": round(duration * 1000, 2),
        "user_id": None,  # neither route takes a Bearer token
        "ip": request.remote_addr,
    }
    access_log.info("%s %s %s", request.method, route, status, extra={"fields": fields})
    return response


@app.errorhandler(HTTPException)
def http_error(error: HTTPException) -> Response:
    """404, 405, a body that is not JSON…: problem+json, as the service answers them."""
    code = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}.get(
        error.code or 500, "error"
    )
    return problem(error.code or 500, code)


@app.post("/api/v1/licenses/validate")
def validate() -> Any:
    if not request.is_json:
        return problem(415, "unsupported_media_type", "Send the body as JSON.")
    body = request.get_json()
    errors = body_errors(body)
    if errors:
        return problem(
            422, "validation_error", "The request body or parameters are invalid.", errors=errors
        )
    allowed, amount, remaining, reset = hit_limits(body["token"])
    limit_headers = {
        "X-RateLimit-Limit": str(amount),
        "X-RateLimit-Remaining": str(remaining),
        "X-RateLimit-Reset": str(reset),
    }
    if not allowed:
        refused = problem(429, "rate_limited")
        refused.headers.update(limit_headers)
        refused.headers["Retry-After"] = str(int(reset - time.time()))
        return refused
    now = datetime.now(UTC)
    client_id, nonce = body.get("client_id"), body.get("nonce")
    code, found = verdict_of(body["token"], client_id, now)
    VALIDATIONS.labels(code).inc()
    license_id = found if isinstance(found, str) or found is None else found.license_id
    answer = jsonify(
        valid=code == "VALID",
        code=code,
        license=None if isinstance(found, str) or found is None else license_out(found),
        checked_at=rfc3339(now),
        token=None,
        verdict=sign_verdict(code, license_id, client_id, nonce, now),
    )
    answer.headers.update(limit_headers)
    return answer


@app.get("/healthz")
def healthz() -> Any:
    """Liveness, as the service answers it: {"status": "ok"}."""
    return {"status": "ok"}


@app.get("/metrics")
def metrics() -> Response:
    """Every worker's metrics (multi-process mode), else this process's."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
    return Response(generate_latest(REGISTRY), content_type=CONTENT_TYPE_LATEST)
