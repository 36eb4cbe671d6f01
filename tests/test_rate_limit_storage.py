"""The in-memory rate-limit storage: fixed windows that count and expire like limits' own,
without starting a timer thread on every hit (the cost bench/README.md measured), built
on limits' public `Storage` interface. Time is an injected clock: no test waits."""

from __future__ import annotations

import threading

import pytest
from limits import parse
from limits.strategies import FixedWindowRateLimiter

from app.http.limits import CounterStorage


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_counts_expire_and_no_thread_is_started_per_hit(monkeypatch):
    clock = Clock()
    storage = CounterStorage("lazymemory://", clock=clock)
    started = []
    real_start = threading.Thread.start
    monkeypatch.setattr(
        threading.Thread, "start", lambda self: started.append(self) or real_start(self)
    )
    for _ in range(500):
        storage.incr("k", expiry=1)
    assert storage.get("k") == 500
    assert storage.get_expiry("k") == clock.now + 1
    assert started == []  # limits' MemoryStorage starts a timer on most of these hits
    clock.now += 1
    assert storage.get("k") == 0  # expired on read
    storage.incr("other", expiry=60)  # a hit after the sweep interval sweeps expired keys
    assert "k" not in storage.counts and "k" not in storage.expirations
    assert storage.incr("k", expiry=1) == 1  # a new window


def test_limits_strategy_allows_then_refuses_then_allows_again():
    clock = Clock()
    storage = CounterStorage("lazymemory://", clock=clock)
    limiter = FixedWindowRateLimiter(storage)
    limit = parse("3/minute")
    assert [limiter.hit(limit, "ip", "1.2.3.4") for _ in range(4)] == [True, True, True, False]
    assert limiter.hit(limit, "ip", "5.6.7.8")  # another key has its own window
    stats = limiter.get_window_stats(limit, "ip", "1.2.3.4")
    assert stats.remaining == 0 and stats.reset_time == clock.now + 60
    clock.now += 60
    assert limiter.hit(limit, "ip", "1.2.3.4")
    storage.clear(limiter_key := limit.key_for("ip", "1.2.3.4"))
    assert storage.get(limiter_key) == 0
    assert limiter.hit(limit, "ip", "5.6.7.8")
    storage.reset()
    assert storage.get(limit.key_for("ip", "5.6.7.8")) == 0


def test_the_app_uses_it_without_redis(app_config):
    from app import create_app
    from app.http.limits import limiter

    application = create_app({**app_config, "RATELIMIT_ENABLED": True})
    assert application.config["RATELIMIT_STORAGE_URI"] == "lazymemory://"
    application.test_client().post("/api/v1/licenses/validate", json={"token": "x"})
    assert isinstance(limiter.storage, CounterStorage)
    application.extensions["db"].dispose()


# Three validations a minute from one address (the per-token limit out of the way).
THREE_VALIDATIONS = {
    "RATELIMIT_ENABLED": True,
    "RATELIMIT_VALIDATE_PER_TOKEN": "1000/minute",
    "RATELIMIT_VALIDATE_PER_IP": "3/minute",
}


def test_redis_headers_are_those_of_the_counter_and_429_follows(app_config, redis_url):
    """With limits in Redis, each answer's rate-limit headers are what Redis holds for the
    limit just after the hit (count and TTL come back with the hit itself: one round trip
    per limit, bench/README.md), and the limit still refuses once spent."""
    import time

    import redis

    from app import create_app
    from app.http.limits import limiter
    from app.http.redis_limits import CountedRedisStorage

    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter("*LIMITS*"):  # no counts left by an earlier run
        client.delete(key)
    app = create_app({**app_config, **THREE_VALIDATIONS, "RATELIMIT_STORAGE_URI": redis_url})
    http = app.test_client()
    body = {"token": "not-a-token", "client_id": "laptop"}
    try:
        answers = []
        for _ in range(4):
            answers.append(http.post("/api/v1/licenses/validate", json=body))
            (key,) = [k for k in client.scan_iter("*LIMITS*") if b"tok:" not in k]
            held, ttl = int(client.get(key)), client.ttl(key)
            answer = answers[-1]
            assert answer.headers["X-RateLimit-Limit"] == "3"
            assert int(answer.headers["X-RateLimit-Remaining"]) == max(0, 3 - held)
            assert 0 < ttl <= 60
            assert abs(int(answer.headers["X-RateLimit-Reset"]) - (time.time() + ttl)) <= 2
        assert isinstance(limiter.storage, CountedRedisStorage)
        assert [a.status_code for a in answers] == [200, 200, 200, 429]
        assert [a.headers["X-RateLimit-Remaining"] for a in answers] == ["2", "1", "0", "0"]
        assert 0 < int(answers[3].headers["Retry-After"]) <= 61
        assert "Retry-After" not in answers[0].headers
        with app.app_context():  # outside a request the counter is read from Redis
            assert limiter.storage.get(key.decode().removeprefix("LIMITS:")) == 4
    finally:
        client.close()
        app.extensions["db"].dispose()


