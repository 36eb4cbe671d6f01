"""The multi-step workflows of orders, each step its own transaction.

These are entry-point code (called by routes and the CLI): they own the transaction
boundaries, because money must never move inside a database transaction. The steps
themselves are in `service` (placing), `cancellation` and `renewals`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from typing import Any, TypeVar

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.auth import api as auth_api
from app.kernel.db import transaction, utcnow
from app.kernel.errors import ProblemError, is_transient, problem
from app.orders import cancellation, recovery, renewals, service
from app.orders.payments import PaymentDeclined, PaymentGateway, PaymentUnavailable
from app.orders.plans import Plan

log = logging.getLogger(__name__)
T = TypeVar("T")


class PaymentUnavailableProblem(ProblemError):
    status, code = 502, "payment_unavailable"


class OrderFailed(ProblemError):
    status, code = 409, "order_failed"


class RunInterrupted(Exception):
    """The database went away during a recovery or renewal run, which stopped there: `cause`
    is the database's error, `report` what the run did before, `pending` the orders it found
    and left pending (recovery; the next run finishes them)."""

    def __init__(self, cause: Exception, report: Any, pending: list[str] | None = None) -> None:
        super().__init__(str(cause))
        self.cause, self.report, self.pending = cause, report, pending or []


def _outage(exc: BaseException) -> str | None:
    """The one line a lost or locked database deserves in a log (a traceback says nothing
    more about it); None for any other error, whose traceback is worth keeping."""
    if isinstance(exc, Exception) and is_transient(exc):
        return (str(exc).splitlines() or [type(exc).__name__])[0]
    return None


def _log_failure(level: int, order_id: str, what: str, exc: Exception) -> None:
    """`order <id>: <what>` with the traceback — or, for a database gone away, its cause on
    the same line instead."""
    outage = _outage(exc)
    text = f"{what} (database unavailable: {outage})" if outage else what
    log.log(level, "order %s: %s", order_id, text, exc_info=not outage)


@dataclass(frozen=True)
class Settings:
    lease: timedelta = timedelta(seconds=60)
    wait_for_other_attempt: float = 10.0  # seconds a retry waits for a racing one to finish


def _charge(gateway: PaymentGateway, order: Any) -> Any:
    """Charge an order's amount; the order id makes retries of the same order idempotent."""
    return gateway.charge(
        amount_cents=order.amount_cents,
        currency=order.currency,
        payment_method=order.payment_method,
        idempotency_key=order.order_id,
    )


def place_order(
    session: Session,
    gateway: PaymentGateway,
    *,
    user_id: str,
    key: str,
    request: service.OrderRequest,
    plan: Plan,
    settings: Settings,
) -> tuple[int, dict[str, Any]]:
    """Claim, charge, settle. Returns (status, body) — the same for every retry of a key."""
    deadline = time.monotonic() + settings.wait_for_other_attempt
    while True:
        try:
            with transaction(session):
                claim = service.claim(session, user_id, key, request, plan, lease=settings.lease)
        except IntegrityError:
            if time.monotonic() > deadline:
                raise
            continue  # a racing retry inserted the key first: read it on the next pass
        if claim.replay is not None:
            return claim.replay
        if claim.order is not None:
            break
        if time.monotonic() > deadline:
            raise service.IdempotencyInProgress()
        time.sleep(0.05)  # another request is paying for this key: wait for its answer

    return _pay(session, gateway, claim.order, plan)


