"""What an app needs from the service to trust it: signed validation verdicts (with the app's
nonce) and deactivation with the license token alone. On SQLite and PostgreSQL."""

from __future__ import annotations

import base64
from datetime import datetime, timedelta

import jwt as pyjwt
import pytest
from sqlalchemy import select

from app.admin.models import AuditLog
from app.auth.licensing import signing
from app.auth.models import License
from app.kernel.db import utcnow
from tests.helpers import assert_problem, respellings, rows, tampered
from tests.test_licenses import account, activate

NONCE = "n0nce-Abc_123456"


def _verdict_claims(client, verdict: str) -> tuple[dict, dict]:
    """The verdict checked as an app does: against the JWKS only, EdDSA, its own typ."""
    header = pyjwt.get_unverified_header(verdict)
    jwks = client.get("/.well-known/jwks.json").get_json()
    [jwk] = [k for k in jwks["keys"] if k["kid"] == header["kid"]]
    claims = pyjwt.decode(
        verdict, pyjwt.PyJWK(jwk), algorithms=["EdDSA"], issuer="licensing-platform"
    )
    return header, claims


def test_validate_signs_its_verdict_over_the_nonce(client):
    lic = activate(client, account(client), "box-1").get_json()
    response = client.post(
        "/api/v1/licenses/validate",
        json={"token": lic["token"], "client_id": "box-1", "nonce": NONCE},
    )
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    header, claims = _verdict_claims(client, body["verdict"])
    assert header["typ"] == "license-verdict+jwt" and header["alg"] == "EdDSA"
    assert claims["code"] == body["code"] == "VALID"
    assert claims["license_id"] == lic["license_id"]
    assert claims["client_id"] == "box-1"
    assert claims["nonce"] == NONCE
    assert 0 < claims["exp"] - claims["iat"] <= 600  # short-lived
    # iat is the server's time of the check
    assert claims["iat"] == int(datetime.fromisoformat(body["checked_at"]).timestamp())


def test_every_answer_is_signed_also_without_a_nonce(client):
    lic = activate(client, account(client), "box-1").get_json()
    for token, client_id, code in [
        (lic["token"], None, "VALID"),
        (lic["token"], "other-box", "CLIENT_MISMATCH"),
        (tampered(lic["token"]), None, "INVALID_TOKEN"),
    ]:
        body = {"token": token} if client_id is None else {"token": token, "client_id": client_id}
        answer = client.post("/api/v1/licenses/validate", json=body).get_json()
        _, claims = _verdict_claims(client, answer["verdict"])
        assert (claims["code"], claims["nonce"], claims["client_id"]) == (code, None, client_id)
        expected_id = None if code == "INVALID_TOKEN" else lic["license_id"]
        assert claims["license_id"] == expected_id


@pytest.mark.parametrize("nonce", ["short", "x" * 129, "has space!", "ünïcode-nonce", 12345678, ""])
def test_a_bad_nonce_is_422(client, nonce):
    lic = activate(client, account(client), "box-1").get_json()
    response = client.post(
        "/api/v1/licenses/validate", json={"token": lic["token"], "nonce": nonce}
    )
    assert_problem(response, 422)


def test_a_verdict_is_never_accepted_as_a_license_token(client):
    lic = activate(client, account(client), "box-1").get_json()
    verdict = client.post(
        "/api/v1/licenses/validate", json={"token": lic["token"], "nonce": NONCE}
    ).get_json()["verdict"]
    # Same key, same kid: only the typ tells them apart, and validate refuses it.
    answer = client.post("/api/v1/licenses/validate", json={"token": verdict}).get_json()
    assert answer["code"] == "INVALID_TOKEN"
    assert_problem(
        client.post("/api/v1/licenses/deactivate", json={"token": verdict, "client_id": "box-1"}),
        404,
        "license_not_found",
    )


def test_a_license_token_is_valid_only_as_it_was_written(client):
    """Another spelling of the same signed bytes is not the token that was issued: an
    INVALID_TOKEN verdict and the same 404 on deactivation, before and after the token
    itself was verified (and remembered)."""
    lic = activate(client, account(client), "box-1").get_json()
    for name, spelling in respellings(lic["token"]).items():
        answer = client.post("/api/v1/licenses/validate", json={"token": spelling}).get_json()
        assert answer["code"] == "INVALID_TOKEN", name
        again = client.post("/api/v1/licenses/validate", json={"token": lic["token"]})
        assert again.get_json()["code"] == "VALID"
        refused = client.post(
            "/api/v1/licenses/deactivate", json={"token": spelling, "client_id": "box-1"}
        )
        assert_problem(refused, 404, "license_not_found")


