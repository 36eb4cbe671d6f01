"""licensing-client's check() over generated sequences: the service's status changes, it goes
down and comes back, time passes, the system clock is set back or forward — and after every
step check() gives exactly what the rules say (README: "For app developers"):

- the service answered: its code, online;
- it did not: the last non-VALID answer sticks; a clock behind the last server time (or the
  last online success) by more than the drift is CLOCK_TAMPERED; past the grace period since
  the last VALID online answer, GRACE_EXPIRED; an expired token EXPIRED; else VALID, offline.

The service is in-process (httpx.MockTransport) and signs with the server's own code
(app.auth.licensing.signing), so each example takes microseconds, not a gunicorn.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from licensing_client import CheckCode, LicensingClient

from app.auth.licensing.signing import VERDICT_TTL_SECONDS, KeySet, SigningKey

DAY = 86_400
GRACE = 7 * DAY
DRIFT = 300
T0 = 1_900_000_000  # the service's time at activation
CLIENT = "box-1"
LICENSE = "lic_01" + "0" * 24


class Service:
    """validate and the JWKS, as the real routes answer them."""

    def __init__(self) -> None:
        self.keys = KeySet([SigningKey.from_private(Ed25519PrivateKey.generate())])
        self.now = T0
        self.status = "VALID"
        self.up = True
        self.token = self.keys.sign(
            license_id=LICENSE,
            user_id="usr_01" + "0" * 24,
            client_id=CLIENT,
            expires_at=datetime.fromtimestamp(T0 + 60 * DAY, UTC),
            issued_at=datetime.fromtimestamp(T0, UTC),
            version=1,
        )

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if not self.up:
            raise httpx.ConnectError("connection refused", request=request)
        if request.url.path == "/.well-known/jwks.json":
            return httpx.Response(
                200, json=self.keys.jwks(), headers={"Cache-Control": "public, max-age=300"}
            )
        body = json.loads(request.content)
        verdict = self.keys.sign_verdict(
            code=self.status,
            license_id=LICENSE,
            client_id=body.get("client_id"),
            nonce=body.get("nonce"),
            issued_at=datetime.fromtimestamp(self.now, UTC),
            ttl_seconds=VERDICT_TTL_SECONDS,
        )
        return httpx.Response(
            200,
            json={
                "valid": self.status == "VALID",
                "code": self.status,
                "license": None,
                "checked_at": datetime.fromtimestamp(self.now, UTC).isoformat(),
                "verdict": verdict,
            },
        )


class CheckMachine(RuleBasedStateMachine):
    @initialize()
    def activate(self) -> None:
        self.service = Service()
        self.skew = 0  # the app's clock minus the service's
        self.client = LicensingClient(
            "https://licensing.invalid",
            transport=httpx.MockTransport(self.service),
            clock=lambda: self.service.now + self.skew,
            sleep=lambda s: None,
            retries=1,
            grace_period=GRACE,
            max_clock_drift=DRIFT,
        )
        first = self.client.check(self.service.token, CLIENT)
        assert (first.code, first.online) == (CheckCode.VALID, True)
        # The model: what the library has seen.
        self.last_code = "VALID"
        self.last_success = self.service.now  # the app's clock at the last trusted answer
        self.last_server = self.service.now

    def teardown(self) -> None:
        if hasattr(self, "client"):
            self.client.close()

    @rule(status=st.sampled_from(["VALID", "VALID", "SUSPENDED", "REVOKED", "EXPIRED"]))
    def the_license_changes(self, status: str) -> None:
        self.service.status = status

    @rule()
    def the_service_goes_down(self) -> None:
        self.service.up = False

    @rule()
    def the_service_comes_back(self) -> None:
        self.service.up = True

    @rule(seconds=st.integers(0, 10 * DAY))
    def time_passes(self, seconds: int) -> None:
        self.service.now += seconds

    @rule(skew=st.sampled_from([0, -DRIFT + 1, -DRIFT - 1, -DAY, DAY, 3 * DAY]))
    def the_clock_is_set(self, skew: int) -> None:
        self.skew = skew

    def expected_offline(self, app_now: float) -> CheckCode:
        if self.last_code != "VALID":
            return CheckCode(self.last_code)
        if app_now + DRIFT < max(T0, self.last_server, self.last_success):
            return CheckCode.CLOCK_TAMPERED
        if app_now - self.last_success > GRACE:
            return CheckCode.GRACE_EXPIRED
        if app_now >= T0 + 60 * DAY:
            return CheckCode.EXPIRED
        return CheckCode.VALID

    @rule()
    def check(self) -> None:
        app_now = self.service.now + self.skew
        result = self.client.check()
        if self.service.up:
            assert (result.code.value, result.online) == (self.service.status, True)
            self.last_code = self.service.status
            self.last_success = app_now
            self.last_server = max(self.last_server, self.service.now)
        else:
            assert result.online is False
            assert result.code is self.expected_offline(app_now), (result, vars(self))

    @invariant()
    def offline_valid_only_within_the_rules(self) -> None:
        # Whatever happened, the offline check alone never accepts a license the service
        # last called anything but VALID.
        if hasattr(self, "client") and self.last_code != "VALID":
            assert self.client.verify_offline().code is not CheckCode.VALID


TestCheckFollowsItsRules = CheckMachine.TestCase
TestCheckFollowsItsRules.settings = settings(
    max_examples=60,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