def _pay(
    session: Session, gateway: PaymentGateway, order: Any, plan: Plan | None
) -> tuple[int, dict[str, Any]]:
    """Charge a claimed order (the provider returns the same charge to every attempt of
    it) and settle it, or record why not. Returns (status, body), which its key replays.
    `plan` None: the plan left the catalog since the order (recovery), so nothing can be
    granted and the charge is refunded."""
    # Read now: a failed transaction's rollback expires `order`, and with the database gone
    # reading it again would fail before the refund below could be made.
    order_id, amount = order.order_id, order.amount_cents
    try:
        charge = _charge(gateway, order)
    except (PaymentDeclined, PaymentUnavailable) as exc:
        return _not_charged(session, order_id, declined=isinstance(exc, PaymentDeclined))
    if charge.refunded or plan is None:
        # A taken-over attempt whose settlement failed and was refunded but not recorded
        # (record it now, and answer what the first attempt should have), or nothing left to
        # grant: refund (the same refund, if one was made) and record it.
        outcome = _compensate(session, gateway, order_id, charge, amount)
        if outcome is None:
            raise OrderFailed("This order could not be completed; nothing was bought.")
        return outcome

    try:
        with transaction(session):
            body = service.fulfil(session, order_id, charge, plan)
    except service.FinishedElsewhere as finished:
        if finished.answer is None:
            raise OrderFailed("Another attempt of this order finished it first.") from None
        return finished.answer
    except service.Overtaken:
        log.warning("order %s: a later order was settled first; refunding", order_id)
        outcome = _compensate(session, gateway, order_id, charge, amount)
        if outcome is None:
            raise
        return outcome
    except Exception as exc:
        if _outage(exc):
            # The database went away, not the purchase: no refund. The order stays pending
            # with its charge (the provider hands it to the next attempt), and a retry after
            # the lease, or `flask orders recover`, settles it — the customer gets what they
            # paid for. Refunding here would undo a purchase over a dropped connection.
            _log_failure(logging.ERROR, order_id, "settling after the charge failed", exc)
            raise
        what = "settling after a successful charge failed; refunding"
        _log_failure(logging.ERROR, order_id, what, exc)
        outcome = _compensate(session, gateway, order_id, charge, amount)
        if outcome is None:
            raise
        return outcome
    return 201, body


def _not_charged(session: Session, order_id: str, *, declined: bool) -> tuple[int, dict[str, Any]]:
    """The charge failed, so nothing was bought: the order failed. A decline is the answer
    (402), which a retry with the same Idempotency-Key replays; an unavailable provider is a
    502, and the key is released for a retry."""
    if declined:
        body = problem(402, "payment_declined", "The payment was declined.", order_id=order_id)
        code, action, response = "payment_declined", "ORDER_PAYMENT_DECLINED", (402, body)
    else:
        code, action, response = "payment_unavailable", "ORDER_PAYMENT_FAILED", None
    with transaction(session):
        service.fail(session, order_id, failure_code=code, audit_action=action, response=response)
    if response is None:
        raise PaymentUnavailableProblem(
            "The payment provider is unavailable; nothing was charged. Retry later.",
            order_id=order_id,
        ) from None
    return response


def _record_refund(
    session: Session,
    order_id: str,
    charge: Any,
    refund: Any,
    *,
    failure_code: str,
    reason: str,
    response: tuple[int, dict[str, Any]] | None = None,
) -> None:
    """The order failed and its charge was refunded (ORDER_REFUNDED, `reason`), recorded in
    a transaction of its own."""
    with transaction(session):
        service.fail(
            session,
            order_id,
            failure_code=failure_code,
            audit_action="ORDER_REFUNDED",
            response=response,
            refund=refund,
            details={"reason": reason, "charge_id": charge.charge_id},
        )


def _compensate(
    session: Session, gateway: PaymentGateway, order_id: str, charge: Any, amount: int
) -> tuple[int, dict[str, Any]] | None:
    """Refund a charge whose order could not be settled, and record that — with the key
    completed, so a retry with the same Idempotency-Key replays this 502
    `settlement_failed` (naming the refund) and never charges again.

    If the refund or the record fails too (None), the order stays pending with its key
    claimed: a retry after the lease — or `recover_pending` (cron), for a client that never
    retries — takes it over, finds the charge (refunded or not) and settles or records it.
    """
    try:
        refund = gateway.refund(
            charge_id=charge.charge_id, amount_cents=amount, idempotency_key=f"{order_id}:refund"
        )
        body = problem(
            502,
            "settlement_failed",
            "The payment went through but the order could not be completed, so it was "
            "refunded; nothing was bought. Retry with a new Idempotency-Key.",
            order_id=order_id,
            refund_id=refund.refund_id,
        )
        _record_refund(
            session,
            order_id,
            charge,
            refund,
            failure_code="settlement_failed",
            reason="compensation",
            response=(502, body),
        )
        return 502, body
    except Exception as exc:
        what = "compensation incomplete; a retry after the lease will finish it"
        _log_failure(logging.CRITICAL, order_id, what, exc)
        return None