def test_a_token_header_nested_deep_is_an_invalid_token_not_an_error(client):
    """A header is read before any signature is checked: JSON nested deeper than Python's
    recursion limit, written by anyone, is an INVALID_TOKEN verdict and the same 404."""
    header = base64.urlsafe_b64encode(b"[" * 1400 + b"]" * 1400).rstrip(b"=").decode()
    token = f"{header}.e30.AA"
    assert len(token) <= 4096  # within the body's limit: the verifier sees it
    answer = client.post("/api/v1/licenses/validate", json={"token": token})
    assert (answer.status_code, answer.get_json()["code"]) == (200, "INVALID_TOKEN")
    refused = client.post("/api/v1/licenses/deactivate", json={"token": token, "client_id": "x"})
    assert_problem(refused, 404, "license_not_found")


def test_the_openapi_document_describes_nonce_and_verdict(client):
    doc = client.get("/openapi.json").get_json()
    schemas = doc["components"]["schemas"]
    assert "nonce" in schemas["ValidateIn"]["properties"]
    assert "verdict" in schemas["ValidateOut"]["required"]
    assert "/api/v1/licenses/deactivate" in doc["paths"]


# --- deactivation from the app -------------------------------------------------------


def test_the_app_deactivates_with_its_token_and_client_id(app, client):
    ada = account(client)
    lic = activate(client, ada, "box-1").get_json()
    for _ in range(2):  # idempotent: the second call finds it revoked already
        response = client.post(
            "/api/v1/licenses/deactivate", json={"token": lic["token"], "client_id": "box-1"}
        )
        assert response.status_code == 200, response.get_json()
        assert response.get_json()["status"] == "revoked"
    [entry] = rows(app, select(AuditLog).where(AuditLog.action == "LICENSE_DEACTIVATED"))
    assert entry.actor_id == ada["user_id"]
    assert entry.details["reason"] == "deactivated_from_app"
    assert entry.details["old_status"] == "active" and entry.details["new_status"] == "revoked"
    [row] = rows(app, select(License))
    assert row.status == "revoked"
    # The seat is free: the free plan's single seat takes another client now.
    assert activate(client, ada, "box-2").status_code == 201


def test_deactivation_refusals_look_alike_and_change_nothing(app, client):
    ada = account(client)
    lic = activate(client, ada, "box-1").get_json()
    bob_token = activate(client, account(client, "bob@example.com"), "bob-box").get_json()["token"]
    refusals = [
        {"token": lic["token"], "client_id": "box-2"},  # wrong client id
        {"token": tampered(lic["token"]), "client_id": "box-1"},  # tampered token
        {"token": bob_token, "client_id": "box-1"},  # someone else's token
        {"token": "not-a-jwt", "client_id": "box-1"},
    ]
    bodies = []
    for body in refusals:
        response = client.post("/api/v1/licenses/deactivate", json=body)
        bodies.append(assert_problem(response, 404, "license_not_found"))
    assert all(b == bodies[0] for b in bodies), bodies  # nothing tells them apart
    assert {r.status for r in rows(app, select(License))} == {"active"}
    assert not rows(app, select(AuditLog).where(AuditLog.action == "LICENSE_DEACTIVATED"))
    # Without a client id the request is malformed, not a refusal.
    assert_problem(client.post("/api/v1/licenses/deactivate", json={"client_id": "box-1"}), 422)


def test_deactivating_an_unknown_license_is_the_same_404(app, client):
    with app.app_context():
        ghost = signing.license_keys().sign(
            license_id="lic_01" + "0" * 24,
            user_id="usr_01" + "0" * 24,
            client_id="box-1",
            expires_at=utcnow() + timedelta(days=1),
            issued_at=utcnow(),
            version=1,
        )
    assert_problem(
        client.post("/api/v1/licenses/deactivate", json={"token": ghost, "client_id": "box-1"}),
        404,
        "license_not_found",
    )
