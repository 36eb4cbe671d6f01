"""licensing-client (clients/python) against a real gunicorn: what an app that embeds it sees.

The clock the library reads is injected (epoch seconds), and so is its sleep: grace
periods, clock tampering, backoff and Retry-After are steps of a test's own clock, never
waits. Fake servers (tiny local HTTP servers) play the attacker in front of the app.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt as pyjwt
import machineid
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from licensing_client import (
    CheckCode,
    Code,
    Conflict,
    LicensingClient,
    NotFound,
    RateLimited,
    Unauthorized,
    UntrustedAnswer,
    machine_fingerprint,
)

from app.auth.licensing.signing import KeySet, generate_key_file
from tests.helpers import PASSWORD, free_port, gunicorn_server, http, sign_up_over_http, tampered

pytestmark = pytest.mark.slow
DAY = 86_400.0


class Clock:
    """The library's clock: starts at the real time, moves only when told."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


class Sleeps(list):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture(scope="module")
def sqlite_url(sqlite_template, tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("client-lib") / "app.db"
    shutil.copy(sqlite_template, path)
    return f"sqlite:///{path}"


@pytest.fixture(scope="module")
def service(sqlite_url, signing_key_file) -> Iterator[str]:
    """One gunicorn for the module's tests (each test uses accounts of its own)."""
    with gunicorn_server(sqlite_url, workers=2, LICENSE_SIGNING_KEYS=signing_key_file) as base:
        yield base


_emails = iter(range(1_000_000))


@pytest.fixture
def cid() -> str:
    """A client id no other test of the module's shared database has used."""
    return f"box-{next(_emails)}-{os.getpid()}"


def new_account(base: str) -> tuple[str, str]:
    """A fresh user; returns (email, access token)."""
    email = f"app-user-{next(_emails)}-{os.getpid()}@example.com"
    return email, sign_up_over_http(base, email).access


def lib(base: str, tmp_path: Path, clock: Clock | None = None, **options: Any) -> LicensingClient:
    options.setdefault("sleep", Sleeps())
    return LicensingClient(
        base, state_path=tmp_path / "license.json", clock=clock or Clock(), **options
    )


def dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}"  # nothing listens there


@contextlib.contextmanager
def fake_server(
    answer: Callable[[str, str, dict[str, Any] | None], tuple[int, dict[str, str], bytes]],
) -> Iterator[str]:
    """A local HTTP server whose every answer comes from `answer(method, path, body)`."""

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw else None
            status, headers, payload = answer(self.command, self.path, body)
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = _serve

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def as_json(status: int, body: Any, **headers: str) -> tuple[int, dict[str, str], bytes]:
    return status, {"Content-Type": "application/json", **headers}, json.dumps(body).encode()


def forward(base: str, method: str, path: str, body: Any) -> tuple[int, dict[str, Any]]:
    status, answer, _ = http(method, base + path, body)
    return status, answer


# --- online ---------------------------------------------------------------------------


def test_online_valid_then_revoked_and_never_overridden_offline(service, tmp_path):
    email, access = new_account(service)
    clock = Clock()
    with lib(service, tmp_path, clock) as app:
        activation = app.activate("laptop-1", email=email, password=PASSWORD)
        assert activation.created and activation.license.status == "active"
        result = app.check()
        assert (result.code, result.online, result.valid) == (CheckCode.VALID, True, True)
        assert result.license_id == activation.license.license_id
        state = tmp_path / "license.json"
        assert stat.S_IMODE(state.stat().st_mode) == 0o600
        assert json.loads(state.read_text())["token"] == activation.token
        assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]

        # The owner gives the license up elsewhere (their dashboard): the next check knows.
        status, _, _ = http(
            "DELETE",
            f"{service}/api/v1/licenses/{activation.license.license_id}",
            headers={"Authorization": f"Bearer {access}"},
        )
        assert status == 200
        result = app.check()
        assert (result.code, result.online) == (CheckCode.REVOKED, True)

    # The service goes away: the offline check does not turn REVOKED into VALID.
    clock.now += 60
    with lib(dead_url(), tmp_path, clock, retries=0) as offline:
        result = offline.check()
    assert (result.code, result.online) == (CheckCode.REVOKED, False)
    assert "ServiceUnreachable" in result.offline_reason


