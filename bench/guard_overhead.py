"""Measure what the ownership guard costs per statement (SQLite file, and PostgreSQL if given).

    .venv/bin/python bench/guard_overhead.py [DATABASE_URL]

Runs the same primary-key SELECT (the shape of the license-validation hot path) with the
guard on and off, interleaved in rounds so both see the same machine state, and prints
the median time per statement of each and the difference.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import select

from app.auth.models import User
from app.kernel import migrations
from app.kernel.db import make_sessionmaker, transaction
from app.kernel.engines import EngineSettings, make_engine
from app.kernel.ownership import acting_as

N = 5000
ROUNDS = 7


def per_statement_us(url: str, guard: str, user_id: str) -> float:
    engine = make_engine(EngineSettings(url=url, guard_mode=guard))
    try:
        with make_sessionmaker(engine)() as session, acting_as("auth"):
            stmt = select(User.email).where(User.user_id == user_id)
            for _ in range(200):  # warm the compiled cache and the pool
                session.execute(stmt).scalar_one()
            start = time.perf_counter()
            for _ in range(N):
                session.execute(stmt).scalar_one()
            return (time.perf_counter() - start) / N * 1e6
    finally:
        engine.dispose()


def guard_call_us(url: str) -> float:
    """The guard's own work per statement: cached table look-up plus the rights check."""
    import timeit

    from app.kernel import ownership

    engine = make_engine(EngineSettings(url=url, guard_mode="off"))
    captured = {}

    def capture(_conn, _cursor, _statement, _params, context, _many):
        captured["context"] = context

    from sqlalchemy import event

    event.listen(engine, "before_cursor_execute", capture)
    with make_sessionmaker(engine)() as session, acting_as("auth"):
        session.execute(select(User.email).where(User.user_id == "usr_bench")).all()
    engine.dispose()
    context = captured["context"]

    def one() -> None:
        module = ownership.acting_module()
        ownership.check(module, ownership._statement_tables(context))

    with acting_as("auth"):
        loops = 200_000
        best = min(timeit.repeat(one, number=loops, repeat=5))
    return best / loops * 1e6


def main() -> None:
    if len(sys.argv) > 1:
        url = sys.argv[1]
    else:
        url = f"sqlite:///{Path(tempfile.mkdtemp()) / 'guard.db'}"
        migrations.upgrade(url)
    engine = make_engine(EngineSettings(url=url))
    with make_sessionmaker(engine)() as session, acting_as("auth"), transaction(session):
        user = User(user_id="usr_bench", email="bench@example.com", password_hash="x")
        session.merge(user)
    engine.dispose()

    on, off = [], []
    for _ in range(ROUNDS):
        off.append(per_statement_us(url, "off", "usr_bench"))
        on.append(per_statement_us(url, "raise", "usr_bench"))
    med_on, med_off = statistics.median(on), statistics.median(off)
    print(f"backend: {url.split(':')[0]}   {N} statements x {ROUNDS} rounds")
    print(f"guard off : {med_off:7.2f} µs/statement")
    print(f"guard on  : {med_on:7.2f} µs/statement")
    percent = (med_on / med_off - 1) * 100
    print(f"cost      : {med_on - med_off:+7.2f} µs/statement ({percent:+.1f}%)")
    print(f"guard call: {guard_call_us(url):7.2f} µs/statement (the check alone, timeit)")


if __name__ == "__main__":
    main()
