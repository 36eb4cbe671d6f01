"""The delivery worker (`flask webhooks deliver`): posts due deliveries, signed, at least
once, with retries over about three days (ADR 0013).

Several workers may run at once without double work: each claims a batch by writing a
lease (its name and an expiry) on due rows — on PostgreSQL selected `FOR UPDATE SKIP
LOCKED`, on SQLite under the database's single writer — and posts only what it claimed. Just
before posting each delivery it renews that one delivery's lease (a conditional UPDATE on
its claim); if the lease has lapsed meanwhile — a batch to slow receivers can outlast one
lease — it skips the delivery, which another worker may have taken. The lease must be at
least twice the request timeout, so that it outlasts any one post. A
worker killed mid-delivery leaves its lease to expire; the delivery is then posted again (the
receiver deduplicates by `webhook-id`, the event id). Nothing is held open while posting.

Outcomes: 2xx succeeded. 410 Gone disables the endpoint. 429, 502 and 504 are retried no
sooner than `Retry-After` says. Anything else (another status, a 3xx — redirects are not
followed —, a timeout, a refused connection, a URL that now resolves to a refused address)
is retried on the schedule; after the last attempt the delivery is `failed`. An endpoint
whose every delivery has failed for FAILING_DAYS is disabled.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import os
import random
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session, sessionmaker
from standardwebhooks import Webhook

from app.kernel.db import transaction, utcnow
from app.kernel.faults import failpoint
from app.kernel.metrics import WEBHOOK_DELIVERIES, webhook_backlog_age
from app.kernel.ownership import acting_as
from app.webhooks import MODULE, secrets, service, urls
from app.webhooks.models import WebhookDelivery, WebhookEndpoint

log = logging.getLogger(__name__)

# Seconds to wait before each attempt after the first (the Standard Webhooks schedule):
# immediately, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 14 h, 20 h, 24 h — about three days.
SCHEDULE = (0, 5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400)
SLOW_DOWN = frozenset({429, 502, 504})
MAX_RETRY_AFTER = timedelta(hours=24)
FAILING_DAYS = 5
RESPONSE_KEPT = 1000  # characters of the response body kept
USER_AGENT = "licensing-webhooks/1"


@dataclass(frozen=True)
class Attempt:
    status_code: int | None
    latency_ms: int
    response: str | None = None
    error: str | None = None
    retry_after: timedelta | None = None


def retry_after(value: str | None, now: datetime) -> timedelta | None:
    """A Retry-After header (seconds, or an HTTP date) as a delay, within 0 and 24 h."""
    if not value:
        return None
    value = value.strip()
    try:
        delay = (
            timedelta(seconds=int(value))
            if value.isdigit()
            else (parsedate_to_datetime(value) - now)
        )
    except (TypeError, ValueError, OverflowError):
        return None
    return max(timedelta(0), min(delay, MAX_RETRY_AFTER))


def post(target: urls.Target, headers: Mapping[str, str], body: bytes, timeout: float) -> Attempt:
    """POST `body` to the address that was checked (not a fresh lookup): one request, no
    redirects followed. `timeout` bounds the whole exchange, not each read: a receiver that
    drips its answer a byte at a time is cut off when it runs out."""
    started = time.monotonic()
    conn_class = (
        http.client.HTTPSConnection if target.scheme == "https" else http.client.HTTPConnection
    )
    conn = conn_class(target.host, target.port, timeout=timeout)
    expired = threading.Event()

    def cut_off() -> None:
        expired.set()
        if conn.sock is not None:
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)

    def connect() -> None:
        sock = socket.create_connection((target.address, target.port), timeout)
        if target.scheme == "https":
            context = ssl.create_default_context()
            sock = context.wrap_socket(sock, server_hostname=target.host)
        conn.sock = sock

    conn.connect = connect  # type: ignore[method-assign]
    deadline = threading.Timer(timeout, cut_off)
    deadline.daemon = True
    deadline.start()
    try:
        conn.request("POST", target.path, body=body, headers=dict(headers))
        response = conn.getresponse()
        text = response.read(RESPONSE_KEPT).decode("utf-8", "replace")
        if expired.is_set():
            raise TimeoutError
        return Attempt(
            response.status,
            int((time.monotonic() - started) * 1000),
            text,
            retry_after=retry_after(response.getheader("Retry-After"), utcnow()),
        )
    except (OSError, http.client.HTTPException) as exc:
        error = "timed out" if expired.is_set() else _describe(exc)
        return Attempt(None, int((time.monotonic() - started) * 1000), error=error)
    finally:
        deadline.cancel()
        conn.close()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timed out"
    return (str(exc) or type(exc).__name__)[:500]


class Deliverer:
    """Claims due deliveries and posts them. `run_once()` is one batch; `run()` loops.
    `clock` is injectable so that tests make time pass explicitly."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        config: Mapping[str, Any],
        *,
        name: str | None = None,
        batch_size: int = 20,
        lease_seconds: int | None = None,
        clock: Callable[[], datetime] = utcnow,
        jitter: Callable[[], float] = lambda: random.uniform(0.9, 1.1),  # noqa: S311
        send: Callable[[urls.Target, Mapping[str, str], bytes, float], Attempt] = post,
        resolver: Any = None,
    ) -> None:
        self.sessions = sessions
        self.config = config
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self.batch_size = batch_size
        self.clock = clock
        self.jitter = jitter
        self.send = send
        self.resolver = resolver
        self._token = ""
        self.timeout = float(config.get("WEBHOOKS_TIMEOUT_SECONDS") or 15)
        if lease_seconds is None:
            lease_seconds = max(60, int(2 * self.timeout))
        self.lease = timedelta(seconds=lease_seconds)
        if self.lease < timedelta(seconds=2 * self.timeout):
            # Each delivery's lease is renewed just before it is posted: it must outlast
            # one post, which may take the whole timeout, with room to record the result.
            raise ValueError(
                f"the lease ({lease_seconds} s) must be at least twice "
                f"WEBHOOKS_TIMEOUT_SECONDS: {2 * self.timeout:g} s or more"
            )

    def run(self, *, interval: float = 1.0, stop: Callable[[], bool] = lambda: False) -> None:
        failures = 0
        while not stop():
            try:
                done = self.run_once()
                failures = 0
            except Exception as exc:  # the database away: back off, try again
                failures += 1
                log.warning("webhooks deliver: %s (retrying)", str(exc).splitlines()[0])
                time.sleep(min(interval * 2**failures, 30))
                continue
            if done < self.batch_size:
                time.sleep(interval)

    def run_once(self) -> int:
        """Claim a batch of due deliveries and post each; returns how many were posted."""
        with acting_as(MODULE):
            claimed = self._claim()
            for delivery_id in claimed:
                self._deliver(delivery_id)
            self._measure()
        return len(claimed)

    def _claim(self) -> list[str]:
        now = self.clock()
        # Each claim has its own token: what this worker posts is what this claim leased.
        token = self._token = f"{self.name}/{uuid.uuid4().hex[:8]}"
        due = (
            select(WebhookDelivery.delivery_id)
            .join(WebhookEndpoint, WebhookEndpoint.webhook_id == WebhookDelivery.webhook_id)
            .where(
                WebhookDelivery.status == "pending",
                WebhookDelivery.next_attempt_at <= now,
                or_(WebhookDelivery.lease_until.is_(None), WebhookDelivery.lease_until < now),
                WebhookEndpoint.enabled.is_(True),
            )
            .order_by(WebhookDelivery.next_attempt_at)
            .limit(self.batch_size)
        )
        with self.sessions() as session, transaction(session):
            if session.get_bind().dialect.name == "postgresql":
                due = due.with_for_update(of=WebhookDelivery, skip_locked=True)
            ids = list(session.scalars(due))
            if not ids:
                return []
            # The condition again in the UPDATE: a row another worker leased meanwhile
            # (SQLite: between the two statements) is not taken twice.
            session.execute(
                update(WebhookDelivery)
                .where(
                    WebhookDelivery.delivery_id.in_(ids),
                    WebhookDelivery.status == "pending",
                    or_(WebhookDelivery.lease_until.is_(None), WebhookDelivery.lease_until < now),
                )
                .values(lease_until=now + self.lease, leased_by=token)
                .execution_options(synchronize_session=False)
            )
            return list(
                session.scalars(
                    select(WebhookDelivery.delivery_id).where(
                        WebhookDelivery.delivery_id.in_(ids), WebhookDelivery.leased_by == token
                    )
                )
            )

    def _deliver(self, delivery_id: str) -> None:
        with self.sessions() as session, transaction(session):
            if not self._renew(session, delivery_id):
                return  # the lease lapsed (another worker may have it now) or it is gone
            delivery = session.get(WebhookDelivery, delivery_id)
            endpoint = session.get(WebhookEndpoint, delivery.webhook_id) if delivery else None
            if delivery is None or endpoint is None:
                return
            request = self._request(endpoint, delivery, self.clock())
        attempt = request if isinstance(request, Attempt) else self.send(*request, self.timeout)
        failpoint("webhooks.deliver.after_post")
        with self.sessions() as session, transaction(session):
            self._record(session, delivery_id, attempt)

    def _renew(self, session: Session, delivery_id: str) -> bool:
        """Extend this claim's lease on one delivery just before posting it; False if the
        lease has lapsed meanwhile (a batch posted to slow receivers outlives one lease):
        then it is not posted, whether or not another worker has taken it since."""
        now = self.clock()
        renewed = session.execute(
            update(WebhookDelivery)
            .where(
                WebhookDelivery.delivery_id == delivery_id,
                WebhookDelivery.leased_by == self._token,
                WebhookDelivery.status == "pending",
                WebhookDelivery.lease_until > now,
            )
            .values(lease_until=now + self.lease)
            .execution_options(synchronize_session=False)
        )
        return renewed.rowcount == 1

    def _request(
        self, endpoint: WebhookEndpoint, delivery: WebhookDelivery, now: datetime
    ) -> Attempt | tuple[urls.Target, dict[str, str], bytes]:
        """What to post (the checked address, headers, body), or the failed Attempt when
        there is nothing that may be posted."""
        body = delivery.body.encode()
        if not service.envelope_size_ok(delivery.body):
            return Attempt(
                None, 0, error=f"the event is larger than {service.MAX_BODY_BYTES} bytes"
            )
        try:
            target = urls.resolve(
                endpoint.url, **service.url_policy(self.config), resolver=self.resolver
            )
            headers = self._headers(endpoint, delivery, now)
        except (urls.UrlRefused, secrets.SecretUnreadable) as exc:
            return Attempt(None, 0, error=str(exc)[:500])
        return target, headers, body

    def _headers(
        self, endpoint: WebhookEndpoint, delivery: WebhookDelivery, now: datetime
    ) -> dict[str, str]:
        keys = [secrets.decrypt(self.config, endpoint.secret)]
        expires = endpoint.previous_secret_expires_at
        if endpoint.previous_secret and expires is not None and expires > now:
            keys.append(secrets.decrypt(self.config, endpoint.previous_secret))
        # Signed at the real time of sending (receivers refuse timestamps off by minutes),
        # whatever clock schedules the attempts.
        signed_at = utcnow()
        signatures = [
            Webhook(key).sign(delivery.event_id, signed_at, delivery.body) for key in keys
        ]
        return {
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            "webhook-id": delivery.event_id,
            "webhook-timestamp": str(int(signed_at.timestamp())),
            "webhook-signature": " ".join(signatures),
        }

    def _record(self, session: Session, delivery_id: str, attempt: Attempt) -> None:
        delivery = session.get(WebhookDelivery, delivery_id, with_for_update=True)
        if delivery is None or delivery.leased_by != self._token or delivery.status != "pending":
            return  # deleted, redelivered or taken over meanwhile
        endpoint = session.get(WebhookEndpoint, delivery.webhook_id, with_for_update=True)
        now = self.clock()
        delivery.attempts += 1
        delivery.last_attempt_at = now
        delivery.last_status_code = attempt.status_code
        delivery.last_latency_ms = attempt.latency_ms
        delivery.last_error = attempt.error
        delivery.last_response = (attempt.response or None) and attempt.response[:RESPONSE_KEPT]
        delivery.lease_until, delivery.leased_by = None, None
        code = attempt.status_code
        if code is not None and 200 <= code < 300:
            delivery.status = "succeeded"
            if endpoint is not None:
                endpoint.failing_since = None
            WEBHOOK_DELIVERIES.labels("succeeded").inc()
            return
        if code == 410:
            delivery.status = "failed"
            WEBHOOK_DELIVERIES.labels("gone").inc()
            if endpoint is not None and endpoint.enabled:
                service.disable_endpoint(session, endpoint, "the receiver answered 410 Gone")
            return
        if endpoint is not None:
            endpoint.failing_since = endpoint.failing_since or now
            if endpoint.enabled and now - endpoint.failing_since >= timedelta(days=FAILING_DAYS):
                service.disable_endpoint(
                    session, endpoint, f"every delivery failed for {FAILING_DAYS} days"
                )
        if delivery.attempts >= len(SCHEDULE):
            delivery.status = "failed"
            WEBHOOK_DELIVERIES.labels("failed").inc()
            return
        delay = timedelta(seconds=SCHEDULE[delivery.attempts] * self.jitter())
        if code in SLOW_DOWN and attempt.retry_after is not None:
            delay = max(delay, attempt.retry_after)
        delivery.next_attempt_at = now + delay
        WEBHOOK_DELIVERIES.labels("retrying").inc()

    def _measure(self) -> None:
        with self.sessions() as session:
            pending = service.backlog(session)
        age = (
            (self.clock() - pending.oldest_pending).total_seconds() if pending.oldest_pending else 0
        )
        webhook_backlog_age().set(max(age, 0))
