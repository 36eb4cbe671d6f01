"""Rate limits: the limiter, its in-memory storage and its (total) key functions.

flask-limiter is used through its public API: `Limiter.limit` decorates the views that
have limits, and the request hooks `Limiter.init_app` registers run only for those views
(`RouteLimiter`). Two pieces of its internals are replaced: the `LimitManager` that
resolves a request's limits keeps what it resolved (`ResolvedOnce`), and for plain
per-route limits the check its decorator calls makes the request's hits in one storage
call and fills its request context from the answer (`RouteLimiter._check_request_limit`;
docs/adr/0011-http-layer.md). Storage is chosen in `init_app`: Redis when REDIS_URL is
set (shared by every worker and host; `redis_limits.CountedRedisStorage`, one round trip
for all the limits of a request), memory otherwise (`lazymemory://`, `CounterStorage`);
if Redis fails mid-run the limiter falls back to memory.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import flask
from flask import current_app, has_request_context, request
from flask.globals import request_ctx
from flask_limiter import Limiter, RateLimitExceeded, RequestLimit
from flask_limiter._manager import LimitManager
from flask_limiter.util import get_qualified_name, get_remote_address
from limits.storage import Storage
from limits.strategies import FixedWindowRateLimiter
from limits.util import WindowStats
from werkzeug.exceptions import HTTPException
from werkzeug.local import LocalProxy

# Defining it registers it for limits' Redis schemes: the storage the limiter builds for them.
from app.http.redis_limits import CountedRedisStorage, PlannedHit  # noqa: F401 (registered)

log = logging.getLogger(__name__)

# A limit the current request hits: flask-limiter's limit, its request limit (the object its
# context keeps; not breached yet), the hit.
_Planned = tuple[Any, RequestLimit, PlannedHit]


class ResolvedOnce(LimitManager):
    """flask-limiter's `LimitManager` with each resolution kept.

    The limiter asks it on every limited request which limits apply (`resolve_limits`) and
    which are exempt (`exemption_scope`); the answer depends only on what is registered
    (limits, exemptions, endpoint hints: every change goes through a method here and forgets
    what was kept) and on the rates the endpoint's own limits (its view's and its hinted
    callables') hold now, which are part of the key: a rate changed in the configuration
    counts from the next request. Resolving (each rate string parsed again, each exemption
    looked up) was ~5 % of a validation's CPU; keying on every limited route's rates, read
    through `current_app` each, cost another ~35 µs a request.
    Application, default and blueprint limits are resolved afresh every time (the service
    has none; their rates are not in the key)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._known: dict[tuple[Any, ...], Any] = {}

    def forget(self) -> None:
        self._known.clear()

    def set_application_limits(self, *args: Any, **kwargs: Any) -> None:
        self.forget()
        super().set_application_limits(*args, **kwargs)

    def set_default_limits(self, *args: Any, **kwargs: Any) -> None:
        self.forget()
        super().set_default_limits(*args, **kwargs)

    def add_decorated_limit(self, *args: Any, **kwargs: Any) -> None:
        self.forget()
        super().add_decorated_limit(*args, **kwargs)

    def add_blueprint_limit(self, *args: Any, **kwargs: Any) -> None:
        self.forget()
        super().add_blueprint_limit(*args, **kwargs)

    def add_route_exemption(self, *args: Any, **kwargs: Any) -> None:
        self.forget()
        super().add_route_exemption(*args, **kwargs)

    def add_blueprint_exemption(self, *args: Any, **kwargs: Any) -> None:
        self.forget()
        super().add_blueprint_exemption(*args, **kwargs)

    def add_endpoint_hint(self, endpoint: str, name: str) -> None:
        if name not in self._endpoint_hints.get(endpoint, ()):  # a request adds it again
            self.forget()
        super().add_endpoint_hint(endpoint, name)

    def resolve_limits(
        self,
        app: flask.Flask,
        endpoint: str | None = None,
        blueprint: str | None = None,
        callable_name: str | None = None,
        in_middleware: bool = False,
        marked_for_limiting: bool = False,
    ) -> Any:
        args = (endpoint, blueprint, callable_name, in_middleware, marked_for_limiting)
        if isinstance(app, LocalProxy):  # flask-limiter passes `current_app`: looked up once
            app = app._get_current_object()
        if self._application_limits or self._default_limits or self._blueprint_limits:
            return super().resolve_limits(app, *args)
        key = ("limits", app, self._rates_for(app, endpoint, callable_name), *args)
        known = self._known.get(key)
        if known is None:
            known = self._known[key] = super().resolve_limits(app, *args)
        return tuple(list(limits) for limits in known)  # lists of the caller's own

    def _rates_for(
        self, app: flask.Flask, endpoint: str | None, callable_name: str | None
    ) -> tuple[Any, ...]:
        """The rates, as configured now, of the limit groups a resolution for `endpoint`
        can return: the view's own (`callable_name`, else the endpoint's view) and those of
        the callables hinted for the endpoint. Another view's rates do not change this
        answer; reading only these keeps the key to a few configuration lookups."""
        if not endpoint:
            return ()
        if callable_name is None:
            view = app.view_functions.get(endpoint)
            callable_name = get_qualified_name(view) if view else ""
        names = (callable_name, *self._endpoint_hints.get(endpoint, ()))
        config = app.config
        return tuple(
            rate_of(group.limit_provider, config)
            for name in names
            for group in self._decorated_limits.get(name, ())
        )

    def plain_limits(
        self, app: flask.Flask, endpoint: str, blueprint: str | None, name: str
    ) -> list[Any] | None:
        """The limits flask-limiter evaluates for a request to `endpoint` whose view is
        `name`, in its order (sorted by limit), when every one is plain — no default,
        application or blueprint limits, no conditional deduction, meta limit or breach
        callback (`RouteLimiter._plan`); else None. Kept as `resolve_limits` keeps its
        answers (forgotten on any registration; the rates part of the key)."""
        if self._application_limits or self._default_limits or self._blueprint_limits:
            return None
        key = ("plain", app, endpoint, blueprint, name, self._rates_for(app, endpoint, name))
        if key in self._known:
            known: list[Any] | None = self._known[key]
            return known
        defaults, decorated = self.resolve_limits(app, endpoint, blueprint, name, False, True)
        plain = not defaults and not any(
            lim.deduct_when or lim.meta_limits or lim.on_breach for lim in decorated
        )
        known = self._known[key] = sorted(decorated, key=lambda x: x.limit) if plain else None
        return known

    def exemption_scope(self, app: flask.Flask, endpoint: str | None, blueprint: str | None) -> Any:
        key = ("exemption", app, endpoint, blueprint)
        known = self._known.get(key)
        if known is None:
            known = self._known[key] = super().exemption_scope(app, endpoint, blueprint)
        return known


