"""The licensing platform: a modular monolith of auth, admin and orders over one database."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from apiflask import APIFlask

from app import http
from app.config import ConfigError
from app.http import observability, openapi
from app.kernel import files
from app.settings import configure_settings, finish_settings

__all__ = ["create_app"]

log = logging.getLogger(__name__)

# Outside production, secrets that are not set are generated into the instance folder.
SECRET_FILES = {"SECRET_KEY": "secret-key", "JWT_SECRET_KEY": "jwt-secret-key"}


# Error responses are documented per route as application/problem+json (app.http.openapi.
# problem_responses), so APIFlask's generic application/json error entries are turned off.
OPENAPI_SETTINGS = {
    "AUTO_VALIDATION_ERROR_RESPONSE": False,
    "AUTO_AUTH_ERROR_RESPONSE": False,
    "AUTO_404_RESPONSE": False,
    # No `servers` from the first request's Host (APIFlask would cache it for every later
    # client): without it, OpenAPI means the host the document was fetched from.
    "AUTO_SERVERS": False,
    "SECURITY_SCHEMES": {"BearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
}


def instance_path(config: Mapping[str, Any] | None = None) -> str | None:
    """The instance folder: `INSTANCE_PATH` (config, then environment), else Flask's
    default (`instance/` beside the package)."""
    path = (config or {}).get("INSTANCE_PATH") or os.environ.get("INSTANCE_PATH")
    return os.path.abspath(path) if path else None


def create_app(config: Mapping[str, Any] | None = None) -> APIFlask:
    """Build the application. `config` overrides settings read from the environment.

    No side effects beyond reading configuration and the instance folder (created 0700;
    outside production, the secrets generated there on first start): no migrations, no
    network connections.
    """
    app = APIFlask(
        __name__,
        title="Licensing API",
        version="1.0",
        spec_path="/openapi.json",
        docs_path=None,
        instance_path=instance_path(config),
        instance_relative_config=True,
    )
    http.use_api_classes(app)
    configure_settings(app, config)  # every setting validated, then copied to app.config
    app.config.from_mapping(OPENAPI_SETTINGS)
    try:
        files.private_dir(app.instance_path)
    except OSError as exc:
        raise ConfigError(
            f"the instance folder {app.instance_path} cannot be made private: "
            f"{exc.strerror or exc} (set INSTANCE_PATH to a folder this user may create)"
        ) from None
    observability.configure_logging(app.config["LOG_LEVEL"], app.config["LOG_FORMAT"])
    try:
        use_instance_secrets(app)
    except OSError as exc:
        raise ConfigError(
            f"cannot keep the generated secrets in {app.instance_path}: {exc.strerror or exc} "
            "(set SECRET_KEY and JWT_SECRET_KEY, or INSTANCE_PATH to a writable folder)"
        ) from None
    finish_settings(app)  # generated secrets recorded, weak ones refused

    register_extensions(app)
    register_blueprints(app)
    register_commands(app)
    app.spec_processor(openapi.processor(app))  # only one is kept
    return app


def use_instance_secrets(app: APIFlask) -> None:
    """Development and testing: SECRET_KEY / JWT_SECRET_KEY that are not set are generated
    once per instance folder (random, mode 0600) and shared by every process using it.
    Nothing is ever signed with a value from the source code. Production must set both."""
    if app.config["APP_ENV"] == "production":
        return
    generated = []
    for name in SECRET_FILES:
        if not app.config.get(name):
            app.config[name], made = files.instance_secret(app.instance_path, SECRET_FILES[name])
            if made:
                generated.append(name)
    if generated:
        _say_where_secrets_are(tuple(generated), app.instance_path)


def _say_where_secrets_are(names: tuple[str, ...], folder: str) -> None:
    """Said once per instance folder, by the process that generated the secrets: later
    processes (every worker, every CLI command) just use them, quietly."""
    paths = ", ".join(os.path.join(folder, SECRET_FILES[name]) for name in names)
    log.info(
        "%s not set: using the secrets generated for this instance in %s (mode 0600). "
        "Set them in production.",
        " and ".join(names),
        paths,
    )


def register_extensions(app: APIFlask) -> None:
    """The database, then the HTTP layer (errors, limits, tokens, request ids, access log,
    metrics, security headers, the proxy fix: app/http/)."""
    # The modules declare their tables first: the engine's flat layout maps their schemas.
    from app import admin, auth, orders, webhooks  # noqa: F401
    from app.kernel import db

    db.init_app(app)
    http.init_app(app)


def register_blueprints(app: APIFlask) -> None:
    from app import admin, auth, console, orders, webhooks
    from app.operations import health

    health.init_app(app)
    auth.init_app(app)
    admin.init_app(app)
    orders.init_app(app)
    webhooks.init_app(app)
    console.init_app(app)  # after the modules: its pages call their services


def register_commands(app: APIFlask) -> None:
    """The kernel's commands and the backups'; each module registers its own in init_app."""
    from app.kernel import cli
    from app.operations import cli as backups_cli

    cli.init_app(app)
    backups_cli.init_app(app)