def test_activation_with_an_access_token_and_typed_errors(service, tmp_path, cid):
    email, access = new_account(service)
    with lib(service, tmp_path) as app:
        with pytest.raises(Unauthorized) as wrong:
            app.activate(cid, email=email, password="wrong password!!")
        assert wrong.value.status == 401 and wrong.value.code == "invalid_credentials"
        activation = app.activate(cid, access_token=access)
        assert activation.created
        again = app.activate(cid, access_token=access)
        assert not again.created and again.license.license_id == activation.license.license_id
        assert app.validate().code is Code.VALID
        with pytest.raises(NotFound) as gone:
            app.deactivate(activation.token, "not-this-box")
        assert gone.value.code == "license_not_found"


def test_threads_share_one_client(service, tmp_path, cid):
    email, _ = new_account(service)
    with lib(service, tmp_path) as app:
        app.activate(cid, email=email, password=PASSWORD)
        results: list[Any] = []

        def work() -> None:
            for _ in range(5):
                results.append(app.check())

        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(results) == 20
    assert {(r.code, r.online) for r in results} == {(CheckCode.VALID, True)}
    assert json.loads((tmp_path / "license.json").read_text())["last_code"] == "VALID"


# --- service down: grace ------------------------------------------------------------------


def test_service_down_within_and_past_the_grace_period(service, tmp_path, cid):
    email, _ = new_account(service)
    clock = Clock()
    with lib(service, tmp_path, clock, grace_period=timedelta(days=7)) as app:
        app.activate(cid, email=email, password=PASSWORD)
        assert app.check().online

    sleeps = Sleeps()
    with lib(dead_url(), tmp_path, clock, sleep=sleeps, retries=2, backoff=0.5) as down:
        clock.now += 6 * DAY
        result = down.check()
        assert (result.code, result.online) == (CheckCode.VALID, False)
        assert result.offline_reason.startswith("ServiceUnreachable")
        assert sleeps == [0.5, 1.0]  # two retries, exponential backoff, on the fake sleep
        clock.now += 2 * DAY  # 8 days since the last online success
        assert down.check().code is CheckCode.GRACE_EXPIRED

    # A 503 from the service counts as down too; once back, the online check resets the grace.
    with fake_server(
        lambda m, p, b: as_json(503, {"code": "unavailable"}, **{"Retry-After": "1"})
    ) as unavailable:
        with lib(unavailable, tmp_path, clock, retries=1) as app:
            result = app.check()
            assert (result.code, result.online) == (CheckCode.GRACE_EXPIRED, False)
            assert "ServerError" in result.offline_reason
            assert app._sleep == [1.0]  # Retry-After honoured
    with lib(service, tmp_path, clock) as back:
        assert (back.check().code, back.check().online) == (CheckCode.VALID, True)
    with lib(dead_url(), tmp_path, clock, retries=0) as down:
        assert down.check().code is CheckCode.VALID


def test_a_never_checked_token_gets_no_grace(service, tmp_path, cid):
    email, _ = new_account(service)
    with lib(service, tmp_path) as app:
        token = app.activate(cid, email=email, password=PASSWORD).token
    with lib(dead_url(), tmp_path / "other", retries=0) as stranger:
        assert stranger.check(token, cid).code is CheckCode.GRACE_EXPIRED


# --- rate limits ------------------------------------------------------------------------


