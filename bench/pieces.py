"""Which piece of the stack a profiler sample belongs to: the rules behind the "where the
time goes" tables (bench/anatomy.py).

A sample is a call stack (outermost first). Each piece has a level; the sample goes to the
matching frame of the highest level, the innermost one among equals. Levels encode "who
called whom matters": PyJWT under the license-token check is the token check (level 3
beats the library), SQL under the revocation look-up is the look-up (4), but the view's
own code under APIFlask's wrapper is the view (equal levels: the innermost wins).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

Frame = tuple[str, str]  # (function, file path)


@dataclass(frozen=True)
class Piece:
    name: str
    level: int
    match: Callable[[str, str], bool]


# Paths are relative to site-packages, the standard library or the repository
# (`flask/app.py`, `logging/__init__.py`, `app/auth/licensing/signing.py`), as py-spy prints them;
# functions are bare names (`info`, not `Logger.info`). See `frame()`.
def _in(*prefixes: str) -> Callable[[str, str], bool]:
    return lambda _func, path: path.startswith(prefixes)


def _fn(prefix: str, *functions: str) -> Callable[[str, str], bool]:
    return lambda func, path: path.startswith(prefix) and func in functions


def _either(*rules: Callable[[str, str], bool]) -> Callable[[str, str], bool]:
    return lambda func, path: any(rule(func, path) for rule in rules)


TX_ROUND_TRIPS = "transaction round trips (BEGIN, COMMIT, ROLLBACK, ping)"
# The rules too long for a row of the table below.
_TRANSACTION = _either(
    _fn("sqlalchemy/engine/default.py", "do_begin", "do_commit", "do_rollback", "do_ping"),
    _fn("app/kernel/db.py", "_begin"),
    _fn("psycopg/", "_start_query", "commit", "rollback", "_commit_gen", "_rollback_gen"),
)
_SQL = _either(_fn("sqlalchemy/engine/default.py", "do_execute", "do_executemany"), _in("psycopg/"))
_LIMIT_STORAGE = _either(
    _in("redis/", "limits/storage/", "app/http/redis_limits.py"),
    _fn("app/http/limits.py", "incr", "get", "get_expiry", "_sweep"),
)
PIECES = (
    Piece(
        "revocation look-up (access token)", 4, _fn("app/auth/accounts/tokens.py", "_is_revoked")
    ),
    Piece(TX_ROUND_TRIPS, 4, _TRANSACTION),
    Piece("metrics (prometheus_client)", 3, _in("prometheus_client/")),
    Piece(
        "access log (logging, JSON formatter)",
        3,
        _either(_in("logging/"), _fn("app/http/observability.py", "format")),
    ),
    Piece("request id (observability._start)", 3, _fn("app/http/observability.py", "_start")),
    Piece("security headers", 3, _fn("app/http/__init__.py", "add_security_headers")),
    Piece("license tokens and verdicts (Ed25519)", 3, _in("app/auth/licensing/signing.py")),
    Piece(
        "access token (flask-jwt-extended, PyJWT)",
        3,
        _in("flask_jwt_extended/", "app/http/bearer.py"),
    ),
    Piece(
        "ownership guard",
        3,
        _either(_in("app/kernel/ownership.py"), _fn("app/http/blueprints.py", "_enter_module")),
    ),
    Piece("rate-limit storage (Redis round trips)", 3, _LIMIT_STORAGE),
    Piece("password hash (argon2id)", 3, _in("argon2/")),
    Piece("sandbox payment gateway", 3, _in("app/orders/payments.py")),
    Piece(
        "rate limiter (flask-limiter, limits)",
        2,
        _in("flask_limiter/", "limits/", "app/http/limits.py"),
    ),
    Piece(
        "rate-limit keys",
        2,
        _fn("app/http/limits.py", "client_ip", "token_in_body", "email_in_body", "key", "total"),
    ),
    Piece("access log (fields, observability._finish)", 2, _in("app/http/observability.py")),
    Piece(
        "JSON provider (parse, dumps)",
        2,
        _either(_in("flask/json/"), _fn("app/http/__init__.py", "loads")),
    ),
    Piece("APIFlask + Pydantic (validate input, render output)", 2, _in("apiflask/", "pydantic")),
    Piece("SQL statements (driver)", 2, _SQL),
    Piece(
        "ORM flush (unit of work)",
        2,
        _in("sqlalchemy/orm/unitofwork.py", "sqlalchemy/orm/persistence.py"),
    ),
    Piece(
        "session & transaction (SQLAlchemy, kernel.db)",
        2,
        _in("sqlalchemy/", "app/kernel/db.py"),
    ),
    Piece("view & services (app code)", 2, _in("app/")),
    Piece(
        "ProxyFix",
        1,
        _either(_in("werkzeug/middleware/proxy_fix.py"), _fn("app/http/__init__.py", "__call__")),
    ),
    Piece("Flask & Werkzeug (routing, request, response, contexts)", 1, _in("flask/", "werkzeug/")),
    Piece("gunicorn (accept, HTTP parse, write)", 1, _in("gunicorn")),
)
OTHER = "other (interpreter, stdlib outside the above)"
ORDER = [p.name for p in PIECES] + [OTHER]
_PYSPY_FRAME = re.compile(r"^(.*) \((.*?)(?::\d+)?\)$")


# Wrappers that call the view or a facade: what runs under them is not theirs.
TRANSPARENT = (
    ("flask_jwt_extended/view_decorators.py", "decorator"),
    ("app/http/bearer.py", "verified"),  # the service's own jwt_required
    ("app/kernel/ownership.py", "wrapper"),
)


_ROOT = str(Path(__file__).resolve().parents[1]) + "/"
_STDLIB = re.compile(r"^.*/lib/python3\.\d+/")


def frame(func: str, path: str) -> Frame:
    """(bare function name, short path) of a frame as a profiler reports it."""
    if "site-packages/" in path:
        path = path.rpartition("site-packages/")[2]
    elif path.startswith(_ROOT):
        path = path[len(_ROOT) :]
    else:
        path = _STDLIB.sub("", path)
    return func.rpartition(".")[2], path


def classify(stack: Iterable[Frame]) -> str:
    best: Piece | None = None
    for func, path in stack:
        if any(part in path and func == name for part, name in TRANSPARENT):
            continue
        for piece in PIECES:
            if piece.match(func, path):
                if best is None or piece.level >= best.level:
                    best = piece
                break
    return best.name if best else OTHER


# Leaves where a gunicorn process waits, not works: the master between signals, a worker
# for its next connection, or lingering after a response for the client to close (RFC 9112
# graceful close). py-spy cannot see that these are blocked in C (select, recv), so they
# are dropped here.
IDLE = {
    ("wait", "gunicorn/workers/sync.py"),
    ("wait_for_signals", "gunicorn/arbiter.py"),
    ("sleep", "gunicorn/arbiter.py"),
    ("select", "selectors.py"),
    ("close_graceful", "gunicorn/util.py"),
}


def pyspy_frames(line: str) -> tuple[list[Frame], int] | None:
    """A line of `py-spy record --format raw` (collapsed stacks: frames joined by ';',
    then the count) as frames, outermost first, without py-spy's process/thread labels;
    None for a sample of a process that was waiting (IDLE) or importing."""
    stack, _, count = line.rpartition(" ")
    if not stack or not count.isdigit():
        return None
    frames = []
    for raw in stack.split(";"):
        if raw.startswith(("process ", "thread ", "Thread ")):
            continue
        match = _PYSPY_FRAME.match(raw)
        frames.append(frame(match.group(1), match.group(2)) if match else (raw, ""))
    if not frames or frames[-1] in IDLE:
        return None
    if any(path.startswith("<frozen importlib") for _, path in frames):
        return None  # a worker still importing the app: boot, not a request
    return frames, int(count)


def shares(samples: Iterable[tuple[list[Frame], float]]) -> dict[str, float]:
    """Share of the total weight per piece (0..1), in ORDER."""
    totals: dict[str, float] = {}
    for frames, weight in samples:
        piece = classify(frames)
        totals[piece] = totals.get(piece, 0.0) + weight
    total = sum(totals.values()) or 1.0
    return {name: totals[name] / total for name in ORDER if name in totals}
