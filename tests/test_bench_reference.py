"""The benchmark's featured reference (bench/reference/validate_featured.py): the minimal
validate with the service's features written bare, and its /healthz through the same
features. Its figures only mean something if it does what the service does: a VALID answer
with a verdict that verifies, the headers, the access log, the metrics, and a 429 once a
limit is spent; the service's liveness answer with the same headers, log line and metrics."""

from __future__ import annotations

import json
import uuid

import jwt
import pytest

from app.auth.licensing.signing import VERDICT_TYP, KeySet
from tests.helpers import gunicorn_server, http
from tests.test_licenses import account, activate

pytestmark = pytest.mark.slow
FEATURED = "bench.reference.validate_featured:app"
SECURITY = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'; base-uri 'none'",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Cache-Control": "no-store",
}


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_featured_reference_validates_signs_limits_and_logs(
    client, database_url, signing_key_file, redis_url
):
    lic = activate(client, account(client)).get_json()
    keys = KeySet.from_files([signing_key_file])
    body = {"token": lic["token"], "client_id": lic["client_id"], "nonce": "nonce-0123456789"}
    out: list[str] = []
    with gunicorn_server(
        database_url,
        workers=2,
        output=out,
        app=FEATURED,
        LICENSE_SIGNING_KEYS=signing_key_file,
        REDIS_URL=redis_url,
        RATELIMIT_KEY_PREFIX=f"test-featured-{uuid.uuid4().hex[:8]}",
        RATELIMIT_VALIDATE_PER_TOKEN="3/minute",
        RATELIMIT_VALIDATE_PER_IP="100/minute",
        LOG_LEVEL="INFO",
        TRUSTED_PROXIES="1",
    ) as base:
        url = base + "/api/v1/licenses/validate"
        answers = [
            http("POST", url, body, {"X-Request-ID": "req-ok-1", "X-Forwarded-For": "198.51.100.7"})
        ]
        answers += [http("POST", url, body, {"X-Request-ID": "bad id;"}) for _ in range(3)]
        forged = http("POST", url, {"token": answers[0][1]["verdict"]})  # a verdict as a token
        unsent = http("POST", url, {"token": lic["token"], "nonce": "short"})
        metrics = _metrics_text(base)

    (status, answer, headers), *rest = answers
    assert status == 200
    assert answer["valid"] is True and answer["code"] == "VALID"
    assert answer["license"]["license_id"] == lic["license_id"]
    assert answer["license"]["user_id"] == lic["user_id"]
    assert answer["checked_at"].endswith("Z") and answer["token"] is None
    # The verdict verifies with the service's public key and repeats what the app sent.
    header = jwt.get_unverified_header(answer["verdict"])
    assert header == {"alg": "EdDSA", "kid": keys.signing.kid, "typ": VERDICT_TYP}
    claims = jwt.decode(
        answer["verdict"], keys.signing.public, algorithms=["EdDSA"], issuer="licensing-platform"
    )
    assert claims["code"] == "VALID" and claims["license_id"] == lic["license_id"]
    assert (claims["client_id"], claims["nonce"]) == (lic["client_id"], "nonce-0123456789")
    assert claims["exp"] - claims["iat"] == 300
    assert {k: headers.get(k) for k in SECURITY} == SECURITY
    assert headers["X-Request-ID"] == "req-ok-1"
    assert (headers["X-RateLimit-Limit"], headers["X-RateLimit-Remaining"]) == ("100", "99")
    assert int(headers["X-RateLimit-Reset"]) > 0
    assert "Retry-After" not in headers
    # Past the per-token limit (3 a minute): the fourth is refused, as the service does.
    assert [s for s, _, _ in rest] == [200, 200, 429]
    _, refused, refused_headers = rest[-1]
    assert refused["code"] == "rate_limited" and refused["status"] == 429
    assert refused_headers["Content-Type"] == "application/problem+json"
    assert refused_headers["X-RateLimit-Limit"] == "3"
    assert refused_headers["X-RateLimit-Remaining"] == "0"
    assert 0 < int(refused_headers["Retry-After"]) <= 61
    assert {k: refused_headers.get(k) for k in SECURITY} == SECURITY
    made_up = rest[0][2]["X-Request-ID"]  # a malformed incoming id is replaced
    assert made_up != "bad id;" and len(made_up) == 32
    assert forged[0] == 200 and forged[1]["code"] == "INVALID_TOKEN"
    assert forged[1]["license"] is None
    assert unsent[0] == 422 and unsent[1]["code"] == "validation_error"
    # One JSON access-log line per request, with the service's fields.
    lines = [json.loads(x) for x in out[0].splitlines() if x.startswith("{")]
    access = [x for x in lines if x["logger"] == "app.access"]
    first = next(x for x in access if x["request_id"] == "req-ok-1")
    assert first["message"] == "POST /api/v1/licenses/validate 200"
    assert list(first)[4:] == [
        "request_id",
        "method",
        "route",
        "path",
        "status",
        "duration_ms",
        "user_id",
        "ip",
    ]
    assert first["ip"] == "198.51.100.7"  # one trusted hop of X-Forwarded-For
    assert [x["status"] for x in access].count(429) == 1
    # Metrics summed over both workers.
    assert (
        'http_requests_total{method="POST",route="/api/v1/licenses/validate",status="200"} 4.0'
        in metrics
    )
    assert 'license_validations_total{code="VALID"} 3.0' in metrics
    assert 'rate_limit_rejections_total{route="/api/v1/licenses/validate"} 1.0' in metrics
    assert "http_request_duration_seconds_bucket" in metrics


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_featured_reference_serves_healthz_with_the_features(database_url, signing_key_file):
    """GET /healthz as the service answers it (app/operations/health.py): its body, the
    security headers (no Cache-Control outside /api/), the request id, one access-log line and
    the request counter and latency histogram; no rate limit (the service's has none)."""
    out: list[str] = []
    with gunicorn_server(
        database_url,
        workers=2,
        output=out,
        app=FEATURED,
        LICENSE_SIGNING_KEYS=signing_key_file,
        LOG_LEVEL="INFO",
        TRUSTED_PROXIES="1",
    ) as base:
        ok = http(
            "GET",
            base + "/healthz",
            None,
            {"X-Request-ID": "req-hz-1", "X-Forwarded-For": "198.51.100.9"},
        )
        hostile = http("GET", base + "/healthz", None, {"X-Request-ID": "x" * 65})
        metrics = _metrics_text(base)

    status, answer, headers = ok
    assert (status, answer) == (200, {"status": "ok"})
    assert headers["Content-Type"] == "application/json"
    security = {k: v for k, v in SECURITY.items() if k != "Cache-Control"}
    assert {k: headers.get(k) for k in security} == security
    assert "Cache-Control" not in headers
    assert headers["X-Request-ID"] == "req-hz-1"
    assert not [k for k in headers if k.startswith("X-RateLimit") or k == "Retry-After"]
    assert hostile[0] == 200
    made_up = hostile[2]["X-Request-ID"]  # an over-long incoming id is replaced
    assert made_up != "x" * 65 and len(made_up) == 32
    lines = [json.loads(x) for x in out[0].splitlines() if x.startswith("{")]
    access = [x for x in lines if x["logger"] == "app.access"]
    first = next(x for x in access if x["request_id"] == "req-hz-1")
    assert first["message"] == "GET /healthz 200"
    assert (first["route"], first["path"], first["status"]) == ("/healthz", "/healthz", 200)
    assert (first["user_id"], first["ip"]) == (None, "198.51.100.9")
    # The server counts as up once /healthz answers: the harness's probes are counted too.
    served = _sample(metrics, 'http_requests_total{method="GET",route="/healthz",status="200"}')
    timed = _sample(metrics, 'http_request_duration_seconds_count{method="GET",route="/healthz"}')
    assert served >= 2 and timed == served