def test_a_429_is_retried_after_its_retry_after(sqlite_url, signing_key_file, tmp_path, cid):
    with gunicorn_server(
        sqlite_url,
        workers=1,
        LICENSE_SIGNING_KEYS=signing_key_file,
        RATELIMIT_ENABLED="true",
        RATELIMIT_VALIDATE_PER_TOKEN="2/minute",
    ) as base:
        email, _ = new_account(base)
        sleeps = Sleeps()
        with lib(base, tmp_path, sleep=sleeps, retries=2, max_retry_after=120) as app:
            app.activate(cid, email=email, password=PASSWORD)
            assert app.validate().valid and app.validate().valid
            with pytest.raises(RateLimited) as limited:
                app.validate()
    assert limited.value.status == 429 and limited.value.code == "rate_limited"
    # Each retry waited what the service asked for (whole seconds, on the injected sleep),
    # not the backoff (0.5 s, then 1 s).
    assert len(sleeps) == 2 and limited.value.retry_after is not None
    assert all(s == int(s) and 1 <= s <= 60 for s in sleeps), sleeps


def test_a_429_then_success(tmp_path):
    answers = iter(
        [as_json(429, {"code": "rate_limited"}, **{"Retry-After": "7"})] * 2
        + [as_json(404, {"code": "license_not_found", "status": 404})]
    )
    with fake_server(lambda m, p, b: next(answers)) as base:
        sleeps = Sleeps()
        with LicensingClient(base, sleep=sleeps, retries=3) as app:
            with pytest.raises(NotFound):
                app.deactivate("t", "c")
    assert sleeps == [7.0, 7.0]


def test_a_retry_after_longer_than_the_client_waits_is_raised_at_once(tmp_path):
    with fake_server(
        lambda m, p, b: as_json(429, {"code": "rate_limited"}, **{"Retry-After": "3600"})
    ) as base:
        sleeps = Sleeps()
        with LicensingClient(base, sleep=sleeps, max_retry_after=60) as app:
            with pytest.raises(RateLimited) as limited:
                app.deactivate("t", "c")
    assert sleeps == [] and limited.value.retry_after == 3600


# --- keys -------------------------------------------------------------------------------


def test_key_rotation_refreshes_the_cached_jwks_on_the_unknown_kid(
    sqlite_url, signing_key_file, tmp_path, cid
):
    new_key = str(tmp_path / "new-key.pem")
    generate_key_file(new_key)
    clock = Clock()
    email = None
    with gunicorn_server(sqlite_url, workers=1, LICENSE_SIGNING_KEYS=signing_key_file) as base:
        email, _ = new_account(base)
        with lib(base, tmp_path, clock) as app:
            app.activate(cid, email=email, password=PASSWORD)
            assert app.check().online
            assert app.jwks.fetches == 1
    cache = tmp_path / "license.json.jwks.json"
    assert len(json.loads(cache.read_text())["jwks"]["keys"]) == 1
    assert stat.S_IMODE(cache.stat().st_mode) == 0o600

    # The vendor rotates: a new key signs, the old one still verifies. Same port is not
    # needed: the app is configured with the service's URL, here the new server's.
    with gunicorn_server(
        sqlite_url, workers=1, LICENSE_SIGNING_KEYS=f"{new_key},{signing_key_file}"
    ) as base:
        with lib(base, tmp_path, clock) as app:
            # Past the once-a-minute limit, within the JWKS max-age (300 s): only the
            # unknown kid makes the cache ask again.
            clock.now += 90
            result = app.check()
            assert (result.code, result.online) == (CheckCode.VALID, True)
            assert app.jwks.fetches == 1
            assert len(json.loads(cache.read_text())["jwks"]["keys"]) == 2
            # A verdict with yet another unknown kid within the minute: no second fetch.
            stranger = pyjwt.encode(
                {"code": "VALID"},
                Ed25519PrivateKey.generate(),
                algorithm="EdDSA",
                headers={"kid": "nobody", "typ": "license-verdict+jwt"},
            )
            assert app.jwks.key("nobody") is None
            assert app.jwks.fetches == 1
            clock.now += 61
            assert app.jwks.key(pyjwt.get_unverified_header(stranger)["kid"]) is None
            assert app.jwks.fetches == 2
            # A known kid within the document's max-age (300 s): no fetch; past it: one.
            known_kid = pyjwt.get_unverified_header(result.token)["kid"]
            clock.now += 200
            assert app.jwks.key(known_kid) is not None and app.jwks.fetches == 2
            clock.now += 101
            assert app.jwks.key(known_kid) is not None and app.jwks.fetches == 3


