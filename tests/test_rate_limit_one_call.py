"""The limiter's one-call check (`RouteLimiter._check_request_limit` with a plan) answers as
flask-limiter's own evaluation does — statuses, rate-limit headers, counters — in every
configuration a limiter can have, not only the service's routes: each case runs twice on
a fresh limiter and app (in-memory storage), once with the plan and once without
(`limiter.planner = None`: flask-limiter evaluates the limits itself), and the two must
agree. The review of the one-call path found the cases marked below."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flask
import pytest
from flask_limiter.util import get_remote_address

from app.http.limits import RouteLimiter, config_limit

Outcome = tuple[list[tuple[Any, ...]], list[tuple[str, int]]]


def _limiter(**kwargs: Any) -> RouteLimiter:
    return RouteLimiter(
        **{"key_func": get_remote_address, "default_limits": [], "headers_enabled": True, **kwargs}
    )


def _app(**config: Any) -> flask.Flask:
    app = flask.Flask("one_call")
    app.config.update(RATELIMIT_STORAGE_URI="lazymemory://", **config)
    return app


def _answers(client: Any, requests: list[tuple[str, str, dict[str, str]]]) -> list[tuple[Any, ...]]:
    out = []
    for path, method, headers in requests:
        r = client.open(path, method=method, headers=headers)
        rate = [r.headers.get(h) for h in ("X-RateLimit-Limit", "X-RateLimit-Remaining")]
        out.append((path, method, r.status_code, *rate, "Retry-After" in r.headers))
    return out


def _counts(limiter: RouteLimiter) -> list[tuple[str, int]]:
    storage = limiter.storage
    counts = getattr(storage, "counts", {})
    return sorted((k, v) for k, v in counts.items() if v)


def assorted(plan: bool) -> Outcome:
    """Shared limits, several rates in one string with a cost, per-method scopes, a method
    exemption, exempt_when, an empty key, two identical limits on one counter."""
    app = _app(RATELIMIT_KEY_PREFIX="p")
    lim = _limiter(key_func=lambda: flask.request.headers.get("K", ""))

    @app.route("/a", methods=["GET", "POST"])
    @lim.shared_limit("3/minute", scope="grp")
    @lim.limit("5/minute;2/second", cost=2, per_method=True)
    @lim.limit("4/minute", methods=["POST"])
    @lim.limit("3/minute", exempt_when=lambda: flask.request.args.get("x") == "1")
    def a() -> str:
        return "a"

    @app.get("/b")
    @lim.shared_limit("3/minute", scope="grp")
    @lim.limit("3/minute", key_func=lambda: "same")
    @lim.limit("3/minute", key_func=lambda: "same")
    def b() -> str:
        return "b"

    lim.init_app(app)
    lim.planner = lim.planner if plan else None
    k = {"K": "k"}
    requests = [
        ("/a", "GET", k),
        ("/a?x=1", "POST", k),
        ("/a", "POST", {"K": ""}),
        ("/b", "GET", k),
        ("/a", "GET", k),
        ("/b", "GET", k),
        ("/a", "POST", k),
        ("/a", "GET", k),
    ]
    return _answers(app.test_client(), requests), _counts(lim)


def helper_limited(plan: bool) -> Outcome:
    """A limited view calling a limited helper (review F1): the helper's own limit counts."""
    app = _app()
    lim = _limiter()

    @lim.limit("1/minute")
    def helper() -> str:
        return "helper"

    @app.get("/a")
    @lim.limit("100/minute")
    def a() -> str:
        return helper()

    lim.init_app(app)
    lim.planner = lim.planner if plan else None
    return _answers(app.test_client(), [("/a", "GET", {})] * 3), _counts(lim)


def wrapped_without_wraps(plan: bool) -> Outcome:
    """A limited view under a decorator that does not use functools.wraps (review F1)."""
    app = _app()
    lim = _limiter()

    def audited(view: Callable[..., Any]) -> Callable[..., Any]:
        def inner(*args: Any, **kwargs: Any) -> Any:
            return view(*args, **kwargs)

        return inner

    @app.post("/login", endpoint="login")
    @audited
    @lim.limit("2/minute")
    def login() -> str:
        return "ok"

    lim.init_app(app)
    lim.planner = lim.planner if plan else None
    return _answers(app.test_client(), [("/login", "POST", {})] * 4), _counts(lim)