def _each_once(
    session: Session, fetch: Callable[[], list[T]], key: Callable[[T], str]
) -> Iterator[T]:
    """Every item `fetch` finds, batch after batch, each once (one that failed is still
    there in the next batch: it waits for the next run), until a batch has nothing new."""
    seen: set[str] = set()
    while True:
        found = [item for item in fetch() if key(item) not in seen]
        session.rollback()  # end the read snapshot before the write transactions
        if not found:
            return
        for item in found:
            seen.add(key(item))
            yield item


@dataclass
class RecoveryReport:
    settled: int = 0  # paid, the subscription granted
    refunded: int = 0  # charged, but could not be settled: refunded
    failed: int = 0  # nothing charged (declined, or the provider unavailable)
    skipped: int = 0  # a retry or another run took it first
    # Orders still pending after this run (the next one tries again): cron mails them.
    problems: list[str] = field(default_factory=list)


def recover_pending(
    session: Session, gateway: PaymentGateway, catalog: dict[str, Plan], settings: Settings
) -> RecoveryReport:
    """Finish every purchase whose attempt died after its claim (its lease ended), exactly
    as a retry with its Idempotency-Key would: take the lease over, charge (the provider
    returns the charge already made, by the order's id) and settle it — or refund it and
    record that. Safe to run twice at once, or alongside a client's retry. A database
    gone away stops the run (RunInterrupted): every order after would fail the same."""
    report, batch, now = RecoveryReport(), 100, utcnow()
    listed: dict[str, bool] = {}  # order id -> done with (finished, or another holds it)

    def stale() -> list[str]:
        found = recovery.stale_purchases(session, now=now, limit=batch)
        for order_id in found:
            listed.setdefault(order_id, False)
        return found

    try:
        for order_id in _each_once(session, stale, key=str):
            listed[order_id] = _recover_one(
                session, gateway, catalog, order_id, lease=settings.lease, report=report
            )
    except Exception as exc:
        if not listed or not _outage(exc):
            raise  # nothing found yet: the database's error is the whole story
        session.rollback()
        pending = [order_id for order_id, done in listed.items() if not done]
        raise RunInterrupted(exc, report, pending) from None
    return report


def _recover_one(session, gateway, catalog, order_id, *, lease, report) -> bool:
    """Recover one order; False when it is still pending (the next run retries it)."""
    with transaction(session):
        order = recovery.take_over(session, order_id, lease=lease, now=utcnow())
    if order is None:
        report.skipped += 1
        return True
    try:
        status, _ = _pay(session, gateway, order, catalog.get(order.plan))
    except PaymentUnavailableProblem:
        report.failed += 1  # recorded, nothing charged
        return True
    except Exception as exc:  # still pending: the next run retries it
        session.rollback()
        if _outage(exc):
            raise  # the database is gone: the run stops, and says which orders it left
        log.exception("order %s: recovery did not finish it", order_id)
        report.problems.append(f"order {order_id}: still pending ({type(exc).__name__})")
        return False
    if status == 201:
        report.settled += 1
    elif status == 502:
        report.refunded += 1
    else:
        report.failed += 1
    return True