def _limits_in_redis(app_config, redis_url, **limits):
    """An app with these limits in Redis (no counts left by an earlier run), its test
    client, and a Redis client to read the counters with."""
    import redis

    from app import create_app

    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter("*LIMITS*"):
        client.delete(key)
    config = {**app_config, "RATELIMIT_ENABLED": True, "RATELIMIT_STORAGE_URI": redis_url}
    app = create_app({**config, **limits})
    return app, app.test_client(), client


def _round_trips(monkeypatch):
    """The commands sent to Redis, by request (appended to): on any connection, the
    storage's own or one of its pool's."""
    from redis.connection import AbstractConnection

    sent: list[str] = []
    real = AbstractConnection.send_command
    monkeypatch.setattr(
        AbstractConnection,
        "send_command",
        lambda self, *a, **k: sent.append(a[0]) or real(self, *a, **k),
    )
    return sent


def _validations(http, client, count, sent):
    """`count` validations of one token from one address: per answer its status, its
    rate-limit headers and the commands it sent to Redis; then every counter Redis holds."""
    body = {"token": "not-a-token", "client_id": "laptop"}
    answers = []
    for _ in range(count):
        sent.clear()
        answer = http.post("/api/v1/licenses/validate", json=body)
        headers = [answer.headers.get(h) for h in ("X-RateLimit-Limit", "X-RateLimit-Remaining")]
        answers.append((answer.status_code, headers, "Retry-After" in answer.headers, list(sent)))
    counts = {k.decode(): int(client.get(k)) for k in client.scan_iter("*LIMITS*")}
    for key in counts:
        client.delete(key)
    return answers, counts


# (per address, per token): the statuses of five validations, the counts Redis then holds
# per token and per address, and the round trips each validation costs with one hit per
# limit. The address's limit is checked first, as declared (limits of one window are
# taken in the order declared); a refusal by it stops there: the token's is not spent.
REFUSALS = [
    ("2/minute", "1000/minute", [200, 200, 429, 429, 429], (2, 5), [2, 2, 1, 1, 1]),
    ("1000/minute", "2/minute", [200, 200, 429, 429, 429], (5, 5), [2, 2, 2, 2, 2]),
    ("3/minute", "3/minute", [200, 200, 200, 429, 429], (3, 5), [2, 2, 2, 1, 1]),
]


@pytest.mark.parametrize("per_ip, per_token, statuses, counts, trips", REFUSALS)
def test_both_limits_of_a_request_in_one_round_trip(
    app_config, redis_url, monkeypatch, per_ip, per_token, statuses, counts, trips
):
    """Both limits of a validation are hit in one script (one EVALSHA per request instead
    of one per limit), with the very answers, headers and counts of one hit per limit: the
    address's limit, checked first, refusing leaves the token's counter alone."""
    from app.http.limits import limiter

    app, http, client = _limits_in_redis(
        app_config,
        redis_url,
        RATELIMIT_VALIDATE_PER_IP=per_ip,
        RATELIMIT_VALIDATE_PER_TOKEN=per_token,
    )
    try:
        sent = _round_trips(monkeypatch)
        assert limiter.planner is not None
        _validations(http, client, 1, sent)  # the scripts loaded
        # and the single hit's too, which that request did not run (on a Redis that never
        # ran it, its first EVALSHA would be refused and the script loaded: two more trips)
        limiter.storage.lua_hit.sha = limiter.storage.get_connection().script_load(
            limiter.storage.lua_hit.script
        )
        one_trip, one_trip_counts = _validations(http, client, 5, sent)
        limiter.planner = None  # flask-limiter's own evaluation: each limit hit on its own
        per_limit, per_limit_counts = _validations(http, client, 5, sent)
    finally:
        client.close()
        app.extensions["db"].dispose()
    assert [a[:3] for a in one_trip] == [a[:3] for a in per_limit]
    assert one_trip_counts == per_limit_counts
    assert [a[0] for a in one_trip] == statuses
    assert [a[3] for a in one_trip] == [["EVALSHA"]] * 5
    assert [len(a[3]) for a in per_limit] == trips
    (token_key,) = [k for k in one_trip_counts if "/tok:" in k]
    (ip_key,) = [k for k in one_trip_counts if k != token_key]
    assert (one_trip_counts[token_key], one_trip_counts[ip_key]) == counts


