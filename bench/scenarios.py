"""What the benchmark runs: its scenarios, the reference servers, and its settings."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Scenario:
    name: str
    what: str
    idempotency: bool = False  # every request carries a new Idempotency-Key

    @property
    def file(self) -> str:
        """Its request file (bench/seed.py writes them, bench/load.lua replays them)."""
        return f"{self.name}.txt"


SCENARIOS = (
    Scenario("healthz", "GET /healthz (every middleware, a trivial view)"),
    Scenario("validate", "POST /licenses/validate, VALID tokens"),
    Scenario("activate", "POST /licenses/activate, Bearer, new client ids"),
    Scenario("login", "POST /auth/login (argon2id, OWASP cost)"),
    Scenario("admin_stats", "GET /admin/stats/licenses and /users"),
    Scenario("audit_search", "GET /admin/audit-logs (first page)"),
    Scenario("order", "POST /orders (sandbox payment, paid)", idempotency=True),
)
BY_NAME = {s.name: s for s in SCENARIOS}


@dataclass(frozen=True)
class Reference:
    """A bare app written in bench/reference/, served like the service, for the ratios."""

    name: str
    app: str  # gunicorn's APP argument
    scenario: str  # the request file it answers (same paths and bodies as the service's)
    what: str
    needs_database: bool = False


HELLO = Reference(
    "hello", "bench.reference.hello:app", "healthz", "Flask hello: one route, jsonify(ok=True)"
)
MINIMAL_VALIDATE = Reference(
    "minimal_validate",
    "bench.reference.validate:app",
    "validate",
    "Flask + PyJWT EdDSA verify + one SQLAlchemy Core primary-key select + jsonify",
    needs_database=True,
)
# The minimal validate with the service's features written bare (rate limits in Redis,
# headers, request id, access log, metrics, signed verdict): what those features cost at
# least. Served on SQLite only, beside the service's SQLite validate (information: the
# targets stay judged against the minimal validate).
FEATURED_VALIDATE = Reference(
    "featured_validate",
    "bench.reference.validate_featured:app",
    "validate",
    "the minimal validate + both validate limits in Redis (one round trip), X-RateLimit-*, "
    "request id, security headers, JSON access log, Prometheus, signed verdict",
    needs_database=True,
)
# The same server's GET /healthz: the service's liveness answer through the same features
# (no rate limit: the service's healthz has none), beside Flask hello (information: the
# healthz target stays judged against hello).
FEATURED_HEALTHZ = Reference(
    "featured_healthz",
    FEATURED_VALIDATE.app,
    "healthz",
    "GET /healthz through the featured validate's request id, security headers, JSON access "
    "log and Prometheus",
)
REFERENCES = (HELLO, MINIMAL_VALIDATE, FEATURED_VALIDATE, FEATURED_HEALTHZ)


@dataclass
class Settings:
    connections: int = 16
    threads: int = 1
    duration: float = 3.0
    warmup: float = 1.5
    reps: int = 3
    micro_rounds: int = 3
    scale_rounds: int = 3
    scale_users: int = 1_000_000
    scale_audit: int = 10_000_000
    small_users: int = 10_000
    small_audit: int = 100_000
    postgres: bool = True
    scale: bool = True
    prototypes: bool = True
    prototype_rounds: int = 3
    contention: bool = True
    contention_connections: tuple[int, ...] = (16, 64)
    anatomy: bool = True
    anatomy_seconds: float = 6.0
    quick: bool = False
    redis_limits: bool = True  # rate-limit storage in Redis when it answers (production's)
    ab: str | None = None
    ab_scenarios: tuple[str, ...] = ("healthz", "validate")
    ab_rounds: int = 5
    ab_micro_distinct: int = 0
    ab_backend: str = "sqlite"
    ab_micro: bool = True
    ab_connections: tuple[int, ...] = (16,)
    scenarios: tuple[str, ...] = field(default_factory=lambda: tuple(BY_NAME))

    @classmethod
    def quick_round(cls) -> Settings:
        """`--quick`: every scenario and reference once, briefly — a smoke test."""
        return cls(
            duration=1.0,
            warmup=0.5,
            reps=1,
            quick=True,
            scale=False,
            prototypes=False,
            contention=False,
            anatomy=False,
        )
