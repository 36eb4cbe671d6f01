"""auth: accounts (users, passwords, tokens) and licensing (licenses, seats, subscriptions).

`accounts/` and `licensing/` each hold a service, schemas, routes and commands; `models.py`
holds the tables of both. Other modules use auth only through `app.auth.api`.
"""

from typing import Any

from app.http.blueprints import module_blueprint
from app.kernel.ownership import registry

MODULE = "auth"
declaration = registry.declare(
    MODULE,
    owns={
        "users",
        "login_throttles",
        "token_revocations",
        "licenses",
        "subscriptions",
        "browser_sessions",
    },
    reads=set(),
)

bp = module_blueprint(MODULE, __name__, url_prefix="/api/v1", tag="Auth")
# Routes that must live at the site root (/.well-known/…).
root_bp = module_blueprint(MODULE, __name__, name="auth_root", tag="Licenses")


def init_app(app: Any) -> None:
    """Register auth's routes, its JWT callbacks and its commands."""
    from app.auth.accounts import cli as accounts_cli
    from app.auth.accounts import routes as accounts_routes  # noqa: F401 - routes attach to bp
    from app.auth.accounts import tokens
    from app.auth.licensing import cli as licensing_cli
    from app.auth.licensing import routes as licensing_routes  # noqa: F401 - routes attach to bp
    from app.auth.licensing import signing

    accounts_cli.init_app(app)
    licensing_cli.init_app(app)

    tokens.init_app(app)
    app.register_blueprint(bp)

    @app.errorhandler(signing.SigningKeyError)
    def _signing_unavailable(error: signing.SigningKeyError) -> Any:
        # Not the client's fault and not a bug: the deployment's key is missing or
        # unreadable (/readyz names it). Logged; the detail stays out of the response.
        from app.http.problems import problem_response

        signing.log.error("license signing unavailable: %s", error)
        return problem_response(
            503, "signing_unavailable", "License tokens cannot be signed right now."
        )

    app.register_blueprint(root_bp)
    if app.config["APP_ENV"] == "production":
        with app.app_context():
            signing.license_keys()  # fail fast on a missing or unreadable key
