"""Every error is RFC 9457 problem+json; none carries a stack trace; OpenAPI is served."""

from __future__ import annotations

import io
import json

import pytest
from flask import request
from pydantic import BaseModel, Field
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.test import EnvironBuilder

from app import create_app
from app.kernel.errors import Conflict
from tests.helpers import assert_problem


class Widget(BaseModel):
    name: str = Field(min_length=1, max_length=20)
    count: int = Field(ge=0)


@pytest.fixture
def app(app_config):
    """The real app plus a few routes that raise what real routes will raise."""
    application = create_app(app_config)

    @application.post("/_test/widgets")
    @application.input(Widget)
    def make_widget(json_data: Widget):
        return {"name": json_data.name}, 201

    @application.get("/_test/boom")
    def boom():
        raise RuntimeError("secret internal detail /etc/passwd")

    @application.get("/_test/conflict")
    def conflict():
        raise Conflict("Already there.", code="widget_exists", widget="w1")

    yield application
    application.extensions["db"].dispose()


pytestmark = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)


@pytest.mark.parametrize(
    ("path", "status", "code", "fields"),
    [
        ("/nope", 404, "not_found", {"type": "/problems/not_found", "title": "Not Found"}),
        # a domain error carries its code and its extras
        ("/_test/conflict", 409, "widget_exists", {"detail": "Already there.", "widget": "w1"}),
    ],
    ids=["unknown route", "domain error"],
)
def test_errors_are_problems_with_their_fields(client, path, status, code, fields):
    body = assert_problem(client.get(path), status, code)
    assert {name: body.get(name) for name in fields} == fields


def test_wrong_method_is_a_405_problem_with_allow(client):
    response = client.delete("/healthz")
    assert_problem(response, 405, "method_not_allowed")
    assert "GET" in response.headers["Allow"]


def test_malformed_json_is_a_400_problem(client):
    response = client.post("/_test/widgets", data=b'{"name": ', content_type="application/json")
    body = assert_problem(response, 400, "malformed_json")
    assert "not valid JSON" in body["detail"]


def test_invalid_utf8_is_a_400_problem(client):
    response = client.post(
        "/_test/widgets", data=b'{"name": "\xff\xfe"}', content_type="application/json"
    )
    assert_problem(response, 400, "malformed_json")


def test_invalid_input_is_a_422_problem_with_errors(client):
    response = client.post("/_test/widgets", json={"name": "", "count": -1})
    body = assert_problem(response, 422, "validation_error")
    locs = {tuple(e["loc"]) for e in body["errors"]}
    assert locs == {("json", "name"), ("json", "count")}
    assert all(e["msg"] for e in body["errors"])


def test_missing_fields_and_wrong_shape_are_422(client):
    body = assert_problem(client.post("/_test/widgets", json={}), 422, "validation_error")
    assert {tuple(e["loc"]) for e in body["errors"]} == {("json", "name"), ("json", "count")}
    assert_problem(client.post("/_test/widgets", json=[1, 2]), 422, "validation_error")


def test_valid_input_passes(client):
    response = client.post("/_test/widgets", json={"name": "w", "count": 2})
    assert response.status_code == 201
    assert response.get_json() == {"name": "w"}


def test_oversized_body_is_a_413_problem(client):
    response = client.post(
        "/_test/widgets", data=b"x" * (1024 * 1024 + 1), content_type="application/json"
    )
    assert_problem(response, 413, "payload_too_large")


def _chunked(body: bytes) -> dict:
    """The environ of a POST of `body` as gunicorn hands on a chunked request: no
    Content-Length, the stream ended by the server (`wsgi.input_terminated`)."""
    environ = EnvironBuilder(
        path="/_test/widgets",
        method="POST",
        input_stream=io.BytesIO(body),
        content_type="application/json",
        headers={"Transfer-Encoding": "chunked"},
    ).get_environ()
    del environ["CONTENT_LENGTH"]  # the builder counts the stream; a chunked request has none
    environ["wsgi.input_terminated"] = True
    return environ


def _streamed(client, body: bytes) -> tuple[int, dict]:
    """`body` POSTed chunked to the WSGI app itself (the test client would give the app an
    empty body instead): the status and the JSON answer."""
    environ = _chunked(body)
    status: list[str] = []
    answer = b"".join(client.application(environ, lambda s, _h, _e=None: status.append(s)))
    return int(status[0].split()[0]), json.loads(answer)


