"""The web console: the customer portal at /account/ and the admin console at /console/.

Server-rendered Jinja pages over the same module services as the API (docs/adr/0014-web-
console.md). Each page's blueprint runs as its module under the ownership guard:
`account` as auth, `shop` as orders, `admin` as admin. The plumbing shared by all three —
the cookie session that exists on console paths only, CSRF, the HTML error pages, the
strict CSP — lives in `app.console.web`.
"""

from __future__ import annotations

from typing import Any


def init_app(app: Any) -> None:
    """Give console paths their cookie session and CSRF, and register the three blueprints."""
    from app.console import account, admin, shop, web

    web.init_app(app)
    app.register_blueprint(web.static_bp)
    app.register_blueprint(account.bp)
    app.register_blueprint(shop.bp)
    app.register_blueprint(admin.bp)
