"""The customer portal's orders pages (run as orders): buy or upgrade a plan, the orders
with cancel. Purchases go through the same workflow as POST /api/v1/orders; each rendered
form carries its own Idempotency-Key, so a double submit charges once."""

from __future__ import annotations

import uuid
from typing import Any

from flask import current_app, flash, redirect, render_template, request, url_for
from pydantic import ValidationError

from app.auth import api as auth_api
from app.console.web import console_blueprint, current_user, form_errors, requires_user
from app.kernel.db import get_session
from app.kernel.errors import ProblemError
from app.kernel.pagination import decode_keyset
from app.orders import service, workflows
from app.orders.routes import KEY_PATTERN, catalog, gateway, settings
from app.orders.schemas import OrderIn

bp = console_blueprint("orders", "shop", "/account")


def _plans_page(errors: list[str], status: int = 200, form: dict[str, str] | None = None) -> Any:
    db = get_session()
    user_id = current_user().user_id
    page = render_template(
        "account/plans.html",
        plans=[p for p in catalog().values() if p.purchasable],
        subscription=auth_api.live_subscription(db, user_id),
        idempotency_key=str(uuid.uuid4()),
        errors=errors,
        form=form or {},
    )
    return page, status


@bp.get("/plans")
@requires_user
def plans() -> Any:
    return _plans_page([])


@bp.post("/orders")
@requires_user
def place_order() -> Any:
    form = {k: request.form.get(k, "") for k in ("plan", "seats", "payment_token")}
    key = request.form.get("idempotency_key", "")
    if not KEY_PATTERN.match(key):
        return _plans_page(["The form is incomplete: reload the page and try again."], 400, form)
    try:
        seats = int(form["seats"]) if form["seats"].strip() else None
    except ValueError:
        return _plans_page(["Seats: enter a whole number."], 422, form)
    try:
        body = OrderIn(plan=form["plan"], seats=seats, payment_token=form["payment_token"])
        plan, seats = service.plan_to_buy(catalog(), body.plan, body.seats)
    except ValidationError as exc:
        return _plans_page(form_errors(exc), 422, form)
    except ProblemError as exc:
        return _plans_page([exc.detail], exc.status, form)
    status, answer = workflows.place_order(
        get_session(),
        gateway(),
        user_id=current_user().user_id,
        key=key,
        request=service.OrderRequest(plan.plan, seats, body.payment_token),
        plan=plan,
        settings=settings(),
    )
    if status >= 400:
        return _plans_page([answer.get("detail", "The order failed.")], status, form)
    flash(f"Thank you: {answer['plan']} with {answer['seats']} seats is yours.", "ok")
    return redirect(url_for(".orders"), code=303)


@bp.get("/orders")
@requires_user
def orders() -> Any:
    db = get_session()
    after = decode_keyset(request.args.get("cursor"), (str,))
    items, next_cursor = service.list_orders(db, current_user().user_id, limit=20, after=after)
    return render_template(
        "account/orders.html",
        orders=[service.order_body(o) for o in items],
        next_cursor=next_cursor,
    )


@bp.post("/orders/<order_id>/cancel")
@requires_user
def cancel_order(order_id: str) -> Any:
    order = workflows.cancel_order(
        get_session(),
        gateway(),
        order_id=order_id,
        user_id=current_user().user_id,
        is_admin=False,
        renewal_lead=current_app.config["RENEWAL_LEAD"],
    )
    flash(f"Order {order.order_id} is cancelled and refunded.", "ok")
    return redirect(url_for(".orders"), code=303)