def _limited_requests(app, http):
    """A request to every route with limits (a form, a JSON body; anonymous, with an
    access token, with a refresh token), and the account whose tokens they carry:
    (path, method, token kind, body) each."""
    from flask_limiter.util import get_qualified_name

    from app.http.limits import limiter
    from tests.helpers import sign_up

    account = sign_up(http)
    with app.app_context():
        limited = [
            rule
            for rule in app.url_map.iter_rules()
            if limiter.limit_manager.decorated_limits(
                get_qualified_name(app.view_functions[rule.endpoint])
            )
        ]
    assert {r.endpoint for r in limited} >= {"auth.validate", "auth.login", "auth.register"}
    requests = []
    for rule in limited:
        path = rule.build({arg: "x" for arg in rule.arguments}, append_unknown=False)[1]
        method = "POST" if "POST" in rule.methods else sorted(rule.methods - {"HEAD"})[0]
        fields = {"email": "ada@example.com", "token": "t", "password": "p"}
        for kind, body in [(None, {"data": fields}), (None, {"json": fields})] + [
            (kind, {"json": fields}) for kind in ("access_token", "refresh_token")
        ]:
            requests.append((path, method, kind, body))
    return requests, account


def _headers(app, account, kind):
    """The Authorization header of a new token pair's `kind` for `account` (a family of its
    own: a refresh token spent or replayed elsewhere revokes nothing here), or none."""
    from types import SimpleNamespace

    from app.auth.accounts import tokens
    from tests.helpers import bearer

    if kind is None:
        return {}
    with app.app_context():
        pair = tokens.issue_pair(SimpleNamespace(user_id=account.user_id, role="user"))
    return bearer(pair[kind])


RATE_HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset", "Retry-After")


@pytest.mark.parametrize("rate", ["2/minute", "1000/minute;2/hour"])
def test_every_limited_route_answers_as_flask_limiter_evaluates_it(
    app_config, redis_url, monkeypatch, rate
):
    """The limiter's one-call path (`RouteLimiter._check_request_limit` with a plan) and
    flask-limiter's own evaluation, limit by limit, make the same hits (key, expiry, cost,
    in order, none after a refusal) and give the same answers — status and rate-limit
    headers — on every route with limits, with every kind of request, up to and past
    each limit (every rate setting at `rate`)."""
    from app.console.web import csrf
    from app.http.limits import limiter
    from app.settings.groups import RateLimits

    monkeypatch.setattr(csrf, "protect", lambda: None)  # the console's forms reach their limits
    rates = {name: rate for name in RateLimits.route_limits()}
    app, http, client = _limits_in_redis(app_config, redis_url, **rates)
    storage = limiter.storage
    made = []
    real_incr, real_hit_all = storage.incr, storage.hit_all
    storage.incr = lambda key, expiry, amount=1: (
        made.append((key, expiry, amount)) or real_incr(key, expiry, amount)
    )
    storage.hit_all = lambda hits: _made_all(made, hits, real_hit_all(hits))
    planner = limiter.planner
    assert planner is not None
    try:
        requests, account = _limited_requests(app, http)
        hit, refused = set(), set()
        for path, method, kind, body in requests:
            answers = {}
            for side, plan in (("one call", planner), ("flask-limiter", None)):
                for key in client.scan_iter("*LIMITS*"):
                    client.delete(key)
                limiter.planner = plan
                headers = _headers(app, account, kind)
                made.clear()
                seen = []
                for _ in range(3):  # past a limit of 2
                    answer = http.open(path, method=method, headers=headers, **body)
                    values = [answer.headers.get(h) for h in RATE_HEADERS]
                    seen.append((answer.status_code, values[:2], values[2:], list(made)))
                    made.clear()
                answers[side] = seen
            one_call, own = answers["one call"], answers["flask-limiter"]
            where = f"{method} {path} {kind} {body}"
            # (a refresh token is spent by its first use: the status beside 429 may differ)
            assert [(a[0] == 429, a[1]) for a in one_call] == [(a[0] == 429, a[1]) for a in own], (
                where
            )
            assert [a[3] for a in one_call] == [a[3] for a in own], where
            for (*_, (reset, retry), _), (*_, (reset_own, retry_own), _) in zip(
                one_call, own, strict=True
            ):
                assert (reset is None) == (reset_own is None), where
                assert (retry is None) == (retry_own is None), where
                if reset is not None:
                    assert abs(int(reset) - int(reset_own)) <= 2, where
            if any(a[3] for a in one_call):
                hit.add(path)
            if 429 in [a[0] for a in one_call]:
                refused.add(path)
        assert hit == {path for path, *_ in requests}  # every route's limits were hit
        assert {"/api/v1/licenses/validate", "/api/v1/auth/login"} <= refused
    finally:
        limiter.planner = planner
        client.close()
        app.extensions["db"].dispose()


