"""webhooks: signed delivery of events to vendors' systems (issue 19, ADR 0013).

Webhooks owns `webhook_endpoints` and `webhook_deliveries`. When an event is published
(kernel.events.publish, in the transaction of the change it reports), webhooks adds one
delivery per enabled endpoint subscribed to its type, in that same transaction: a rolled-
back change sends nothing. `flask webhooks deliver` posts them, signed per the Standard
Webhooks specification, retrying with backoff. Admins manage endpoints under
/api/v1/admin/webhooks. Other modules use it only through `app.webhooks.api`.
"""

from typing import Any

from app.http.blueprints import module_blueprint
from app.kernel.ownership import registry

MODULE = "webhooks"
declaration = registry.declare(MODULE, owns={"webhook_endpoints", "webhook_deliveries"})

bp = module_blueprint(MODULE, __name__, url_prefix="/api/v1/admin/webhooks", tag="Webhooks")


def init_app(app: Any) -> None:
    """Routes (admins only), the `flask webhooks` commands, and the fan-out of published
    events into deliveries."""
    from app.kernel import events
    from app.webhooks import cli, routes, service  # noqa: F401 - routes attach themselves to bp

    app.register_blueprint(bp)
    cli.init_app(app)
    events.on_publish(service.fan_out)