class RouteLimiter(Limiter):
    """A Limiter whose request hooks run only for the views it limits.

    `Limiter.init_app` registers a before-request, an after-request and a teardown hook on
    the app, and they run for every request: on /healthz, /metrics and every route without a
    limit they resolve limits, build the limiter's request context and look for headers to
    add, to find there is nothing to do (the largest piece of /healthz's time in
    bench/README.md). Here each hook runs only for an endpoint whose view was decorated with
    `limit`/`shared_limit` of this limiter, or for every endpoint when the app configures
    default or application-wide limits (flask-limiter applies those everywhere); without
    those, the before-request hook is not run at all (it would find no limit to check).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        manager = self.limit_manager  # as Limiter made it: its registrations so far kept
        self.limit_manager = ResolvedOnce(
            application_limits=manager._application_limits,
            default_limits=manager._default_limits,
            decorated_limits=manager._decorated_limits,
            blueprint_limits=manager._blueprint_limits,
            route_exemptions=manager._route_exemptions,
            blueprint_exemptions=manager._blueprint_exemptions,
        )
        self._limited_views: set[Callable[..., Any]] = set()
        # How a request's plain limits are planned (`_plan`); None: flask-limiter's own
        # evaluation for every request (set by `init_app`).
        self.planner: Callable[[str | None], list[_Planned] | None] | None = None

    @property
    def context(self) -> Any:
        """flask-limiter's state for the current request (kept where its own property keeps
        it, one per limiter on the request context), found with one context lookup: its
        property makes three (a `hasattr` and two reads through `request_ctx`), and it is
        asked eight times in a limited request."""
        try:
            return request_ctx._get_current_object()._limiter_request_context[self]
        except AttributeError:  # the request's first: flask-limiter's property makes it
            return super().context

    def limit(self, *args: Any, **kwargs: Any) -> Any:
        return self._remembered(super().limit(*args, **kwargs))

    def shared_limit(self, *args: Any, **kwargs: Any) -> Any:
        return self._remembered(super().shared_limit(*args, **kwargs))

    def _remembered(self, decorator: Any) -> Callable[[Any], Any]:
        def decorate(view: Any) -> Any:
            wrapped = decorator(view)
            if callable(wrapped):
                self._limited_views.add(wrapped)
            return wrapped

        return decorate

    def init_app(self, app: flask.Flask, after_hooks: tuple[Callable[..., Any], ...] = ()) -> None:
        """Bind to `app`; `after_hooks` are after-request hooks of the app's own that belong
        with the limiter's (run after it, and only where it runs)."""
        hooks = {
            "before": app.before_request_funcs,
            "after": app.after_request_funcs,
            "teardown": app.teardown_request_funcs,
        }
        known = {kind: list(funcs.get(None, ())) for kind, funcs in hooks.items()}
        self.limit_manager.forget()  # what another app's requests resolved
        self.planner = None
        for hook in after_hooks:
            app.after_request(hook)
        super().init_app(app)
        if limits_every_route(app):
            return  # limits that apply to every endpoint: every request needs the hooks
        self.planner = self._plan
        limited = _EndpointsWithLimits(app, self._limited_views)
        for kind, funcs in hooks.items():
            funcs[None] = [
                hook if hook in known[kind] else _only_where_limited(kind, hook, limited)
                for hook in funcs.get(None, ())
                if hook in known[kind] or not self._checks_nothing(kind, hook)
            ]

    def _checks_nothing(self, kind: str, hook: Callable[..., Any]) -> bool:
        """Whether `hook` is flask-limiter's before-request check, which has nothing to do
        where every limit is a view's own (no default, application or meta limits): its
        pass over a decorated view resolves no limit (the decorator checks the view's
        limits), and it runs only for decorated views here."""
        return kind == "before" and hook == self._check_request_limit

    def _plan(self, callable_name: str | None) -> list[_Planned] | None:
        """The hits the current request's limits make, in the order flask-limiter makes
        them, or None where this cannot be told in advance (then flask-limiter evaluates
        the request's limits itself, `_check_request_limit`).

        It mirrors flask-limiter's own evaluation of a view's decorated limits (resolved by
        its `limit_manager`, sorted, exempt ones skipped, each hit at `key_for(prefix, key,
        scope)` with the limit's expiry and cost) for plain limits only: the fixed-window
        strategy, stopping at the first refused, no default, application or meta limits,
        no conditional deduction, no breach callback, a storage with `hit_all`, and the
        limited function the endpoint's own view (not a helper it calls, nor a view
        wrapped by a decorator that hides its name). tests/test_rate_limit_one_call.py and
        tests/test_rate_limit_storage.py check that the answers, headers and counts are
        those of flask-limiter's own evaluation.
        """
        if (
            not isinstance(self.limiter, FixedWindowRateLimiter)
            or not self._fail_on_first_breach
            or self._meta_limits
            or not hasattr(self.storage, "hit_all")
        ):
            return None
        app = current_app._get_current_object()
        endpoint = self.identify_request()
        view = app.view_functions.get(endpoint or "")
        if not endpoint or view is None:
            return None
        name = get_qualified_name(view)
        if callable_name is not None and callable_name != name:
            return None
        limits = self.limit_manager.plain_limits(app, endpoint, request.blueprint, name)
        if limits is None:
            return None
        method = request.method
        prefix = self._key_prefix
        planned = []
        for lim in limits:
            if lim.is_exempt or lim.method_exempt:
                continue
            scope = lim.scope_for(endpoint, method)
            key = lim.key_func()
            if not key or not scope:
                return None  # flask-limiter logs and skips it: its own evaluation does that
            args = [prefix, key, scope] if prefix else [key, scope]
            item = lim.limit
            request_limit = RequestLimit(self, item, args, False, lim.shared)  # makes its key
            hit = (request_limit.key, item.get_expiry(), lim.deduction_amount, item.amount)
            planned.append((lim, request_limit, hit))
        return planned

    def _check_request_limit(
        self, callable_name: str | None = None, in_middleware: bool = True
    ) -> None:
        """The current request's limits checked (a 429 raised when one refuses), by the
        plan in one storage call where there is one, else by flask-limiter.

        flask-limiter's evaluation, run for every limited request, filters, resolves and
        sorts the limits anew and hits them one at a time through its strategy, a
        request-limit object and a storage call each, then reads each limit's window back
        for the headers: ~400 µs of CPU on a validation, a third of it (issue 17). With a
        plan, the same hits are made in one call and the limiter's request context (which
        limits were hit, which refused, the windows its headers describe) is filled with
        what that call answered. An exception on the way (the storage failing, a key
        function raising) is what it is to flask-limiter: the in-memory fallback from then
        on (or, without one, the error swallowed or raised as configured)."""
        if (
            in_middleware
            or self.planner is None
            or not (self.enabled and self.initialized)
            or self._storage_dead
            or self._request_filters
            or self._on_breach is not None
        ):
            super()._check_request_limit(callable_name=callable_name, in_middleware=in_middleware)
            return
        try:
            planned = self.planner(callable_name)
            if planned is None:
                super()._check_request_limit(
                    callable_name=callable_name, in_middleware=in_middleware
                )
                return
            self._hit_planned(planned)
        except RateLimitExceeded:
            raise
        except Exception:
            if not self._in_memory_fallback_enabled or self._storage_dead:
                if not self._swallow_errors:
                    raise
                self.logger.exception("Failed to rate limit. Swallowing error")
                return
            self.logger.warning(
                "Rate limit storage unreachable - falling back to in-memory storage"
            )
            self._storage_dead = True
            self.context.seen_limits.clear()
            super()._check_request_limit(callable_name=callable_name, in_middleware=in_middleware)

    def _hit_planned(self, planned: list[_Planned]) -> None:
        """The planned hits made, the limiter's context set as its own evaluation sets it
        (`view_rate_limits`: each limit hit; `view_rate_limit`: the one that refused, else
        the first not shared, else the first), RateLimitExceeded for a refusal."""
        view_limits = []
        refused = None
        if planned:
            made = self.storage.hit_all([hit for _, _, hit in planned])
            # each counter as it is after the request's hits (two limits can share one)
            after = {hit[0]: answer for (_, _, hit), answer in zip(planned, made, strict=False)}
            for (lim, request_limit, hit), (count, _) in zip(planned, made, strict=False):
                item = lim.limit
                request_limit.breached = count > item.amount
                # the window its headers describe, as the strategy would read it back now
                final, ends = after[hit[0]]
                request_limit._window = WindowStats(ends, max(0, item.amount - final))
                view_limits.append(request_limit)
                if request_limit.breached:
                    refused = lim
                    key, scope = request_limit.request_args[-2:]
                    self.logger.info("ratelimit %s (%s) exceeded at endpoint: %s", item, key, scope)
                    break
        header = view_limits[-1] if refused is not None else None
        if header is None and view_limits:
            explicit = [limit for limit in view_limits if not limit.shared]
            header = explicit[0] if explicit else view_limits[0]
        self.context.view_rate_limit = header
        self.context.view_rate_limits = view_limits
        if refused is not None:
            raise RateLimitExceeded(refused)


