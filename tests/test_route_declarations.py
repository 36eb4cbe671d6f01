"""Route declarations (app/http/routes.py) refuse, at import, a route that would be open or
undocumented: an ADMIN route on a blueprint that does not check the admin role, and a route
without a summary."""

from __future__ import annotations

from typing import Any

import pytest
from apiflask import APIBlueprint, APIFlask

from app.http.blueprints import admin_only
from app.http.routes import ADMIN, PUBLIC, Endpoints


def test_an_admin_route_needs_a_blueprint_that_checks_admins() -> None:
    bp = APIBlueprint("unguarded", __name__)

    with pytest.raises(ValueError, match="does not check admins"):
        Endpoints(bp).endpoint(ADMIN, "admin_anything")

    admin_only(bp, lambda _session, _user_id: True)
    Endpoints(bp).endpoint(ADMIN, "admin_anything")  # now declared


def test_a_route_without_a_summary_is_refused() -> None:
    declare = Endpoints(APIBlueprint("undocumented", __name__)).endpoint(PUBLIC, "x_get")

    def undocumented() -> Any:
        return {}

    with pytest.raises(ValueError, match="x_get: a route's docstring is its summary"):
        declare(undocumented)


def test_the_docstrings_first_line_is_the_summary() -> None:
    app = APIFlask(__name__)
    bp = APIBlueprint("documented", __name__)
    api = Endpoints(bp)

    @bp.get("/thing")
    @api.endpoint(PUBLIC, "x_get")
    @api.io(output={})
    def documented() -> Any:
        """One thing, by id

        More about it: the operation's description."""
        return {}

    app.register_blueprint(bp)
    operation = app.spec["paths"]["/thing"]["get"]
    assert operation["summary"] == "One thing, by id"
    assert operation["description"] == "More about it: the operation's description."
    assert operation["operationId"] == "x_get"