def test_a_tampered_token_fails_offline(service, tmp_path, cid):
    email, _ = new_account(service)
    with lib(service, tmp_path) as app:
        token = app.activate(cid, email=email, password=PASSWORD).token
        assert app.verify_offline().code is CheckCode.VALID
        assert app.verify_offline(tampered(token), cid).code is CheckCode.INVALID_TOKEN
        # Our kid, another key: the signature gives it away.
        header = pyjwt.get_unverified_header(token)
        forged = pyjwt.encode(
            pyjwt.decode(token, options={"verify_signature": False}),
            Ed25519PrivateKey.generate(),
            algorithm="EdDSA",
            headers={"kid": header["kid"]},
        )
        assert app.verify_offline(forged, cid).code is CheckCode.INVALID_TOKEN
        assert app.verify_offline(token, "other-box").code is CheckCode.CLIENT_MISMATCH
        online = app.check(tampered(token), cid)
        assert (online.code, online.online) == (CheckCode.INVALID_TOKEN, True)


# --- answers an app can trust --------------------------------------------------------------


def _activated(service: str, tmp_path: Path, clock: Clock, cid: str) -> str:
    email, _ = new_account(service)
    with lib(service, tmp_path, clock) as app:
        token = app.activate(cid, email=email, password=PASSWORD).token
        assert app.check().online
    return token


def test_a_fake_server_answering_an_unsigned_valid_is_not_believed(service, tmp_path, cid):
    clock = Clock()
    token = _activated(service, tmp_path, clock, cid)
    # Revoked for real; a fake server on the app's configured address says VALID.
    with lib(service, tmp_path, clock) as app:
        app.deactivate()
    unsigned = {"valid": True, "code": "VALID", "license": None, "checked_at": "2026-01-01"}
    with fake_server(lambda m, p, b: as_json(200, unsigned)) as fake:
        with lib(fake, tmp_path / "fresh", clock) as app:
            result = app.check(token, cid)  # a state that never saw the revocation
            assert (result.code, result.online) == (CheckCode.GRACE_EXPIRED, False)
            assert "no signed verdict" in result.offline_reason
            with pytest.raises(UntrustedAnswer):
                app.validate(token, cid)


def test_a_replayed_valid_answer_is_not_believed(service, tmp_path, cid):
    clock = Clock()
    token = _activated(service, tmp_path, clock, cid)
    # The attacker recorded a genuine VALID answer (its verdict signed for another nonce)…
    status, recorded = forward(
        service,
        "POST",
        "/api/v1/licenses/validate",
        {"token": token, "client_id": cid, "nonce": "recorded-nonce-1234"},
    )
    assert status == 200 and recorded["code"] == "VALID"
    with lib(service, tmp_path, clock) as app:
        app.deactivate()
    # …and replays it once the license is revoked (this app's state was cleared by the
    # deactivation; its cached keys are still there, so the verdict's signature verifies).
    with fake_server(lambda m, p, b: as_json(200, recorded)) as fake:
        with lib(fake, tmp_path, clock) as app:
            result = app.check(token, cid)
    assert (result.code, result.online) == (CheckCode.GRACE_EXPIRED, False)
    assert "nonce" in result.offline_reason


