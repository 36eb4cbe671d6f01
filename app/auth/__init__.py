"""auth: users, credentials, tokens, licenses, subscriptions.

Other modules use it only through `app.auth.api`.
"""

from typing import Any

from app.kernel.ownership import registry
from app.kernel.web import module_blueprint

MODULE = "auth"
declaration = registry.declare(MODULE, owns={"users", "token_revocations"}, reads=set())

bp = module_blueprint(MODULE, __name__, url_prefix="/api/v1", tag="Auth")


def init_app(app: Any) -> None:
    """Register auth's routes and its JWT callbacks."""
    from app.auth import routes, tokens  # noqa: F401 - routes attach themselves to bp

    tokens.init_app(app)
    app.register_blueprint(bp)