def test_a_streamed_body_over_the_limit_is_a_413_problem_not_its_first_megabyte(client):
    """A chunked body is counted as it is read: one over the limit is refused whole, not cut
    at the limit and its first MiB parsed as if it were the body (valid JSON followed by
    anything was accepted; invalid, a misleading 400)."""
    limit = 1024 * 1024
    valid = b'{"name": "w", "count": 2}'
    for body in (valid + b" " * limit, valid[:-1] + b', "x": "' + b"a" * limit + b'"}'):
        status, answer = _streamed(client, body)
        assert (status, answer["code"]) == (413, "payload_too_large")
    assert _streamed(client, valid) == (201, {"name": "w"})
    assert _streamed(client, valid + b" " * (limit - len(valid))) == (201, {"name": "w"})


def test_a_streamed_body_one_byte_over_is_refused_however_often_it_is_read(app):
    """The check reads a byte beyond the limit: a second reading of the body (a rate-limit
    key reads it before the view) must not take that byte as the end of the body."""
    body = b"{}" + b" " * (1024 * 1024 - 2) + b"x"
    with app.request_context(_chunked(body)):
        for _ in range(3):
            with pytest.raises(RequestEntityTooLarge):
                request.get_data()


def test_unexpected_errors_are_500_without_details(client, caplog):
    response = client.get("/_test/boom")
    body = assert_problem(response, 500, "internal_error")
    assert "secret" not in response.get_data(as_text=True)
    assert "RuntimeError" not in response.get_data(as_text=True)
    assert body["detail"] == "An unexpected error occurred."
    assert "secret internal detail" in caplog.text  # logged for operators


def test_errors_carry_security_headers(client):
    response = client.get("/nope")
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["X-Frame-Options"] == "DENY"


def test_openapi_document_is_served(client):
    response = client.get("/openapi.json")
    assert response.status_code == 200
    spec = response.get_json()
    assert spec["openapi"].startswith("3.1")
    assert "/healthz" in spec["paths"] and "/readyz" in spec["paths"]
    assert spec["info"]["title"] == "Licensing API"


def test_unusual_statuses_still_render(app_config):
    from app.kernel.errors import ProblemError

    application = create_app(app_config)

    @application.get("/_test/teapot")
    def teapot():
        raise ProblemError("Odd but fine.", status=460, code="odd")

    response = application.test_client().get("/_test/teapot")
    body = assert_problem(response, 460, "odd")
    assert body["title"] == "Client Error"
    application.extensions["db"].dispose()


def test_a_missing_table_is_a_500_not_an_outage(app_config, tmp_path):
    """SQLite reports "no such table" as OperationalError; it is a bug, not a 503."""
    from sqlalchemy import func, select

    from app.kernel.db import get_session
    from app.kernel.models import OutboxEvent
    from app.kernel.ownership import KERNEL, acting_as

    (tmp_path / "never-migrated.db").touch(mode=0o600)  # only `db upgrade` would create it
    app_config.update(DATABASE_URL=f"sqlite:///{tmp_path}/never-migrated.db", DB_SCHEMAS=False)
    application = create_app(app_config)

    @application.get("/_test/count")
    def count():
        with acting_as(KERNEL):
            return {"n": get_session().scalar(select(func.count()).select_from(OutboxEvent))}

    assert_problem(application.test_client().get("/_test/count"), 500, "internal_error")
    application.extensions["db"].dispose()


def test_the_openapi_document_lists_the_common_errors(client):
    spec = client.get("/openapi.json").get_json()
    register = spec["paths"]["/api/v1/auth/register"]["post"]["responses"]
    assert {"400", "413", "422", "500", "503"} <= set(register)
    assert "application/problem+json" in register["400"]["content"]
    me = spec["paths"]["/api/v1/auth/me"]["get"]["responses"]
    assert "401" in me
    assert "/metrics" not in spec["paths"]


def test_the_openapi_document_declares_the_headers_views_read(client):
    spec = client.get("/openapi.json").get_json()
    order = spec["paths"]["/api/v1/orders"]["post"]["parameters"]
    assert [(p["name"], p["in"], p["required"]) for p in order] == [
        ("Idempotency-Key", "header", True)
    ]
    patch = spec["paths"]["/api/v1/admin/licenses/{license_id}"]["patch"]["parameters"]
    assert ("If-Match", "header", True) in [(p["name"], p["in"], p.get("required")) for p in patch]