def _sample(metrics: str, name: str) -> float:
    """The value of one sample (name and labels as written) in a Prometheus text page."""
    values = [line.rpartition(" ")[2] for line in metrics.splitlines() if line.startswith(name)]
    assert len(values) == 1, f"{name}: {values}"
    return float(values[0])


def _metrics_text(base: str) -> str:
    import urllib.request

    with urllib.request.urlopen(base + "/metrics", timeout=10) as response:  # noqa: S310
        return response.read().decode()


def _run(rps: float, cpu_us: float) -> dict:
    """One wrk run as the bench records it (what the ratios read)."""
    return {"rps": rps, "cpu_us": cpu_us}


def _featured_server():
    """The featured reference's server, as the main phase names it, with a clean log."""
    from bench.server import Server

    featured = Server("featured_validate-sqlite", {}, app="bench.reference.validate_featured:app")
    featured.log_problems = lambda: {"tracebacks": 0}  # type: ignore[method-assign]
    return featured


def test_featured_ratios_per_round_beside_the_validate_target():
    """The service's SQLite validate over the featured validate, and the featured over the
    minimal, each a median of per-round ratios; beside the validate target for information
    (it is still judged against the minimal alone)."""
    from bench.phases import featured_summary
    from bench.report import targets

    runs = [
        {
            ("service-sqlite", "validate"): _run(300, 5000),
            ("featured_validate-sqlite", "validate"): _run(400, 3000),
            ("minimal_validate-sqlite", "validate"): _run(800, 2000),
        },
        {
            ("service-sqlite", "validate"): _run(330, 5000),
            ("featured_validate-sqlite", "validate"): _run(300, 4000),
            ("minimal_validate-sqlite", "validate"): _run(600, 2000),
        },
    ]
    sqlite = {
        "scenarios": {
            "validate": {"x_minimal": 0.45, "p99_ms": 60.0, "rps": 315, "errors": 0, "not_valid": 0}
        }
    }
    featured = _featured_server()
    summary = featured_summary(sqlite, "service-sqlite", featured, "minimal_validate-sqlite", runs)
    assert summary["x_minimal_rounds"] == [0.5, 0.5]
    assert summary["x_minimal"] == 0.5 and summary["cpu_x_minimal"] == 0.583
    assert sqlite["scenarios"]["validate"]["x_featured_rounds"] == [0.75, 1.1]
    assert summary["service_x_featured"] == 0.925
    target = targets({"sqlite": sqlite, "featured": summary})[
        "validate SQLite >= 1.0 x minimal validate, p99 <= 10 ms"
    ]
    assert (target["x_featured"], target["featured_x_minimal"]) == (0.925, 0.5)
    assert target["met"] is False


