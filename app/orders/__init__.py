"""orders: plans, orders, payments, renewals.

Orders owns `orders` and `idempotency_keys`. Everything it does to subscriptions or audit
entries goes through `app.auth.api` and `app.admin.api`, inside its own transaction.
Other modules use it only through `app.orders.api`.
"""

from typing import Any

from app.http.blueprints import module_blueprint
from app.kernel.ownership import registry

MODULE = "orders"
declaration = registry.declare(MODULE, owns={"orders", "idempotency_keys"}, reads=set())

bp = module_blueprint(MODULE, __name__, url_prefix="/api/v1", tag="Orders")


def init_app(app: Any) -> None:
    from app.config import ConfigError
    from app.http import openapi
    from app.orders import cli, routes  # routes attach themselves to bp
    from app.orders.payments import make_gateway
    from app.orders.plans import load_catalog, renewal_lead_problem

    # Built at start-up: an unknown or broken PAYMENT_PROVIDER, or a bad PLANS_JSON, stops
    # create_app (one line, exit 2) instead of failing the first order.
    app.extensions["payments"] = make_gateway(app.config)
    try:
        app.extensions["plans"] = load_catalog(app.config["PLANS_JSON"])
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    problem = renewal_lead_problem(app.config["RENEWAL_LEAD"], app.extensions["plans"])
    if problem:
        raise ConfigError(problem)
    app.register_blueprint(bp)
    openapi.refine(app, routes.document_catalog(app.extensions["plans"]))
    cli.init_app(app)