def test_a_verdict_signed_by_another_key_or_about_another_client_is_not_believed(
    service, tmp_path, cid
):
    clock = Clock()
    token = _activated(service, tmp_path, clock, cid)
    kid = pyjwt.get_unverified_header(token)["kid"]
    attacker = Ed25519PrivateKey.generate()

    def forge(m: str, p: str, body: dict[str, Any] | None):
        verdict = pyjwt.encode(
            {
                "iss": "licensing-platform",
                "code": "VALID",
                "license_id": pyjwt.decode(token, options={"verify_signature": False})[
                    "license_id"
                ],
                "client_id": body["client_id"],
                "nonce": body["nonce"],
                "iat": int(clock.now),
                "exp": int(clock.now) + 300,
            },
            attacker,
            algorithm="EdDSA",
            headers={"kid": kid, "typ": "license-verdict+jwt"},
        )
        return as_json(200, {"valid": True, "code": "VALID", "license": None, "verdict": verdict})

    with fake_server(forge) as fake:
        with lib(fake, tmp_path, clock) as app:
            result = app.check()
    assert (result.code, result.online) == (CheckCode.VALID, False)  # offline, within grace
    assert "verdict does not verify" in result.offline_reason

    # A genuine verdict, but for another client id (a proxy rewriting the request).
    def rewrite(m: str, p: str, body: dict[str, Any] | None):
        status, answer = forward(service, m, p, {**body, "client_id": "someone-else"})
        return as_json(status, answer)

    with fake_server(rewrite) as proxy:
        with lib(proxy, tmp_path, clock) as app:
            result = app.check()
    assert result.online is False
    assert "UntrustedAnswer" in result.offline_reason


def test_a_renewed_token_from_validate_replaces_the_stored_one(
    service, signing_key_file, tmp_path, cid
):
    clock = Clock()
    old = _activated(service, tmp_path, clock, cid)
    claims = pyjwt.decode(old, options={"verify_signature": False})
    keys = KeySet.from_files([signing_key_file])
    renewed = keys.sign(
        license_id=claims["license_id"],
        user_id=claims["user_id"],
        client_id=claims["client_id"],
        expires_at=datetime.fromtimestamp(claims["exp"] + 30 * DAY, UTC),
        issued_at=datetime.fromtimestamp(claims["iat"] + 1, UTC),
        version=claims["ver"] + 1,
    )
    outsider = pyjwt.encode(
        {**claims, "exp": claims["exp"] + 30 * DAY},
        Ed25519PrivateKey.generate(),
        algorithm="EdDSA",
        headers={"kid": pyjwt.get_unverified_header(old)["kid"]},
    )
    # The service (here: with the token member the validate answer carries when terms changed).
    injected = {"token": outsider}

    def with_token(m: str, p: str, body: dict[str, Any] | None):
        status, answer = forward(service, m, p, body)
        if p.endswith("/validate"):
            answer = {**answer, "token": injected["token"]}
        return as_json(status, answer)

    with fake_server(with_token) as base:
        with lib(base, tmp_path, clock) as app:
            result = app.check()  # a token that does not verify: the answer is not trusted
            assert result.online is False and app.stored_token() == old
            injected["token"] = renewed
            result = app.check()
            assert (result.code, result.online, result.token) == (CheckCode.VALID, True, renewed)
            assert app.stored_token() == renewed
    assert json.loads((tmp_path / "license.json").read_text())["token"] == renewed


# --- clock tampering --------------------------------------------------------------------


def test_a_clock_set_back_by_a_day_is_refused_offline(service, tmp_path, cid):
    clock = Clock()
    _activated(service, tmp_path, clock, cid)
    with lib(dead_url(), tmp_path, clock, retries=0) as down:
        clock.now -= 4 * 60  # within the allowed drift (5 min)
        assert down.check().code is CheckCode.VALID
        clock.now -= DAY
        result = down.check()
        assert (result.code, result.online) == (CheckCode.CLOCK_TAMPERED, False)
        assert down.verify_offline().code is CheckCode.CLOCK_TAMPERED
    # Online, the service's answer decides; the clock does not matter there.
    with lib(service, tmp_path, clock) as app:
        assert (app.check().code, app.check().online) == (CheckCode.VALID, True)


# --- machine id and deactivation ---------------------------------------------------------


def test_machine_fingerprint_is_stable_per_app_and_anonymous():
    first = machine_fingerprint("com.example.editor")
    assert first == machine_fingerprint("com.example.editor")
    assert first != machine_fingerprint("com.example.other")
    assert len(first) == 64 and int(first, 16) >= 0
    assert machineid.id().lower() not in first.lower()
    with pytest.raises(ValueError):
        machine_fingerprint("")


