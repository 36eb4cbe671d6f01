"""The service with a bounded cache turned off (`MEMORY_PROBE`), served beside the service
as it is by `python -m bench.memory server --probe …`: what the cache adds to a worker's
memory over a run, told apart from anything else that grows.

    MEMORY_PROBE=no-token-cache gunicorn -c deploy/gunicorn.conf.py bench.memory_probe:app
"""

from __future__ import annotations

import os
from typing import Any

PROBES = ("no-token-cache",)
PROBE = os.environ.get("MEMORY_PROBE", "")
if PROBE and PROBE not in PROBES:
    raise SystemExit(f"MEMORY_PROBE: unknown {PROBE!r}; known: {PROBES}")

if PROBE == "no-token-cache":
    from app.auth.licensing import signing

    _init = signing.KeySet.__init__

    def _uncached(self: Any, keys: Any, verified_cache_size: int = 0) -> None:
        _init(self, keys, 0)  # no entry kept: every token verified again

    signing.KeySet.__init__ = _uncached  # type: ignore[method-assign]

from wsgi import app  # noqa: E402 - after the probe

__all__ = ["app"]