class _EndpointsWithLimits:
    """Whether an endpoint's view is (or wraps) a view this limiter decorated; decided once
    per endpoint."""

    def __init__(self, app: flask.Flask, limited_views: set[Callable[..., Any]]) -> None:
        self.app = app
        self.limited_views = limited_views
        self.known: dict[str | None, bool] = {}

    def __contains__(self, endpoint: str | None) -> bool:
        found = self.known.get(endpoint)
        if found is None:
            found = self.known[endpoint] = self._find(endpoint)
        return found

    def _find(self, endpoint: str | None) -> bool:
        view = self.app.view_functions.get(endpoint or "")
        while view is not None:  # APIFlask's decorators wrap the limited view (functools.wraps)
            if view in self.limited_views:
                return True
            view = getattr(view, "__wrapped__", None)
        return False


def _only_where_limited(kind: str, hook: Callable[..., Any], limited: _EndpointsWithLimits) -> Any:
    """`hook` run only for the endpoints in `limited`; elsewhere a no-op of the same kind."""
    if kind == "after":

        @functools.wraps(hook)
        def after(response: Any) -> Any:
            return hook(response) if request.endpoint in limited else response

        return after

    @functools.wraps(hook)
    def before_or_teardown(*args: Any) -> Any:
        return hook(*args) if request.endpoint in limited else None

    return before_or_teardown