def test_deactivation_from_the_app_frees_the_seat(service, tmp_path):
    email, _ = new_account(service)
    client_id = machine_fingerprint("com.example.editor")[:40] + f"-{next(_emails)}"
    with lib(service, tmp_path) as app:
        activation = app.activate(client_id, email=email, password=PASSWORD)
        # The free plan's one seat is taken.
        with pytest.raises(Conflict) as full:
            app.activate("second-box", email=email, password=PASSWORD)
        assert full.value.code == "seat_limit_reached"
        license_ = app.deactivate()
        assert license_.status == "revoked"
        assert app.stored_token() is None
        assert app.validate(activation.token, client_id).code is Code.REVOKED
        assert app.activate("second-box", email=email, password=PASSWORD).created


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_the_app_flow_on_postgresql(database_url, signing_key_file, tmp_path):
    with gunicorn_server(database_url, workers=2, LICENSE_SIGNING_KEYS=signing_key_file) as base:
        email, _ = new_account(base)
        with lib(base, tmp_path) as app:
            app.activate("pg-box", email=email, password=PASSWORD)
            assert (app.check().code, app.check().online) == (CheckCode.VALID, True)
            token = app.stored_token()
            assert app.deactivate().status == "revoked"
            assert app.validate(token, "pg-box").code is Code.REVOKED


def test_proxy_and_timeouts_are_passed_to_httpx(tmp_path):
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        raise httpx.ConnectTimeout("timed out", request=request)

    sleeps = Sleeps()
    with LicensingClient(
        "https://licensing.invalid",
        transport=httpx.MockTransport(handler),
        timeout=2.5,
        sleep=sleeps,
        retries=1,
    ) as app:
        result = app.check("not-a-token", "box")
    assert (result.code, result.online) == (CheckCode.INVALID_TOKEN, False)
    assert len(seen) == 2 and seen[0].extensions["timeout"]["connect"] == 2.5
    client = LicensingClient("https://x.invalid", proxy="http://proxy.invalid:3128")
    client.close()


def test_plain_http_is_refused_off_loopback():
    """Keys fetched over plain HTTP could be anybody's: the app must ask for it."""
    with pytest.raises(ValueError, match="https"):
        LicensingClient("http://licensing.example.com")
    LicensingClient("http://licensing.example.com", allow_http=True).close()
    LicensingClient("http://127.0.0.1:8000").close()
    LicensingClient("https://licensing.example.com").close()


def test_the_example_app_activates_once_then_checks_at_start(service, tmp_path):
    """examples/licensed_app.py run as a user would: asked once, then never again."""
    import subprocess
    import sys

    email, _ = new_account(service)
    example = Path(__file__).resolve().parents[1] / "examples" / "licensed_app.py"
    state = tmp_path / "license.json"

    def run(stdin: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, example, service, state],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
            start_new_session=True,  # no terminal: getpass reads stdin
        )

    first = run(f"{email}\n{PASSWORD}\n")
    assert first.returncode == 0, first.stderr
    assert "checked online" in first.stdout
    assert stat.S_IMODE(state.stat().st_mode) == 0o600
    second = run("")  # nothing to type: the stored license is checked
    assert second.returncode == 0, second.stderr
    assert "email" not in second.stdout and "checked online" in second.stdout
    state.unlink()  # a new machine, a mistyped password: one line, exit code 2
    wrong = run(f"{email}\nwrong password!!\n")
    assert wrong.returncode == 2 and "invalid_credentials" in wrong.stderr


def test_asking_about_another_client_does_not_change_the_stored_state(service, tmp_path, cid):
    clock = Clock()
    token = _activated(service, tmp_path, clock, cid)
    with lib(service, tmp_path, clock) as app:
        result = app.check(token, "someone-elses-box")
        assert (result.code, result.online) == (CheckCode.CLIENT_MISMATCH, True)
    assert json.loads((tmp_path / "license.json").read_text())["last_code"] == "VALID"
    with lib(dead_url(), tmp_path, clock, retries=0) as down:
        assert down.check().code is CheckCode.VALID