def test_featured_healthz_ratios_per_round_beside_the_healthz_target():
    """The service's healthz over the featured healthz (the healthz row's xfeat), and the
    featured healthz over Flask hello, medians of per-round ratios; beside the healthz
    target for information (it is still judged against hello alone)."""
    from bench.phases import featured_healthz_summary
    from bench.report import targets

    runs = [
        {
            ("service-sqlite", "healthz"): _run(1200, 1000),
            ("featured_validate-sqlite", "healthz"): _run(1500, 800),
            ("hello", "healthz"): _run(2000, 500),
        },
        {
            ("service-sqlite", "healthz"): _run(1100, 1000),
            ("featured_validate-sqlite", "healthz"): _run(1000, 1000),
            ("hello", "healthz"): _run(2500, 500),
        },
    ]
    sqlite = {"scenarios": {"healthz": {"x_hello": 0.52, "rps": 1150, "errors": 0}}}
    featured = _featured_server()
    summary = featured_healthz_summary(sqlite, "service-sqlite", featured, "hello", runs)
    assert summary["x_hello_rounds"] == [0.75, 0.4]
    assert summary["x_hello"] == 0.575 and summary["cpu_x_hello"] == 0.562
    assert sqlite["scenarios"]["healthz"]["x_featured_rounds"] == [0.8, 1.1]
    assert summary["service_x_featured"] == 0.95
    assert sqlite["scenarios"]["healthz"]["cpu_x_featured"] == 0.9
    target = targets({"sqlite": sqlite, "featured_healthz": summary})[
        "healthz >= 0.8 x Flask hello"
    ]
    assert (target["x_featured"], target["featured_x_hello"]) == (0.95, 0.575)
    assert target["x_hello"] == 0.52 and target["met"] is False
