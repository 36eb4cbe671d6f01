"""/healthz answered at the WSGI edge (ADR 0017): the same answer, log line and metrics as
Flask gives, and Flask's own answer wherever the edge steps aside."""

from __future__ import annotations

import logging
import re

import pytest

from app import create_app
from app.http.edge import EXTENSION

PEER = "10.9.9.9"  # the trusted proxy
ID = re.compile(r"[0-9a-f]{32}")
SERVED = [  # answered at the edge
    ("GET", {}),
    ("HEAD", {}),
    ("GET", {"X-Request-ID": "nginx-abc.123"}),
    ("GET", {"X-Request-ID": "bad id <script>"}),
    ("GET", {"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"}),
    ("HEAD", {"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"}),
    ("GET", {"Authorization": "Bearer not-a-token", "Origin": "https://evil.example"}),
]
CASES = [
    *SERVED,
    # what Flask's URL map refuses before routing (400), found by the outside test: host
    # names IDNA cannot encode, websocket upgrades, ws/wss schemes from the proxy
    *[("GET", {"Host": host}) for host in (".a", "a" * 64, "..", "a..b", ".", "a.b.")],
    *[("GET", {"Host": host}) for host in ("EXAMPLE.com:8080", "[::1]:80", "127.0.0.1")],
    ("GET", {"Connection": "Upgrade", "Upgrade": "websocket"}),
    ("HEAD", {"Connection": "keep-alive, Upgrade", "Upgrade": "WebSocket"}),
    ("GET", {"Connection": "Upgrade", "Upgrade": "h2c"}),
    *[("GET", {"X-Forwarded-Proto": proto}) for proto in ("ws", "wss", "http,wss", "HTTPS")],
]


@pytest.fixture
def backend():
    return "sqlite"


@pytest.fixture
def proxied(app_config):
    app = create_app({**app_config, "TRUSTED_PROXIES": 1, "TRUSTED_PROXY_ADDRESSES": PEER})
    yield app
    app.extensions["db"].dispose()


def answer(app, method, headers, query=""):
    response = app.test_client().open(
        "/healthz" + query, method=method, headers=headers, environ_base={"REMOTE_ADDR": PEER}
    )
    request_id = response.headers["X-Request-ID"]
    rest = [(k, v) for k, v in response.headers.items() if k != "X-Request-ID"]
    return response.status_code, rest, response.get_data(), request_id


def flask_answers(app):
    """The edge stepped aside (what it does when the app limits every route)."""
    edge = app.extensions[EXTENSION]
    edge.answers = {}
    return edge


@pytest.mark.parametrize("query", ["", "?probe=1"])
def test_the_edge_answers_as_flask_does_header_by_header(proxied, query):
    at_edge = [answer(proxied, m, h, query) for m, h in CASES]
    flask_answers(proxied)
    by_flask = [answer(proxied, m, h, query) for m, h in CASES]
    for (method, headers), edge, flask in zip(CASES, at_edge, by_flask, strict=True):
        assert edge[:3] == flask[:3], (method, headers)
        if headers.get("Host") == ".a":
            assert edge[0] == 400  # Flask's answer: the case is what it says
        if headers.get("X-Request-ID") == "nginx-abc.123":
            assert edge[3] == flask[3] == "nginx-abc.123"
        else:
            assert ID.fullmatch(edge[3]) and ID.fullmatch(flask[3])
    # the answers themselves, once: JSON, HSTS over HTTPS only, no body for HEAD
    status, headers, body, _ = at_edge[0]
    assert (status, body) == (200, b'{"status":"ok"}\n')
    assert dict(headers)["Content-Type"] == "application/json"
    assert "Strict-Transport-Security" not in dict(headers)
    assert "Strict-Transport-Security" in dict(at_edge[4][1])
    assert at_edge[1][2] == b"" and dict(at_edge[1][1])["Content-Length"] == "16"


def test_the_edge_logs_and_counts_as_flask_does(proxied, caplog):
    def served(method, headers):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="app.access"):
            answer(proxied, method, headers)
        (record,) = [r for r in caplog.records if r.name == "app.access"]
        fields = dict(record.fields)
        assert 0 <= fields.pop("duration_ms") < 60_000
        return record.getMessage(), fields

    def count(name, **labels):
        text = proxied.test_client().get("/metrics").get_data(as_text=True)
        want = [f'{k}="{v}"' for k, v in labels.items()]
        for line in text.splitlines():
            if line.startswith(name + "{") and all(w in line for w in want):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    cases = [(m, {**h, "X-Request-ID": f"probe-{i}"}) for i, (m, h) in enumerate(SERVED)]
    requests = ("http_requests_total", {"method": "GET", "route": "/healthz", "status": "200"})
    latency = ("http_request_duration_seconds_count", {"method": "HEAD", "route": "/healthz"})
    before = count(requests[0], **requests[1]), count(latency[0], **latency[1])
    at_edge = [served(m, h) for m, h in cases]
    after = count(requests[0], **requests[1]), count(latency[0], **latency[1])
    heads = sum(m == "HEAD" for m, _ in cases)
    assert after == (before[0] + len(cases) - heads, before[1] + heads)
    flask_answers(proxied)
    assert [served(m, h) for m, h in cases] == at_edge
    assert at_edge[4][1] == {
        "request_id": "probe-4",
        "method": "GET",
        "route": "/healthz",
        "path": "/healthz",
        "status": 200,
        "user_id": None,
        "ip": "203.0.113.9",  # the client nginx named, not the proxy
    }
    assert at_edge[0][0] == "GET /healthz 200"


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("POST", "/healthz", 405), ("DELETE", "/healthz", 405), ("GET", "/healthz/", 404)],
)
def test_other_methods_and_paths_are_flasks(client, method, path, status):
    response = client.open(path, method=method)
    assert response.status_code == status
    assert response.headers["Content-Type"] == "application/problem+json"


def test_options_is_flasks(client):
    response = client.open("/healthz", method="OPTIONS")
    assert response.status_code == 200
    assert set(response.headers["Allow"].split(", ")) == {"GET", "HEAD", "OPTIONS"}


def test_with_limits_on_every_route_flask_serves_healthz_and_counts_it(app_config):
    app = create_app({**app_config, "RATELIMIT_ENABLED": True, "RATELIMIT_APPLICATION": "2/minute"})
    try:
        client = app.test_client()
        statuses = [client.get("/healthz").status_code for _ in range(3)]
        assert statuses == [200, 200, 429]
        assert app.extensions[EXTENSION].answers == {}
    finally:
        app.extensions["db"].dispose()