def _one_route(lim: RouteLimiter, **config: Any) -> flask.Flask:
    app = _app(**config)

    @app.get("/a")
    @lim.limit(config_limit("RATE"))
    def a() -> str:
        return "a"

    lim.init_app(app)
    return app


def default_limits(plan: bool) -> Outcome:
    """Default limits configured (review F2): every request is answered, none 500."""
    lim = _limiter()
    app = _one_route(lim, RATE="2/minute", RATELIMIT_DEFAULT="1000/hour")
    lim.planner = lim.planner if plan else None
    return _answers(app.test_client(), [("/a", "GET", {})] * 3), _counts(lim)


def two_apps(plan: bool) -> Outcome:
    """One limiter, two apps with different rates (review F3): each request has its own
    app's rate."""
    lim = _limiter()
    app_a = _one_route(lim, RATE="2/minute")
    app_b = _one_route(lim, RATE="100/minute")
    lim.planner = lim.planner if plan else None
    first = _answers(app_b.test_client(), [("/a", "GET", {})])
    return first + _answers(app_a.test_client(), [("/a", "GET", {})] * 4), _counts(lim)


def disabled_after_init(plan: bool) -> Outcome:
    """The limiter switched off after init_app (review F4): nothing is limited."""
    lim = _limiter()
    app = _one_route(lim, RATE="1/minute")
    lim.planner = lim.planner if plan else None
    lim.enabled = False
    return _answers(app.test_client(), [("/a", "GET", {})] * 3), _counts(lim)


def request_identifier(plan: bool) -> Outcome:
    """A request identifier of the app's (review F5): the same counters."""
    lim = _limiter()
    app = _one_route(lim, RATE="5/minute", RATELIMIT_REQUEST_IDENTIFIER=lambda: flask.request.path)
    lim.planner = lim.planner if plan else None
    return _answers(app.test_client(), [("/a", "GET", {})] * 2), _counts(lim)


def key_raises(plan: bool) -> Outcome:
    """A key function that raises (review F6): handled as flask-limiter handles it."""
    lim = _limiter(key_func=lambda: 1 / 0)
    app = _one_route(
        lim,
        RATE="1/minute",
        RATELIMIT_IN_MEMORY_FALLBACK_ENABLED=True,
        RATELIMIT_SWALLOW_ERRORS=True,
    )
    lim.planner = lim.planner if plan else None
    answers = _answers(app.test_client(), [("/a", "GET", {})] * 2)
    return [*answers, ("storage dead", lim._storage_dead)], []


def exempt_at_runtime(plan: bool) -> Outcome:
    """A view exempted after its first request (review F7): exempt from then on."""
    lim = _limiter()
    app = _one_route(lim, RATE="1/minute")
    lim.planner = lim.planner if plan else None
    client = app.test_client()
    first = _answers(client, [("/a", "GET", {})])
    lim.exempt(app.view_functions["a"])
    return first + _answers(client, [("/a", "GET", {})] * 2), _counts(lim)


CASES = [
    assorted,
    helper_limited,
    wrapped_without_wraps,
    default_limits,
    two_apps,
    disabled_after_init,
    request_identifier,
    key_raises,
    exempt_at_runtime,
]


@pytest.mark.parametrize("case", CASES, ids=[c.__name__ for c in CASES])
def test_the_one_call_check_answers_as_flask_limiter(case):
    with_plan = case(True)
    own = case(False)
    assert with_plan == own
    assert with_plan[0]  # something was asked


def test_plain_limits_take_the_one_call_path():
    """The service's kind of limits (plain, per route) are checked in one storage call, so
    the comparison above compares two paths, not one with itself."""
    lim = _limiter()
    app = _one_route(lim, RATE="2/minute")
    calls = []
    real = lim.storage.hit_all
    lim.storage.hit_all = lambda hits: calls.append(len(hits)) or real(hits)
    statuses = [a[2] for a in _answers(app.test_client(), [("/a", "GET", {})] * 3)]
    assert statuses == [200, 200, 429]
    assert calls == [1, 1, 1]
