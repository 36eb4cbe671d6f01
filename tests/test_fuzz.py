"""API fuzzing: schemathesis generates requests from /openapi.json for every operation.

Every response must be documented (status code, content type, body schema, required
headers), never a 5xx, and every error must be problem+json; a request the document allows
is never refused as malformed (docs/adr/0015). The requests go as a user and as an admin. The fast
tier (`make test`) runs a few examples per operation; `make soak` runs many
(FUZZ_EXAMPLES). The seed is fixed (FUZZ_SEED), so a failure reproduces.
"""

from __future__ import annotations

import json
import os

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode, checks
from schemathesis.checks import CheckContext
from schemathesis.config import PositiveDataAcceptanceConfig

from app import create_app

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "8"))
SEED = int(os.environ.get("FUZZ_SEED", "20261123"))
PASSWORD = "correct horse battery"
PROBLEM_FIELDS = {"type", "title", "status", "detail", "code"}


@schemathesis.check
def errors_are_problem_json(ctx: CheckContext, response, case) -> bool | None:
    """Every 4xx/5xx is application/problem+json with type, title, status, detail, code."""
    if response.status_code < 400:
        return None
    values = [v for k, v in response.headers.items() if k.lower() == "content-type"] or [""]
    content_type = values[0][0] if isinstance(values[0], list) else values[0]
    assert content_type.startswith("application/problem+json"), (
        f"{response.status_code} answered as {content_type!r}"
    )
    body = response.json()
    missing = PROBLEM_FIELDS - set(body)
    assert not missing, f"problem without {sorted(missing)}: {body}"
    assert body["status"] == response.status_code
    assert "Traceback" not in response.text
    return True


def _seed(app) -> dict[str, str]:
    """A user with a license and an admin; their bearer headers."""
    client = app.test_client()
    headers = {}
    for who, email in (("user", "fuzz-user@example.com"), ("admin", "fuzz-admin@example.com")):
        if who == "admin":
            runner = app.test_cli_runner()
            runner.invoke(
                args=["users", "create-admin", email, "--password-stdin"], input=PASSWORD + "\n"
            )
        else:
            client.post("/api/v1/auth/register", json={"email": email, "password": PASSWORD})
        token = client.post(
            "/api/v1/auth/login", json={"email": email, "password": PASSWORD}
        ).get_json()["access_token"]
        headers[who] = f"Bearer {token}"
    client.post(
        "/api/v1/licenses/activate",
        json={"client_id": "fuzz-box"},
        headers={"Authorization": headers["user"]},
    )
    return headers


@pytest.fixture
def fuzzed_app(app_config):
    app = create_app(app_config)
    app.fuzz_auth = _seed(app)
    yield app
    app.extensions["db"].dispose()


@pytest.fixture(params=os.environ.get("FUZZ_BACKENDS", "sqlite").split(","))
def backend(request):
    """SQLite in the fast tier; `make soak` adds PostgreSQL."""
    return request.param


CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.response_headers_conformance,
    checks.positive_data_acceptance,  # (positive requests only)
    errors_are_problem_json,
]
# What a schema-valid request may still be answered, besides 2xx: the state of things, not
# the request's shape — credentials (401/403), a missing resource (404), a conflict with
# what exists (409), a declined payment (402: the sandbox declines all but tok_ok), a
# version changed meanwhile (412), a login locked by failures (423), a rate limit (429).
# Never 400, 413, 415, 422 or 428: the document says what the server takes.
ACCEPTED = ["2xx", "401", "402", "403", "404", "409", "412", "423", "429"]
# The one exception: a webhook URL that matches the document can still be refused (422
# webhook_url_refused) for where its host resolves — a private address, or nowhere.
RESOLVED_URL_OPERATIONS = {
    "POST /api/v1/admin/webhooks",
    "PATCH /api/v1/admin/webhooks/{webhook_id}",
}


def test_every_operation_answers_as_documented(fuzzed_app):
    """Valid and invalid requests for every operation, each sent as the user and as the
    admin: documented status, content type and body; never a 5xx; errors as problem+json."""
    schema = schemathesis.openapi.from_wsgi("/openapi.json", fuzzed_app)
    sent: dict[str, int] = {}
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    for operation in operations:
        accepted = ACCEPTED + (["422"] if operation.label in RESOLVED_URL_OPERATIONS else [])
        schema.config.checks.positive_data_acceptance = PositiveDataAcceptanceConfig(
            expected_statuses=accepted
        )
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @hypothesis_seed(SEED)
            @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy(generation_mode=mode))
            def fuzz(case):
                for identity in ("user", "admin"):
                    headers = {
                        **(case.headers or {}),
                        "Authorization": fuzzed_app.fuzz_auth[identity],
                    }
                    sent[case.operation.label] = sent.get(case.operation.label, 0) + 1
                    case.call_and_validate(headers=headers, checks=CHECKS)

            try:
                fuzz()
            except Unsatisfiable:
                continue  # no parameters, so no invalid request to make (GET /healthz)
            except Exception as exc:  # collect every operation's failure, then report all
                failures.append(f"{operation.label} ({mode.value}): {exc}")
    report = os.environ.get("FUZZ_REPORT")
    if report:
        with open(report, "a") as f:
            f.write(
                json.dumps(
                    {
                        "requests": sum(sent.values()),
                        "operations": len(sent),
                        "failures": len(failures),
                    }
                )
                + "\n"
            )
    assert not failures, "\n\n".join(failures)
    assert sorted(sent) == sorted(op.label for op in operations)  # every one was exercised