def cancel_order(
    session: Session,
    gateway: PaymentGateway,
    *,
    order_id: str,
    user_id: str,
    is_admin: bool,
    renewal_lead: timedelta = timedelta(0),
) -> Any:
    """Refund and cancel a paid order; idempotent (cancelling again returns the order)."""
    with transaction(session):
        order = cancellation.begin_cancel(
            session, order_id, user_id=user_id, is_admin=is_admin, renewal_lead=renewal_lead
        )
    if order is None:
        return service.get_order(session, order_id, user_id=user_id, is_admin=is_admin)
    try:
        refund = gateway.refund(
            charge_id=order.charge_id,
            amount_cents=order.amount_cents,
            idempotency_key=f"{order.order_id}:cancel",
        )
    except PaymentUnavailable:
        with transaction(session):
            cancellation.revert_cancel(session, order.order_id)
        raise PaymentUnavailableProblem(
            "The refund could not be made; the order is unchanged."
        ) from None
    with transaction(session):
        return cancellation.finish_cancel(session, order.order_id, refund, actor_id=user_id)


@dataclass
class RenewalReport:
    """What one renewal run did (`flask subscriptions renew` prints it): subscriptions renewed,
    declined (failed), not renewed by this run (skipped: another run holds them, or their plan
    left the catalog) and lapsed, and the money charged per currency."""

    renewed: int = 0
    failed: int = 0
    skipped: int = 0
    lapsed: int = 0
    charged_cents: dict[str, int] = field(default_factory=dict)
    # Subscriptions that cannot be renewed whatever happens next: the run must fail loudly.
    problems: list[str] = field(default_factory=list)


def renew_due(
    session: Session,
    gateway: PaymentGateway,
    catalog: dict[str, Plan],
    *,
    grace: timedelta,
    lease: timedelta,
    lead: timedelta = timedelta(0),
    batch: int = 100,
) -> RenewalReport:
    """Charge every subscription due within `lead`, extend it from its renewal date; past
    due on a decline; lapse past-due ones beyond the grace period. Safe to run twice at
    once or twice in a row."""
    report = RenewalReport()
    now = utcnow()
    due = partial(auth_api.due_subscriptions, session, now + lead, limit=batch)
    try:
        for sub in _each_once(session, due, key=lambda s: s.subscription_id):
            _renew_one(session, gateway, catalog, sub, now=now, lease=lease, report=report)
        with transaction(session):
            report.lapsed = auth_api.lapse_past_due_subscriptions(
                session, grace=grace, now=utcnow()
            )
    except Exception as exc:
        if not _outage(exc) or not (report.renewed or report.failed or report.skipped):
            raise  # nothing done yet: the database's error is the whole story
        session.rollback()  # the one being settled keeps its claim: the next run renews it
        raise RunInterrupted(exc, report) from None
    return report


def _renew_one(session, gateway, catalog, sub, *, now, lease, report) -> None:
    plan = catalog.get(sub.plan)
    if plan is None:
        problem = (
            f"subscription {sub.subscription_id}: plan {sub.plan!r} is not in the plan catalog "
            "(PLANS_JSON); not renewed"
        )
        log.error("%s", problem)
        report.problems.append(problem)
        report.skipped += 1
        return
    with transaction(session):
        order = renewals.claim_renewal(session, sub, plan, lease=lease, now=now)
    if order is None:
        report.skipped += 1
        return
    try:
        charge = _charge(gateway, order)
    except (PaymentDeclined, PaymentUnavailable) as exc:
        declined = isinstance(exc, PaymentDeclined)
        with transaction(session):
            renewals.fail_renewal(
                session,
                order.order_id,
                sub,
                failure_code="payment_declined" if declined else "payment_unavailable",
                retry=not declined,
            )
        report.failed += 1
        return
    with transaction(session):
        settled = renewals.settle_renewal(session, order.order_id, charge, sub, plan)
    if not settled:  # cancelled (or renewed elsewhere) while we charged: give it back
        refund = gateway.refund(
            charge_id=charge.charge_id,
            amount_cents=order.amount_cents,
            idempotency_key=f"{order.order_id}:refund",
        )
        ended = "subscription_ended"
        _record_refund(session, order.order_id, charge, refund, failure_code=ended, reason=ended)
        report.failed += 1
        return
    report.renewed += 1
    report.charged_cents[order.currency] = (
        report.charged_cents.get(order.currency, 0) + order.amount_cents
    )
