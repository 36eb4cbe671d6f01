"""LicensingClient: activate, validate (signed verdicts), check (online, then offline within a
grace period), deactivate. One instance per app; safe to share between threads; no global
state (the clock, the sleep and the HTTP transport can be injected)."""

from __future__ import annotations

import contextlib
import email.utils
import os
import secrets
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt

from licensing_client.errors import (
    ApiError,
    LicensingError,
    ServiceUnreachable,
    UntrustedAnswer,
    error_for,
)
from licensing_client.jwks import JwksCache
from licensing_client.results import Activation, CheckCode, CheckResult, Code, License, Validation
from licensing_client.state import StateFile

ALGORITHM = "EdDSA"
ISSUER = "licensing-platform"
VERDICT_TYP = "license-verdict+jwt"
MAX_VERDICT_LIFETIME = 3600  # a verdict claiming to live longer than this is not the service's
RETRY_STATUSES = {429, 502, 503, 504}
API = "/api/v1"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def _seconds(value: timedelta | float) -> float:
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


class LicensingClient:
    """The client of one licensing service.

    `state_path`: where the license token, the last server time and the grace state are
    kept (a file only this user can read; None: memory only). `jwks_cache_path`: where the
    public keys are cached (default: next to the state file, `<state>.jwks.json`).
    `grace_period`: how long after the last successful online check an offline check may
    still accept the license. `max_clock_drift`: how far the system clock may be behind
    the last server time seen before offline acceptance is refused. `base_url` must be
    https:// (the JWKS it serves is trusted because TLS vouches for the service), except on
    loopback or with `allow_http=True`.
    """

    def __init__(
        self,
        base_url: str,
        *,
        state_path: str | os.PathLike[str] | None = None,
        jwks_cache_path: str | os.PathLike[str] | None = None,
        grace_period: timedelta | float = timedelta(days=7),
        max_clock_drift: timedelta | float = timedelta(minutes=5),
        timeout: float | httpx.Timeout = 10.0,
        proxy: str | None = None,
        retries: int = 3,
        backoff: float = 0.5,
        max_retry_after: float = 60.0,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        transport: httpx.BaseTransport | None = None,
        allow_http: bool = False,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        url = httpx.URL(self.base_url)
        if url.scheme != "https" and not allow_http and url.host not in LOOPBACK:
            # New signing keys are believed because TLS says they come from the service;
            # over plain HTTP whoever answers could hand the app keys of their own.
            raise ValueError(
                f"{base_url}: use https:// (plain http only on loopback, or allow_http=True)"
            )
        self.grace_period = _seconds(grace_period)
        self.max_clock_drift = _seconds(max_clock_drift)
        self.retries = retries
        self.backoff = backoff
        self.max_retry_after = max_retry_after
        self._clock = clock
        self._sleep = sleep
        self._http = httpx.Client(
            base_url=self.base_url,
            timeout=timeout,
            proxy=proxy,
            transport=transport,
            headers={"User-Agent": "licensing-client/0.1"},
        )
        self._lock = threading.RLock()
        self._state = StateFile(state_path)
        if jwks_cache_path is None and state_path is not None:
            jwks_cache_path = f"{os.fspath(state_path)}.jwks.json"
        self.jwks = JwksCache(
            Path(jwks_cache_path).expanduser() if jwks_cache_path is not None else None,
            self._fetch_jwks,
            clock,
        )

    # --- plumbing ------------------------------------------------------------------------

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> LicensingClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _retry_after(self, response: httpx.Response) -> float | None:
        value = response.headers.get("Retry-After")
        if value is None:
            return None
        value = value.strip()
        if value.isdigit():
            return float(value)
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(0.0, when.timestamp() - self._clock())

    def _error(self, response: httpx.Response) -> ApiError:
        try:
            problem = response.json()
        except ValueError:
            problem = {}
        if not isinstance(problem, dict):
            problem = {}
        return error_for(response.status_code, problem, self._retry_after(response))

    def _request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        headers: dict[str, str] | None = None,
        retries: int | None = None,
    ) -> httpx.Response:
        """One call with retries: network errors, timeouts, 429 and 502/503/504 are tried
        again after `Retry-After` (when the service sends one, up to `max_retry_after`)
        or an exponential backoff. Every route this library calls is idempotent."""
        retries = self.retries if retries is None else retries
        for attempt in range(retries + 1):
            delay = self.backoff * 2**attempt
            try:
                response = self._http.request(method, path, json=json, headers=headers)
            except httpx.TransportError as exc:
                failure: LicensingError = ServiceUnreachable(
                    f"{method} {path}: {type(exc).__name__}: {exc}"
                )
            else:
                if response.status_code < 400:
                    return response
                failure = self._error(response)
                if response.status_code not in RETRY_STATUSES:
                    raise failure
                retry_after = self._retry_after(response)
                if retry_after is not None:
                    if retry_after > self.max_retry_after:
                        raise failure
                    delay = retry_after
            if attempt == retries:
                raise failure
            self._sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _fetch_jwks(self) -> tuple[dict[str, Any], str | None]:
        response = self._request("GET", "/.well-known/jwks.json", retries=0)
        try:
            doc = response.json()
        except ValueError:
            raise ServiceUnreachable("the JWKS document is not JSON") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
            raise ServiceUnreachable("the JWKS document has no keys")
        return doc, response.headers.get("Cache-Control")

    def _verify_signed(self, token: str, *, typ: str | None, online: bool) -> dict[str, Any]:
        """The claims of a JWS signed by one of the service's keys (EdDSA, a known kid),
        times not checked here. typ=None: a license token (anything but a verdict)."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as exc:
            raise jwt.InvalidTokenError(f"not a JWS: {exc}") from None
        if header.get("alg") != ALGORITHM:
            raise jwt.InvalidTokenError(f"algorithm {header.get('alg')!r} is not {ALGORITHM}")
        if typ is None and header.get("typ") == VERDICT_TYP:
            raise jwt.InvalidTokenError("a verdict is not a license token")
        if typ is not None and header.get("typ") != typ:
            raise jwt.InvalidTokenError(f"typ {header.get('typ')!r} is not {typ!r}")
        key = self.jwks.key(str(header.get("kid", "")), online=online)
        if key is None:
            raise jwt.InvalidTokenError(f"unknown key {header.get('kid')!r}")
        return jwt.decode(
            token,
            key,
            algorithms=[ALGORITHM],
            issuer=ISSUER,
            options={"verify_exp": False, "verify_iat": False, "verify_nbf": False},
        )

    # --- the service's routes -----------------------------------------------------------

    def activate(
        self,
        client_id: str,
        *,
        email: str | None = None,
        password: str | None = None,
        access_token: str | None = None,
    ) -> Activation:
        """Activate (or find again) this client's license: with the user's email and
        password, or an access token. The token is verified and stored."""
        headers: dict[str, str] = {}
        body: dict[str, Any] = {"client_id": client_id}
        if access_token is not None:
            headers["Authorization"] = f"Bearer {access_token}"
        else:
            if email is None or password is None:
                raise ValueError("activate needs email and password, or access_token")
            body.update(email=email, password=password)
        response = self._request("POST", f"{API}/licenses/activate", json=body, headers=headers)
        answer = response.json()
        token = answer.get("token")
        try:
            claims = self._verify_signed(str(token), typ=None, online=True)
        except jwt.InvalidTokenError as exc:
            raise UntrustedAnswer(f"the activation's token does not verify: {exc}") from None
        if claims.get("client_id") != client_id:
            raise UntrustedAnswer("the activation's token is for another client")
        now = self._clock()
        with self._lock:
            self._state.update(
                token=token,
                client_id=client_id,
                license_id=claims["license_id"],
                last_online_success=now,
                last_server_time=max(
                    claims.get("iat", 0), self._state.load().get("last_server_time") or 0
                ),
                last_code=Code.VALID.value,
            )
        return Activation(License.from_json(answer), token, response.status_code == 201)

    def validate(self, token: str | None = None, client_id: str | None = None) -> Validation:
        """Ask the service, with a fresh nonce, and verify its signed verdict. Raises
        ServiceUnreachable, UntrustedAnswer (a fake, replayed or mismatched answer) or an
        ApiError. Records the answer in the state when `token` is the stored one."""
        stored = self._state_snapshot()
        token = token if token is not None else stored.get("token")
        client_id = client_id if client_id is not None else stored.get("client_id")
        if not token:
            raise ValueError("no license token: activate first, or pass one")
        nonce = secrets.token_urlsafe(24)
        body: dict[str, Any] = {"token": token, "nonce": nonce}
        if client_id is not None:
            body["client_id"] = client_id
        response = self._request("POST", f"{API}/licenses/validate", json=body)
        try:
            answer = response.json()
        except ValueError:
            raise UntrustedAnswer("validate's answer is not JSON") from None
        if not isinstance(answer, dict):
            raise UntrustedAnswer("validate's answer is not an object")
        validation = self._verified_validation(answer, token, client_id, nonce, stored)
        if not stored.get("token") or (
            token == stored.get("token") and client_id == stored.get("client_id")
        ):
            self._record_online(validation, token, client_id)
        return validation

    def _verified_validation(
        self,
        answer: dict[str, Any],
        token: str,
        client_id: str | None,
        nonce: str,
        stored: dict[str, Any],
    ) -> Validation:
        verdict = answer.get("verdict")
        if not isinstance(verdict, str):
            raise UntrustedAnswer("the answer carries no signed verdict")
        try:
            claims = self._verify_signed(verdict, typ=VERDICT_TYP, online=True)
        except jwt.InvalidTokenError as exc:
            raise UntrustedAnswer(f"the verdict does not verify: {exc}") from None
        try:
            code = Code(claims.get("code"))
        except ValueError:
            raise UntrustedAnswer(f"unknown verdict code {claims.get('code')!r}") from None
        if claims.get("nonce") != nonce:
            raise UntrustedAnswer("the verdict is for another request (nonce): a replay?")
        if answer.get("code") != code.value or answer.get("valid") != (code is Code.VALID):
            raise UntrustedAnswer("the answer says otherwise than its verdict")
        if claims.get("client_id") != client_id:
            raise UntrustedAnswer("the verdict is for another client id")
        try:
            token_license = jwt.decode(token, options={"verify_signature": False}).get("license_id")
        except jwt.InvalidTokenError:
            token_license = None
        if code is not Code.INVALID_TOKEN and claims.get("license_id") != token_license:
            raise UntrustedAnswer("the verdict is about another license")
        iat, exp = claims.get("iat"), claims.get("exp")
        if not isinstance(iat, int | float) or not isinstance(exp, int | float):
            raise UntrustedAnswer("the verdict has no iat/exp")
        if not 0 < exp - iat <= MAX_VERDICT_LIFETIME:
            raise UntrustedAnswer("the verdict's lifetime is not a verdict's")
        # Fresh: made for this request (the nonce above: nobody can have signed it before
        # the request was sent), short-lived, and not older than a server time already
        # seen. Not compared with this machine's clock: a clock that is off must not make
        # the service's genuine answers untrusted (offline, the clock check handles it).
        if iat + self.max_clock_drift < (stored.get("last_server_time") or 0):
            raise UntrustedAnswer("the verdict is older than an answer already seen")
        fresh_token = answer.get("token")
        if fresh_token is not None and fresh_token != token:
            try:
                fresh = self._verify_signed(str(fresh_token), typ=None, online=True)
            except jwt.InvalidTokenError as exc:
                raise UntrustedAnswer(f"the renewed token does not verify: {exc}") from None
            if fresh.get("license_id") != token_license or (
                client_id is not None and fresh.get("client_id") != client_id
            ):
                raise UntrustedAnswer("the renewed token is for another license or client")
        else:
            fresh_token = None
        license_ = answer.get("license")
        return Validation(
            code=code,
            license=License.from_json(license_) if isinstance(license_, dict) else None,
            server_time=datetime.fromtimestamp(iat, UTC),
            token=fresh_token,
        )

    def _state_snapshot(self) -> dict[str, Any]:
        with self._lock:
            return self._state.load()

    def _record_online(self, validation: Validation, token: str, client_id: str | None) -> None:
        now = self._clock()
        with self._lock:
            stored = self._state.load()
            changes: dict[str, Any] = {
                "last_code": validation.code.value,
                "last_server_time": max(
                    validation.server_time.timestamp(), stored.get("last_server_time") or 0
                ),
                "last_online_success": now,
            }
            if not stored.get("token"):
                changes.update(token=token, client_id=client_id)
            if validation.token is not None:
                changes["token"] = validation.token  # terms changed: the renewed token
            if validation.license is not None:
                changes["license_id"] = validation.license.license_id
            self._state.update(**changes)

    def deactivate(self, token: str | None = None, client_id: str | None = None) -> License:
        """Give the license up from the app (its token and client id; no password): the
        service revokes it and frees the seat. The stored license is forgotten."""
        stored = self._state_snapshot()
        token = token if token is not None else stored.get("token")
        client_id = client_id if client_id is not None else stored.get("client_id")
        if not token or not client_id:
            raise ValueError("no license to deactivate: pass token and client_id")
        response = self._request(
            "POST", f"{API}/licenses/deactivate", json={"token": token, "client_id": client_id}
        )
        with self._lock:
            if self._state.load().get("token") == token:
                self._state.clear()
        return License.from_json(response.json())

    # --- offline, and the check an app makes ---------------------------------------------

    def verify_offline(self, token: str | None = None, client_id: str | None = None) -> CheckResult:
        """The token checked with the cached keys only (no network), the clock checked
        against the last server time seen, and the last online answer respected: a
        license the service called REVOKED, SUSPENDED (or anything but VALID) stays so.
        No grace period applies here."""
        with self._lock:
            stored = self._state.load()
        token = token if token is not None else stored.get("token")
        client_id = client_id if client_id is not None else stored.get("client_id")
        return self._offline(stored, token, client_id, None, grace=False)

    def _offline(
        self,
        stored: dict[str, Any],
        token: str | None,
        client_id: str | None,
        reason: str | None,
        *,
        grace: bool,
    ) -> CheckResult:
        def result(code: CheckCode, claims: dict[str, Any] | None = None) -> CheckResult:
            claims = claims or {}
            exp = claims.get("exp")
            return CheckResult(
                code=code,
                online=False,
                token=token,
                license_id=claims.get("license_id", stored.get("license_id")),
                expires_at=datetime.fromtimestamp(exp, UTC) if exp is not None else None,
                offline_reason=reason,
            )

        if not token:
            return result(CheckCode.INVALID_TOKEN)
        # The refusals first, on the token's claims as written (a forged token gains
        # nothing here: it is refused below when its signature is checked).
        try:
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.InvalidTokenError:
            return result(CheckCode.INVALID_TOKEN)
        same_license = stored.get("token") == token or (
            stored.get("license_id") is not None
            and stored.get("license_id") == unverified.get("license_id")
        )
        last_code = stored.get("last_code") if same_license else None
        if last_code is not None and last_code != Code.VALID.value:
            # The service's last word (REVOKED, SUSPENDED, EXPIRED, …) is never overridden
            # offline: only the service can lift it.
            return result(CheckCode(last_code), unverified)
        now = self._clock()
        iat = unverified.get("iat")
        seen = max(
            float(iat) if isinstance(iat, int | float) else 0.0,
            float(stored.get("last_server_time") or 0),
            float(stored.get("last_online_success") or 0),
        )
        if now + self.max_clock_drift < seen:
            return result(CheckCode.CLOCK_TAMPERED, unverified)
        if grace:
            last_success = stored.get("last_online_success") if same_license else None
            if last_success is None or now - last_success > self.grace_period:
                return result(CheckCode.GRACE_EXPIRED, unverified)
        try:
            claims = self._verify_signed(token, typ=None, online=False)
        except jwt.InvalidTokenError:
            return result(CheckCode.INVALID_TOKEN)
        if client_id is not None and claims.get("client_id") != client_id:
            return result(CheckCode.CLIENT_MISMATCH, claims)
        exp = claims.get("exp")
        if not isinstance(exp, int | float) or exp <= now:
            return result(CheckCode.EXPIRED, claims)
        return result(CheckCode.VALID, claims)

    def check(self, token: str | None = None, client_id: str | None = None) -> CheckResult:
        """Online first. When the service cannot be reached (network error, timeout, 5xx)
        or its answer cannot be trusted (no verdict, a bad signature, another nonce), the
        offline check decides — within the grace period since the last successful online
        check; the result says `online=False` and why."""
        stored = self._state_snapshot()
        token = token if token is not None else stored.get("token")
        client_id = client_id if client_id is not None else stored.get("client_id")
        if not token:
            raise ValueError("no license token: activate first, or pass one")
        try:
            validation = self.validate(token, client_id)
        except (ServiceUnreachable, UntrustedAnswer) as exc:
            reason = f"{type(exc).__name__}: {exc}"
            return self._offline(self._state_snapshot(), token, client_id, reason, grace=True)
        in_use = validation.token or token
        claims: dict[str, Any] = {}
        with contextlib.suppress(jwt.InvalidTokenError):
            claims = jwt.decode(in_use, options={"verify_signature": False})
        exp = claims.get("exp")
        return CheckResult(
            code=CheckCode(validation.code.value),
            online=True,
            token=in_use,
            license_id=claims.get("license_id"),
            expires_at=datetime.fromtimestamp(exp, UTC) if exp is not None else None,
        )

    def stored_token(self) -> str | None:
        return self._state_snapshot().get("token")
