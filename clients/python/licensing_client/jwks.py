"""The service's public keys, cached on disk for offline checks.

The cache honours the JWKS answer's `Cache-Control: max-age`; a token or verdict with a
`kid` the cache does not hold triggers a refresh (key rotation needs no app update), but
never more than one fetch a minute, so a flood of forged kids cannot turn the app into a
load on the service. When the service cannot be reached the cached keys keep serving.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt

from licensing_client.errors import LicensingError
from licensing_client.state import read_json, write_private

MIN_REFRESH_INTERVAL = 60.0
_MAX_AGE = re.compile(r"(?:^|,)\s*max-age\s*=\s*(\d+)", re.IGNORECASE)


def max_age_of(cache_control: str | None) -> float:
    """Seconds the document may be used without asking again (0: ask every time)."""
    value = cache_control or ""
    if re.search(r"no-store|no-cache", value, re.IGNORECASE):
        return 0.0
    match = _MAX_AGE.search(value)
    return float(match.group(1)) if match else 0.0


class JwksCache:
    def __init__(
        self,
        path: Path | None,
        fetch: Callable[[], tuple[dict[str, Any], str | None]],
        clock: Callable[[], float],
        min_refresh_interval: float = MIN_REFRESH_INTERVAL,
    ) -> None:
        self.path = path
        self._fetch = fetch  # -> (the JWKS document, its Cache-Control header)
        self._clock = clock
        self._min_interval = min_refresh_interval
        self._lock = threading.Lock()
        self._doc: dict[str, Any] | None = None
        self.fetches = 0  # how many times the service was asked (for tests and logs)

    def _load(self) -> dict[str, Any]:
        if self._doc is None:
            self._doc = read_json(self.path)
        return self._doc

    def _keys(self) -> dict[str, dict[str, Any]]:
        keys = self._load().get("jwks", {}).get("keys", [])
        return {k["kid"]: k for k in keys if isinstance(k, dict) and "kid" in k}

    def _refresh(self) -> None:
        """Ask the service, unless it was asked less than a minute ago. A failure keeps
        the cached keys (and counts as an attempt)."""
        doc = self._load()
        now = self._clock()
        attempted = doc.get("attempted_at")
        if attempted is not None and 0 <= now - attempted < self._min_interval:
            return
        doc = {**doc, "attempted_at": now}
        self.fetches += 1
        try:
            jwks, cache_control = self._fetch()
        except LicensingError:
            pass
        else:
            doc.update(jwks=jwks, fetched_at=now, max_age=max_age_of(cache_control))
        self._doc = doc
        if self.path is not None:
            write_private(self.path, doc)

    def key(self, kid: str, *, online: bool = True) -> jwt.PyJWK | None:
        """The public key `kid`, or None. `online=False`: from the cache only."""
        with self._lock:
            doc = self._load()
            fetched = doc.get("fetched_at")
            stale = fetched is None or self._clock() - fetched >= doc.get("max_age", 0)
            if online and (stale or kid not in self._keys()):
                self._refresh()
            jwk = self._keys().get(kid)
        if jwk is None:
            return None
        try:
            return jwt.PyJWK(jwk)
        except jwt.PyJWKError:
            return None