class CounterStorage(Storage):
    """Fixed-window counters in this process's memory (`lazymemory://`), swept of expired
    keys at most once a second, inline.

    limits' own MemoryStorage starts a 10 ms `threading.Timer` whenever the previous one
    has run — under load, on nearly every hit, and the request waits for the new thread to
    start (measured in bench/README.md). Expired counters are ignored when read anyway; the
    sweep only frees memory. Built on limits' public `Storage` interface, for the
    fixed-window strategy the limiter uses (its default). `clock` is injectable for tests.
    """

    STORAGE_SCHEME = ["lazymemory"]
    SWEEP_INTERVAL = 1.0

    def __init__(
        self,
        uri: str | None = None,
        wrap_exceptions: bool = False,
        clock: Callable[[], float] = time.time,
        **options: Any,
    ) -> None:
        self.clock = clock
        self.counts: dict[str, int] = {}
        self.expirations: dict[str, float] = {}
        self._lock = threading.Lock()
        self._next_sweep = 0.0
        super().__init__(uri, wrap_exceptions=wrap_exceptions, **options)

    @property
    def base_exceptions(self) -> type[Exception] | tuple[type[Exception], ...]:
        return ValueError

    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        now = self.clock()
        with self._lock:
            if now >= self._next_sweep:
                self._sweep(now)
            if self.expirations.get(key, 0.0) <= now:
                self.counts[key] = 0
                self.expirations[key] = now + expiry
            self.counts[key] += amount
            return self.counts[key]

    def get(self, key: str) -> int:
        with self._lock:
            if self.expirations.get(key, 0.0) <= self.clock():
                return 0
            return self.counts.get(key, 0)

    def get_expiry(self, key: str) -> float:
        with self._lock:
            return self.expirations.get(key, self.clock())

    def hit_all(self, hits: list[PlannedHit]) -> list[tuple[int, float]]:
        """Each hit in turn up to and with the first whose count is over its limit's
        amount: each made hit's count and the time its window ends (as `get_expiry`)."""
        made = []
        for key, expiry, amount, most in hits:
            count = self.incr(key, expiry, amount)
            made.append((count, self.get_expiry(key)))
            if count > most:
                break
        return made

    def check(self) -> bool:
        return True

    def reset(self) -> int | None:
        with self._lock:
            count = len(self.counts)
            self.counts.clear()
            self.expirations.clear()
        return count

    def clear(self, key: str) -> None:
        with self._lock:
            self.counts.pop(key, None)
            self.expirations.pop(key, None)

    def _sweep(self, now: float) -> None:
        self._next_sweep = now + self.SWEEP_INTERVAL
        for key in [k for k, at in self.expirations.items() if at <= now]:
            del self.expirations[key]
            self.counts.pop(key, None)


