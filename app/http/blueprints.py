"""module_blueprint(): a blueprint whose requests run as its module for the ownership guard."""

from __future__ import annotations

from typing import Any

from apiflask import APIBlueprint
from flask import g

from app.kernel import ownership


def module_blueprint(
    module: str, import_name: str, *, name: str | None = None, **options: Any
) -> APIBlueprint:
    """An APIBlueprint whose requests run as `module` for the ownership guard."""
    ownership.registry.module(module)  # the module must have declared itself first
    bp = APIBlueprint(name or module, import_name, **options)

    @bp.before_request
    def _enter_module() -> None:
        g._acting_token = ownership._acting.set(module)

    @bp.teardown_request
    def _leave_module(_exc: BaseException | None) -> None:
        token = g.pop("_acting_token", None)
        if token is not None:
            try:
                ownership._acting.reset(token)
            except ValueError:  # reset from another context: just clear it
                ownership._acting.set(None)

    return bp
