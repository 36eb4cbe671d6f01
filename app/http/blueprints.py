"""module_blueprint(): a blueprint whose requests run as its module for the ownership guard;
admin_only(): a blueprint every request to which needs the admin role."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

from apiflask import APIBlueprint
from flask import g, request
from flask_jwt_extended import get_jwt, verify_jwt_in_request

from app.kernel import ownership
from app.kernel.db import get_session
from app.kernel.errors import Forbidden

_admin_only: weakref.WeakSet[APIBlueprint] = weakref.WeakSet()  # the blueprints admin_only guards


def module_blueprint(
    module: str, import_name: str, *, name: str | None = None, **options: Any
) -> APIBlueprint:
    """An APIBlueprint whose requests run as `module` for the ownership guard."""
    ownership.registry.module(module)  # the module must have declared itself first
    bp = APIBlueprint(name or module, import_name, **options)

    # A stack on `g`: a request made inside another (a test client's, in the same thread)
    # shares the outer one's app context and `g`; each leaves the module it entered.
    @bp.before_request
    def _enter_module() -> None:
        g.setdefault("_acting_tokens", []).append(ownership._acting.set(module))

    @bp.teardown_request
    def _leave_module(_exc: BaseException | None) -> None:
        tokens = g.get("_acting_tokens")
        token = tokens.pop() if tokens else None
        if token is not None:
            try:
                ownership._acting.reset(token)
            except ValueError:  # reset from another context: just clear it
                ownership._acting.set(None)

    return bp


def admin_only(bp: APIBlueprint, is_admin: Callable[[Any, str], bool]) -> None:
    """Every request to `bp` needs a valid access token of a user whose role is admin:
    checked once for the whole blueprint, so a new route cannot forget it. `is_admin(session,
    user_id)` is the user's current role: a demoted admin's token stops working at once, not
    when it expires."""

    @bp.before_request
    def _require_admin() -> None:
        if request.method == "OPTIONS":
            return  # Flask answers OPTIONS itself; there is nothing to protect
        verify_jwt_in_request()
        claims = get_jwt()
        if claims.get("role") != "admin" or not is_admin(get_session(), claims["sub"]):
            raise Forbidden("This needs the admin role.", code="admin_required")

    _admin_only.add(bp)


def is_admin_only(bp: APIBlueprint) -> bool:
    """Whether admin_only guards `bp`."""
    return bp in _admin_only