limiter = RouteLimiter(key_func=get_remote_address, default_limits=[], headers_enabled=True)


def storage_uri(redis_url: str | None) -> str:
    """The limiter's storage for REDIS_URL: redis-py's URL as flask-limiter names it (it
    knows a socket only as redis+unix://), or memory when there is no Redis."""
    if not redis_url:
        return "lazymemory://"
    if redis_url.startswith("unix://"):
        return "redis+" + redis_url
    return redis_url


def limits_every_route(app: Any) -> bool:
    """Whether `app` configures limits that flask-limiter applies to every endpoint
    (default, application-wide or meta limits): then every request must pass its hooks."""
    return any(app.config.get(f"RATELIMIT_{name}") for name in ("DEFAULT", "APPLICATION", "META"))


def init_app(app: Any) -> None:
    """Bind the limiter. Nothing here opens a network connection."""
    app.config.setdefault("RATELIMIT_STORAGE_URI", storage_uri(app.config.get("REDIS_URL")))
    app.config.setdefault("RATELIMIT_IN_MEMORY_FALLBACK_ENABLED", True)
    app.config.setdefault("RATELIMIT_SWALLOW_ERRORS", True)
    app.config.setdefault(
        "RATELIMIT_STORAGE_OPTIONS", {"socket_connect_timeout": 0.5, "socket_timeout": 0.5}
    )
    # Registered before the limiter's own hook, so it runs after it (Flask runs after_request
    # hooks in reverse), and only where the limiter runs: the limiter adds Retry-After to
    # every response it limits, but it only means something on a 429 (or a 423, 503); a
    # Retry-After a view sets on a route without limits (a 409 "in progress") is kept.
    limiter.init_app(app, after_hooks=(_retry_after_only_when_meaningful,))


