"""Plain values the modules' routes share: the no-store headers of token responses and the
OpenAPI security requirement of Bearer routes (the HTTP layer itself is in app/http/)."""

from __future__ import annotations

# The headers of a response that carries tokens: no cache (browser, proxy) may keep it.
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}

# The OpenAPI security requirement of routes that take an access token.
BEARER_AUTH: list[dict[str, list[str]]] = [{"BearerAuth": []}]
