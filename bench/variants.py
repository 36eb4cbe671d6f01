"""The service with prototyped optimisations applied from outside app/ — to measure each
one's gain before anyone changes the service (issue 17 item 3).

    BENCH_VARIANT=metrics-once+access-log-once gunicorn -c deploy/gunicorn.conf.py \\
        bench.variants:app

`BENCH_VARIANT` names patches of bench/patches.py joined by "+" (`all`: every recommended
one; `no-metrics`: metrics off, to see what they cost). Everything else is the production
app of `wsgi.py`.
"""

from __future__ import annotations

import os

from bench.patches import AFTER, ALL, BEFORE

VARIANT = [n for n in os.environ.get("BENCH_VARIANT", "").split("+") if n]
if VARIANT == ["all"]:
    VARIANT = ALL
unknown = set(VARIANT) - set(BEFORE) - set(AFTER)
if unknown:
    raise SystemExit(f"BENCH_VARIANT: unknown {sorted(unknown)}; known: {[*BEFORE, *AFTER]}")
for name in VARIANT:
    if name in BEFORE:
        BEFORE[name]()  # before the routes import what they patch

from wsgi import app  # noqa: E402 - after the patches above

for name in VARIANT:
    if name in AFTER:
        AFTER[name](app)

__all__ = ["app"]