def _retry_after_only_when_meaningful(response: Any) -> Any:
    if response.status_code not in (423, 429, 503):
        response.headers.pop("Retry-After", None)
    return response


# --- key functions --------------------------------------------------------------------------

# WSGI environ key: the current request's key values (`rate_limit_key`).
_REQUEST_KEYS = "app.rate_limit_keys"
# WSGI environ key: the current request's client address (`client_ip`).
_CLIENT_IP = "app.client_ip"


def rate_limit_key(key: Callable[[], str]) -> Callable[[], str]:
    """A rate-limit key function made total: it never raises and returns ASCII.

    flask-limiter takes any exception from a key function for a storage failure and
    switches every later request to fresh in-memory counters, so one hostile body would
    reset every limit. Whatever the body, header or encoding, the wrapped key answers: a
    failure (logged on one line, no traceback) falls back to the client's address, and a
    key that is not plain ASCII (Redis keys are bytes) is replaced by its digest.

    The value is worked out once per request: the limiter's plan and flask-limiter's
    own check both ask for it (the body parsed, the token digested once, not twice).
    """

    @functools.wraps(key)
    def total() -> str:
        if not has_request_context():
            return _total_value(key)
        known = _request_keys()
        value = known.get(total)
        if value is None:
            value = known[total] = _total_value(key)
        return value

    return total


def _request_keys() -> dict[Callable[[], str], str]:
    """The key functions' values for the current request, kept in its WSGI environ."""
    keys: dict[Callable[[], str], str] = request.environ.setdefault(_REQUEST_KEYS, {})
    return keys


