"""admin: the audit log, statistics, license administration.

Admin owns `audit_logs` (and its archive) and may only read auth's tables. License changes
go through `app.auth.api`. Other modules use admin only through `app.admin.api`.
"""

from typing import Any

from app.http.blueprints import module_blueprint
from app.kernel.ownership import registry

MODULE = "admin"
declaration = registry.declare(
    MODULE,
    owns={"audit_logs", "audit_logs_archive"},
    reads={"users", "token_revocations", "licenses", "subscriptions", "orders", "idempotency_keys"},
)

bp = module_blueprint(MODULE, __name__, url_prefix="/api/v1/admin", tag="Admin")


def init_app(app: Any) -> None:
    """Register admin's routes (every one of them requires the admin role) and the events
    its consumer applies when it runs on its own database (phase 3), and its commands."""
    from app.admin import cli, routes, service  # noqa: F401 - routes attach themselves to bp
    from app.kernel import events

    cli.init_app(app)
    app.register_blueprint(bp)
    events.register_handler(MODULE, service.AUDIT_RECORDED, service.apply_audit_event)
