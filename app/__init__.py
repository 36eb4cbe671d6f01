"""The licensing platform: a modular monolith of auth, admin and orders over one database."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from apiflask import APIFlask
from flask import Request

from app.config import check_production, load_config
from app.kernel.errors import MalformedJSON

__all__ = ["create_app"]


class ApiRequest(Request):
    """Malformed JSON is a 400 problem with code `malformed_json`, not a bare BadRequest."""

    def on_json_loading_failed(self, e: ValueError | None) -> Any:
        raise MalformedJSON("The request body is not valid JSON.")


def create_app(config: Mapping[str, Any] | None = None) -> APIFlask:
    """Build the application. `config` overrides settings read from the environment.

    No side effects beyond reading configuration: no migrations, no network connections.
    """
    app = APIFlask(
        __name__,
        title="Licensing API",
        version="1.0",
        spec_path="/openapi.json",
        docs_path=None,
        instance_relative_config=True,
    )
    app.request_class = ApiRequest
    settings = load_config(app.instance_path)
    settings.update(config or {})
    check_production(settings)
    app.config.from_mapping(settings)
    os.makedirs(app.instance_path, exist_ok=True)
    logging.basicConfig(level=app.config["LOG_LEVEL"])
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)

    register_extensions(app)
    register_blueprints(app)
    register_errorhandlers(app)
    register_commands(app)
    return app


def register_extensions(app: APIFlask) -> None:
    from app import extensions
    from app.kernel import db

    db.init_app(app)
    extensions.init_app(app)


def register_blueprints(app: APIFlask) -> None:
    from app import admin, auth, health, orders  # noqa: F401 - modules declare their tables

    health.init_app(app)


def register_errorhandlers(app: APIFlask) -> None:
    from app.kernel import errors

    errors.init_app(app)


def register_commands(app: APIFlask) -> None:
    from app import cli

    cli.init_app(app)