def _total_value(key: Callable[[], str]) -> str:
    try:
        value = key()
    except HTTPException:  # a body too large to read: the view answers it (413)
        return "ip:" + client_ip()
    except Exception as exc:
        log.warning(
            "rate-limit key %s failed (%s); keyed by address", key.__name__, type(exc).__name__
        )
        return "ip:" + client_ip()
    if not value.isascii() or not value.isprintable():
        return "h:" + _digest(value)
    return value


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def jwt_subject_key(*, refresh: bool, fallback: Callable[[], str]) -> Callable[[], str]:
    """A rate-limit key "per account": the user of a *verified* token, else `fallback()`.

    Only a verified token counts: an unverified `sub` would let anyone spend another
    user's budget. An invalid token is refused by the view itself. The token is verified
    the way the view verifies it (`bearer.verify_jwt_in_request`), so the view's own check
    is answered from that verification: one per request.
    """
    from app.http.bearer import verified_subject

    def key() -> str:
        subject = verified_subject(refresh=refresh)
        return "user:" + subject if subject is not None else fallback()

    key.__name__ = f"jwt_subject_key_{'refresh' if refresh else 'access'}"
    return rate_limit_key(key)


def client_ip() -> str:
    """The client's address (after ProxyFix has applied the trusted hops), in canonical
    form, without the port some proxies append (`203.0.113.7:51234`, `[2001:db8::7]:443`);
    "unknown" when what the proxy passed on is not an address. Worked out once per request
    (a rate limit's key, its plan, the audit entry all ask)."""
    environ = request.environ
    address: str | None = environ.get(_CLIENT_IP)
    if address is None:
        address = environ[_CLIENT_IP] = _canonical_address(request.remote_addr or "")
    return address


def _canonical_address(remote_addr: str) -> str:
    try:
        parsed = ipaddress.ip_address(_without_port(remote_addr))
    except ValueError:
        return "unknown"
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        parsed = parsed.ipv4_mapped  # one client, one spelling: ::ffff:10.0.0.1 is 10.0.0.1
    address = str(parsed)
    return address if len(address) <= 45 else "unknown"  # an IPv6 scope id can be long


def _without_port(address: str) -> str:
    """`host:port` → host, `[v6]:port` → v6; anything else as it is (a bare IPv6 address has
    several colons)."""
    if address.startswith("["):
        return address[1:].partition("]")[0]
    host, colon, port = address.partition(":")
    return host if colon and port.isdigit() and ":" not in port else address


def _json_member(name: str) -> str | None:
    """A string member of a JSON object body, or None (any other body, any other type)."""
    data = request.get_json(silent=True)
    value = data.get(name) if isinstance(data, dict) else None
    return value if isinstance(value, str) else None


@rate_limit_key
def email_in_body() -> str:
    """Rate-limit key "per account": the normalised email of a JSON body *and* the client's
    address, else the address. Counting per account alone would let one address spend the
    owner's budget and keep them out from anywhere; the account-wide defence against many
    addresses is the login lockout's ceiling (docs/adr/0008-login-lockout.md)."""
    from app.kernel.emails import normalise_email

    email = _json_member("email")
    if email and email.strip():
        return "acct:" + _digest(normalise_email(email)) + "@" + client_ip()
    return "ip:" + client_ip()


@rate_limit_key
def token_in_body() -> str:
    """Rate-limit key "per token": a digest of the JSON body's token, else the IP."""
    token = _json_member("token")
    if token:
        return "tok:" + _digest(token)
    return "ip:" + client_ip()


class ConfigRate:
    """A rate limit read from the app's configuration at request time: flask-limiter calls
    it (through `current_app`); the limiter's own bookkeeping reads `setting` from a
    configuration it already holds (`rate_of`), which is the same value, without the
    context lookup."""

    __slots__ = ("setting",)

    def __init__(self, setting: str) -> None:
        self.setting = setting

    def __call__(self) -> str:
        rate: str = current_app.config[self.setting]
        return rate

    def __repr__(self) -> str:
        return f"config_limit({self.setting!r})"


def config_limit(name: str) -> Callable[[], str]:
    """A rate limit read from the app's configuration at request time."""
    return ConfigRate(name)


def rate_of(provider: Any, config: flask.Config) -> Any:
    """What a limit's `limit_provider` holds now: a rate string, or what its callable
    returns (a `ConfigRate` read from `config`, the current app's)."""
    if isinstance(provider, ConfigRate):
        return config[provider.setting]
    return provider() if callable(provider) else provider
