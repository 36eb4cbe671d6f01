"""The contract at /openapi.json, as a client generator reads it (issue 20).

A client generated with openapi-python-client (a generator nobody here wrote) must come out
without a single warning, and drive a real gunicorn through its typed functions and models:
register → login → activate → validate → orders → admin stats, errors as the typed
`Problem`, the ETag → If-Match flow through declared headers. The document's own rules
(unique schema names, one Problem, declared headers, operationIds, tags) are checked on
the document itself, and every problem code the source can raise is in its enum.
"""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from app import create_app
from tests.helpers import BIN, ROOT, gunicorn_server, project_env, run_flask

PASSWORD = "correct horse battery"
PACKAGE = "generated_licensing_api"
TAGS = {"auth", "licensing", "orders", "admin", "operations"}


@pytest.fixture(scope="module")
def document(tmp_path_factory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("contract")
    app = create_app(
        {"APP_ENV": "testing", "TESTING": True, "DATABASE_URL": f"sqlite:///{folder}/unused.db"}
    )
    return app.test_client().get("/openapi.json").get_json()


def operations(document: dict[str, Any]):
    for path, item in document["paths"].items():
        for method, operation in item.items():
            yield f"{method.upper()} {path}", operation


def generate(document: dict[str, Any], folder: Path) -> str:
    """Run openapi-python-client on the document into `folder`; what it printed."""
    spec = folder / "openapi.json"
    spec.write_text(json.dumps(document))
    config = folder / "generator.json"
    config.write_text(json.dumps({"package_name_override": PACKAGE, "post_hooks": []}))
    done = subprocess.run(
        [
            str(BIN / "openapi-python-client"),
            "generate",
            "--path",
            str(spec),
            "--output-path",
            str(folder / PACKAGE),
            "--meta",
            "none",
            "--config",
            str(config),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    return output


# The generator's words for something it dropped or could not type.
WARNING = re.compile(r"^(WARNING|Warning|Unable to|Could not|Cannot)", re.MULTILINE)


@pytest.fixture(scope="module")
def generated(document, tmp_path_factory):
    folder = tmp_path_factory.mktemp("generated")
    output = generate(document, folder)
    warnings = WARNING.findall(output)
    assert not warnings, f"the generator warned {len(warnings)} time(s):\n{output}"
    sys.path.insert(0, str(folder))
    try:
        yield importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(folder))
        for name in [n for n in sys.modules if n == PACKAGE or n.startswith(PACKAGE + ".")]:
            del sys.modules[name]


def test_a_generated_client_builds_without_a_warning(generated):
    """Every operation keeps its success response: the six the generator used to drop
    (validate, a license, deactivate, orders, the dashboard, the batch) are typed."""
    from generated_licensing_api.api.admin import admin_batch_license_status
    from generated_licensing_api.api.licensing import (
        licensing_deactivate,
        licensing_get,
        licensing_validate,
    )
    from generated_licensing_api.api.orders import orders_dashboard, orders_list
    from generated_licensing_api.models import (
        BatchStatusOut,
        DashboardOut,
        LicenseOut,
        OrderPage,
        Problem,
        ValidateOut,
    )

    for module, model in [
        (licensing_validate, ValidateOut),
        (licensing_get, LicenseOut),
        (licensing_deactivate, LicenseOut),
        (orders_list, OrderPage),
        (orders_dashboard, DashboardOut),
        (admin_batch_license_status, BatchStatusOut),
    ]:
        returned = module.sync.__annotations__["return"]
        assert model.__name__ in str(returned), (module.__name__, returned)
        assert "Problem" in str(returned), (module.__name__, returned)
    assert Problem is not None


def test_schema_names_are_unique_and_plain(document):
    names = set(document["components"]["schemas"])
    assert not [n for n in names if "." in n or re.search(r"\d$", n)], sorted(names)
    text = json.dumps(document)
    for ref in set(re.findall(r'"#/components/schemas/([^"]+)"', text)):
        assert ref in names, ref
    assert "HTTPError" not in names


def test_every_error_response_is_the_one_problem(document):
    problem = document["components"]["schemas"]["Problem"]
    assert {"seats_limit", "current_version", "locked_until", "errors"} <= set(
        problem["properties"]
    )
    assert problem["properties"]["code"] == {"$ref": "#/components/schemas/ProblemCode"}
    for label, operation in operations(document):
        for status, response in operation["responses"].items():
            if int(status) >= 400:
                assert response["content"] == {
                    "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
                }, (label, status)


def source_codes() -> set[str]:
    """Every problem code written in the application's source."""
    patterns = [
        r'\bcode\s*=\s*"([a-z_]+)"',  # code="x" (a keyword) and code = "x" (a class)
        r'status, code = \d+, "([a-z_]+)"',
        r'problem(?:_response)?\(\s*\d+,\s*"([a-z_]+)"',
        r'_problem\(\s*"([a-z_]+)"',
    ]
    codes: set[str] = set()
    for path in (ROOT / "app").rglob("*.py"):
        text = path.read_text()
        for pattern in patterns:
            codes.update(re.findall(pattern, text))
    return codes


def test_every_problem_code_in_the_source_is_in_the_enum(document):
    enum = set(document["components"]["schemas"]["ProblemCode"]["enum"])
    codes = source_codes()
    assert len(codes) > 30  # the patterns still find the codes
    assert codes - enum == set(), "add them to app.http.openapi.OTHER_CODES"


def test_operations_have_a_module_action_id_and_their_module_as_tag(document):
    ids = []
    for label, operation in operations(document):
        operation_id = operation.get("operationId", "")
        tag = operation_id.split("_", 1)[0]
        assert re.fullmatch(r"[a-z]+_[a-z][a-z0-9_]*", operation_id), label
        assert tag in TAGS, label
        assert operation["tags"] == [tag], label
        ids.append(operation_id)
    assert len(ids) == len(set(ids))
    assert {t["name"] for t in document["tags"]} == TAGS
    validate = document["paths"]["/api/v1/licenses/validate"]["post"]
    assert (validate["operationId"], validate["tags"]) == ("licensing_validate", ["licensing"])


def test_response_headers_are_declared(document):
    for label, operation in operations(document):
        responses = operation["responses"]
        for status, response in responses.items():
            headers = response["headers"]
            assert "X-Request-ID" in headers, (label, status)
            if status in ("423", "429"):
                assert headers["Retry-After"]["required"] is True, (label, status)
            if "429" in responses:
                assert "X-RateLimit-Remaining" in headers, (label, status)
    admin_license = document["paths"]["/api/v1/admin/licenses/{license_id}"]
    assert admin_license["get"]["responses"]["200"]["headers"]["ETag"]["required"] is True
    assert admin_license["patch"]["responses"]["200"]["headers"]["ETag"]["required"] is True
    if_match = next(p for p in admin_license["patch"]["parameters"] if p["name"] == "If-Match")
    assert if_match["in"] == "header" and if_match["required"] is True
    assert not re.fullmatch(if_match["schema"]["pattern"], "*")
    assert re.fullmatch(if_match["schema"]["pattern"], '"3"')


def test_a_whole_number_is_an_integer_however_it_is_spelled(client):
    """JSON Schema's `integer` matches 3.0: the server takes it as 3 (and not "3")."""
    client.post("/api/v1/auth/register", json={"email": "w@example.com", "password": PASSWORD})
    token = client.post(
        "/api/v1/auth/login", json={"email": "w@example.com", "password": PASSWORD}
    ).get_json()["access_token"]
    headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": "whole-1"}
    order = {"plan": "pro", "seats": 3.0, "payment_token": "tok_ok"}
    placed = client.post("/api/v1/orders", json=order, headers=headers)
    assert placed.status_code == 201, placed.get_json()
    assert placed.get_json()["seats"] == 3
    headers["Idempotency-Key"] = "whole-2"
    refused = client.post("/api/v1/orders", json={**order, "seats": "3"}, headers=headers)
    assert refused.status_code == 422


def _admin(database_url: str, signing_key_file: str, email: str) -> None:
    env = project_env(
        APP_ENV="testing", DATABASE_URL=database_url, LICENSE_SIGNING_KEYS=signing_key_file
    )
    done = run_flask("users", "create-admin", email, "--password-stdin", env=env, input=PASSWORD)
    assert done.returncode == 0, done.stderr


@pytest.mark.slow
def test_the_generated_client_drives_the_service(generated, database_url, signing_key_file):
    """register → login → activate → validate → orders → admin stats, typed all the way."""
    from generated_licensing_api import AuthenticatedClient, Client
    from generated_licensing_api.api.admin import (
        admin_get_license,
        admin_update_license,
        admin_user_stats,
    )
    from generated_licensing_api.api.auth import auth_login, auth_register
    from generated_licensing_api.api.licensing import licensing_activate, licensing_validate
    from generated_licensing_api.api.orders import orders_list, orders_list_plans, orders_place
    from generated_licensing_api.models import (
        ActivatedLicenseOut,
        ActivateIn,
        LicensePatchIn,
        LicensePatchInStatus,
        LoginIn,
        OrderIn,
        OrderInPlan,
        OrderPage,
        Problem,
        ProblemCode,
        RegisterIn,
        TokenPairOut,
        UserOut,
        UserStatsOut,
        ValidateIn,
        ValidateOut,
        ValidateOutCode,
    )

    email = f"gen-{uuid.uuid4().hex[:8]}@example.com"
    admin_email = f"gen-admin-{uuid.uuid4().hex[:8]}@example.com"
    _admin(database_url, signing_key_file, admin_email)
    with gunicorn_server(database_url, workers=2, LICENSE_SIGNING_KEYS=signing_key_file) as base:
        anonymous = Client(base_url=base, raise_on_unexpected_status=True)

        user = auth_register.sync(client=anonymous, body=RegisterIn(email=email, password=PASSWORD))
        assert isinstance(user, UserOut) and user.email == email
        again = auth_register.sync_detailed(
            client=anonymous, body=RegisterIn(email=email, password=PASSWORD)
        )
        assert again.status_code == 409
        assert isinstance(again.parsed, Problem) and again.parsed.code == ProblemCode.EMAIL_TAKEN
        assert again.headers["X-Request-ID"]

        pair = auth_login.sync(client=anonymous, body=LoginIn(email=email, password=PASSWORD))
        assert isinstance(pair, TokenPairOut)
        me = AuthenticatedClient(base_url=base, token=pair.access_token)

        activated = licensing_activate.sync_detailed(
            client=me, body=ActivateIn(client_id="generated-box")
        )
        assert activated.status_code == 201
        license_ = activated.parsed
        assert isinstance(license_, ActivatedLicenseOut)

        nonce = uuid.uuid4().hex
        verdict = licensing_validate.sync(
            client=anonymous,
            body=ValidateIn(token=license_.token, client_id="generated-box", nonce=nonce),
        )
        assert isinstance(verdict, ValidateOut)
        assert verdict.code == ValidateOutCode.VALID and verdict.valid
        assert verdict.license_.license_id == license_.license_id

        plans = {p.plan: p for p in orders_list_plans.sync(client=anonymous)}
        assert "pro" in plans
        placed = orders_place.sync_detailed(
            client=me,
            body=OrderIn(plan=OrderInPlan.PRO, seats=3, payment_token="tok_ok"),
            idempotency_key=uuid.uuid4().hex,
        )
        assert placed.status_code == 201, placed.content
        assert placed.parsed.status == "paid"
        page = orders_list.sync(client=me)
        assert isinstance(page, OrderPage)
        assert [o.order_id for o in page.items] == [placed.parsed.order_id]

        admin_pair = auth_login.sync(
            client=anonymous, body=LoginIn(email=admin_email, password=PASSWORD)
        )
        admin = AuthenticatedClient(base_url=base, token=admin_pair.access_token)
        stats = admin_user_stats.sync(client=admin)
        assert isinstance(stats, UserStatsOut)
        assert any(item.plan == "pro" and item.user_count >= 1 for item in stats.items)
        forbidden = admin_user_stats.sync_detailed(client=me)
        assert forbidden.status_code == 403
        assert forbidden.parsed.code == ProblemCode.ADMIN_REQUIRED

        # The ETag → If-Match flow, through declared headers.
        got = admin_get_license.sync_detailed(license_.license_id, client=admin)
        etag = got.headers["ETag"]
        changed = admin_update_license.sync_detailed(
            license_.license_id,
            client=admin,
            body=LicensePatchIn(status=LicensePatchInStatus.SUSPENDED),
            if_match=etag,
        )
        assert changed.status_code == 200 and changed.headers["ETag"] != etag
        stale = admin_update_license.sync_detailed(
            license_.license_id,
            client=admin,
            body=LicensePatchIn(status=LicensePatchInStatus.ACTIVE),
            if_match=etag,
        )
        assert stale.status_code == 412
        assert stale.parsed.code == ProblemCode.VERSION_CONFLICT
        assert stale.parsed.current_version == changed.parsed.version