def _made_all(made, hits, answer):
    made.extend(hit[:3] for hit, _ in zip(hits, answer, strict=False))
    return answer


def test_a_storage_failing_in_the_one_call_falls_back_to_memory(app_config, redis_url, monkeypatch):
    """Redis failing on a request's hits (one call): the request is answered, and from then
    on the limits count in memory — what flask-limiter does when its own hit fails."""
    import redis

    from app.http.limits import limiter

    monkeypatch.setattr(limiter, "_storage_dead", False)  # the limiter's, left as it was
    app, http, client = _limits_in_redis(app_config, redis_url, **THREE_VALIDATIONS)

    def gone(*_args, **_kwargs):
        raise redis.ConnectionError("gone")

    monkeypatch.setattr(limiter.storage, "run", gone)
    body = {"token": "not-a-token", "client_id": "laptop"}
    try:
        answers = [http.post("/api/v1/licenses/validate", json=body) for _ in range(4)]
        assert limiter._storage_dead is True
    finally:
        client.close()
        app.extensions["db"].dispose()
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert [a.headers["X-RateLimit-Remaining"] for a in answers] == ["2", "1", "0", "0"]


def test_limits_fall_back_to_memory_when_redis_does_not_answer(app_config, monkeypatch):
    """Redis unreachable from the start: the limits count in memory, as before."""
    from app import create_app
    from app.http.limits import limiter

    monkeypatch.setattr(limiter, "_storage_dead", False)  # the limiter's, left as it was

    app = create_app(
        {
            **app_config,
            **THREE_VALIDATIONS,
            "RATELIMIT_ENABLED": True,
            "RATELIMIT_STORAGE_URI": "redis://127.0.0.1:9/0",  # nothing listens there
        }
    )
    http = app.test_client()
    body = {"token": "not-a-token", "client_id": "laptop"}
    try:
        answers = [http.post("/api/v1/licenses/validate", json=body) for _ in range(4)]
    finally:
        app.extensions["db"].dispose()
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert [a.headers["X-RateLimit-Remaining"] for a in answers] == ["2", "1", "0", "0"]


def test_two_workers_share_the_counts_of_one_round_trip(database_url, redis_url, signing_key_file):
    """Under gunicorn with two workers, validations from one address spread over both count
    in Redis as one: exactly the limit's amount answered, the rest refused, and Redis
    holding every hit of the address's limit and the token's hits of those let through."""
    from concurrent.futures import ThreadPoolExecutor

    import redis

    from tests.helpers import gunicorn_server, http

    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter("*LIMITS*"):
        client.delete(key)
    env = {
        "LICENSE_SIGNING_KEYS": signing_key_file,
        "REDIS_URL": redis_url,
        "RATELIMIT_ENABLED": "true",
        "RATELIMIT_VALIDATE_PER_TOKEN": "1000/minute",
        "RATELIMIT_VALIDATE_PER_IP": "5/minute",
    }
    body = {"token": "not-a-token", "client_id": "laptop"}
    try:
        with gunicorn_server(database_url, workers=2, **env) as base:
            with ThreadPoolExecutor(4) as pool:
                answers = list(
                    pool.map(
                        lambda _: http("POST", f"{base}/api/v1/licenses/validate", body), range(12)
                    )
                )
        counts = {k.decode(): int(client.get(k)) for k in client.scan_iter("*LIMITS*")}
    finally:
        client.close()
    statuses = sorted(status for status, _, _ in answers)
    assert statuses == [200] * 5 + [429] * 7
    remaining = sorted(h["X-RateLimit-Remaining"] for s, _, h in answers if s == 200)
    assert remaining == ["0", "1", "2", "3", "4"]
    (token_key,) = [k for k in counts if "/tok:" in k]
    (ip_key,) = [k for k in counts if k != token_key]
    assert (counts[token_key], counts[ip_key]) == (5, 12)


def test_a_limited_request_resolves_its_limits_once(app_config, redis_url, monkeypatch):
    """flask-limiter resolves a view's limits (and its exemptions) on every request; they
    change only when a limit or an exemption is registered or a rate's setting changes, so
    each is resolved once per endpoint and rates: none per validation afterwards, the same
    answers, and a rate changed in the configuration counts from the next request."""
    from flask_limiter._manager import LimitManager

    app, http, client = _limits_in_redis(app_config, redis_url, **THREE_VALIDATIONS)
    resolved = []
    for name in ("resolve_limits", "exemption_scope"):
        real = getattr(LimitManager, name)
        monkeypatch.setattr(
            LimitManager,
            name,
            lambda *a, _real=real, _name=name, **k: resolved.append(_name) or _real(*a, **k),
        )
    try:
        _validations(http, client, 1, [])  # resolved for the first time (counts cleared)
        resolved.clear()
        answers, _counts = _validations(http, client, 4, [])
        assert resolved == []
        app.config["RATELIMIT_VALIDATE_PER_IP"] = "1/minute"
        after_change, _counts = _validations(http, client, 2, [])
    finally:
        client.close()
        app.extensions["db"].dispose()
    assert [a[0] for a in answers] == [200, 200, 200, 429]
    assert [a[1] for a in answers] == [["3", "2"], ["3", "1"], ["3", "0"], ["3", "0"]]  # address
    assert all(a[2] == (a[0] == 429) for a in answers)  # Retry-After on the 429 only
    assert [a[:2] for a in after_change] == [(200, ["1", "0"]), (429, ["1", "0"])]
    assert "resolve_limits" in resolved


def test_a_validation_reads_only_its_own_rate_settings(app_config, redis_url, monkeypatch):
    """A limited request reads the rate settings of its own limits only (not every limited
    route's, on every request), and a change to one of them still counts from the next
    request; a change to another route's rate changes nothing for it."""
    app, http, client = _limits_in_redis(app_config, redis_url, **THREE_VALIDATIONS)
    read = []

    class Counted(type(app.config)):
        def __getitem__(self, key):
            if key.startswith("RATELIMIT_") and key.endswith(("_PER_IP", "_PER_TOKEN")):
                read.append(key.removeprefix("RATELIMIT_").partition("_PER_")[0])
            return super().__getitem__(key)

    monkeypatch.setattr(app.config, "__class__", Counted)
    try:
        _validations(http, client, 1, [])  # resolved for the first time
        read.clear()
        answers, _counts = _validations(http, client, 2, [])
        app.config["RATELIMIT_LOGIN_PER_IP"] = "1/minute"
        other_changed, _counts = _validations(http, client, 1, [])
        app.config["RATELIMIT_VALIDATE_PER_IP"] = "1/minute"
        own_changed, _counts = _validations(http, client, 2, [])
    finally:
        client.close()
        app.extensions["db"].dispose()
    assert read and set(read) == {"VALIDATE"}
    assert [a[:2] for a in answers] == [(200, ["3", "2"]), (200, ["3", "1"])]
    assert [a[:2] for a in other_changed] == [(200, ["3", "2"])]
    assert [a[:2] for a in own_changed] == [(200, ["1", "0"]), (429, ["1", "0"])]


def test_the_limiters_request_state_is_flask_limiters_own(app_config, redis_url):
    """The limiter's state for a request (looked up once, not through three proxies) is
    the one flask-limiter's own property keeps: what the view's limits left is what the
    headers say, each request its own."""
    from flask import request
    from flask_limiter import Limiter

    from app.http.limits import limiter

    app, http, client = _limits_in_redis(app_config, redis_url, **THREE_VALIDATIONS)
    seen = []

    @app.after_request
    def record(response):  # runs before the limiter's own after-request hook
        if request.endpoint == "auth.validate":
            own = Limiter.context.fget(limiter)
            current = limiter.current_limit
            seen.append((limiter.context is own, current.limit.amount, current.remaining))
        return response

    try:
        answers, _counts = _validations(http, client, 2, [])
    finally:
        client.close()
        app.extensions["db"].dispose()
    assert seen == [(True, 3, 2), (True, 3, 1)]
    assert [a[:2] for a in answers] == [(200, ["3", "2"]), (200, ["3", "1"])]


def test_the_headers_describe_the_limit_they_say(app_config, redis_url):
    """X-RateLimit-* describe the first limit checked (the address's, shortest window) on an
    accepted answer and the limit that refused on a 429 — what the document says."""
    app, http, client = _limits_in_redis(
        app_config,
        redis_url,
        RATELIMIT_VALIDATE_PER_IP="5/minute;7/hour",
        RATELIMIT_VALIDATE_PER_TOKEN="3/minute;4/hour",
    )
    try:
        answers = [
            http.post("/api/v1/licenses/validate", json={"token": f"t{i}", "client_id": "c"})
            for i in range(6)
        ]
        described = http.get("/openapi.json").get_json()["components"]["headers"]
    finally:
        client.close()
        app.extensions["db"].dispose()
    headers = [(a.status_code, a.headers["X-RateLimit-Limit"]) for a in answers]
    assert headers == [(200, "5")] * 5 + [(429, "5")]
    assert [a.headers["X-RateLimit-Remaining"] for a in answers] == ["4", "3", "2", "1", "0", "0"]
    text = described["X-RateLimit-Limit"]["description"]
    assert "the limit that refused the request" in text and "first" in text


def test_the_hits_go_over_the_storages_own_connection(app_config, redis_url, monkeypatch):
    """A request's hits are sent on the connection the storage holds, not one taken from
    redis-py's pool for each (its per-command cost); the answers are the
    same. A connection Redis closed is replaced, and a script Redis no longer knows is
    loaded again, without a failed answer or a count lost or doubled."""
    from app.http.limits import limiter

    app, http, client = _limits_in_redis(app_config, redis_url, **THREE_VALIDATIONS)
    storage = limiter.storage
    pool = storage.get_connection().connection_pool
    taken = []
    real_get = pool.get_connection
    monkeypatch.setattr(pool, "get_connection", lambda *a, **k: taken.append(1) or real_get())
    sent = _round_trips(monkeypatch)
    try:
        _validations(http, client, 1, sent)  # connected, scripts loaded (counts cleared)
        taken.clear()
        answers, counts = _validations(http, client, 2, sent)
        assert taken == []
        held = storage._held[1]
        held.send_command("CLIENT", "ID")
        client.client_kill_filter(_id=held.read_response())  # as a Redis restart would
        storage.lua_hits.sha = "0" * 40  # as a script flush would
        after, after_counts = _validations(http, client, 2, sent)
    finally:
        client.close()
        app.extensions["db"].dispose()
    assert [a[:2] for a in answers] == [(200, ["3", "2"]), (200, ["3", "1"])]
    assert [a[3] for a in answers] == [["EVALSHA"]] * 2
    assert [a[:2] for a in after] == [(200, ["3", "2"]), (200, ["3", "1"])]
    # refused on the closed connection, then (a new one's handshake aside) unknown, loaded, run
    scripts = [c for c in after[0][3] if c in ("EVALSHA", "SCRIPT")]
    assert scripts == ["EVALSHA", "EVALSHA", "SCRIPT", "EVALSHA"]
    assert after[1][3] == ["EVALSHA"]
    assert sorted(counts.values()) == sorted(after_counts.values()) == [2, 2]
