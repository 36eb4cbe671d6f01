"""orders' HTTP API: plans, orders (idempotent), cancel, the dashboard."""

from __future__ import annotations

import re
from typing import Any

from flask import current_app, request
from flask_jwt_extended import get_jwt, jwt_required

from app.auth import api as auth_api
from app.http.problems import problem_body_response
from app.kernel.db import get_session
from app.kernel.errors import ProblemError
from app.kernel.pagination import PageQuery, decode_keyset
from app.kernel.web import BEARER_AUTH, problem_responses, request_headers
from app.orders import bp, service, workflows
from app.orders.payments import PaymentGateway, gateway_of
from app.orders.plans import Plan, catalog_of
from app.orders.schemas import DashboardOut, OrderIn, OrderOut, OrderPage, PlanOut

KEY_PATTERN = re.compile(r"^[\x21-\x7e]{1,255}$")


class IdempotencyKeyRequired(ProblemError):
    status, code = 400, "idempotency_key_required"


def catalog() -> dict[str, Plan]:
    return catalog_of(current_app)


def gateway() -> PaymentGateway:
    return gateway_of(current_app)


def settings() -> workflows.Settings:
    return workflows.Settings(lease=current_app.config["ORDER_LEASE"])


@bp.get("/plans")
@bp.output(list[PlanOut])
@bp.doc(summary="The plan catalog", responses=problem_responses())
def plans() -> Any:
    return [p.as_dict() for p in catalog().values()]


@bp.post("/orders")
@jwt_required()
@bp.input(OrderIn)
@bp.output(OrderOut, status_code=201)
@bp.doc(
    summary="Buy a plan (Idempotency-Key header required; retries replay the answer)",
    security=BEARER_AUTH,
    responses=problem_responses(400, 401, 402, 409, 422, 502),
)
@request_headers(
    {
        "name": "Idempotency-Key",
        "required": True,
        "description": "Names this purchase: a retry with the same key (and body) replays the "
        "first answer and charges once; another body with the same key is a 409.",
        "schema": {"type": "string", "pattern": KEY_PATTERN.pattern},
    }
)
def place_order(json_data: OrderIn) -> Any:
    key = request.headers.get("Idempotency-Key", "")
    if not KEY_PATTERN.match(key):
        raise IdempotencyKeyRequired(
            "Send an Idempotency-Key header (1-255 visible ASCII characters, e.g. a UUID) "
            "so a retry cannot charge twice."
        )
    plan = catalog().get(json_data.plan)
    if plan is None or not plan.purchasable:
        raise service.UnknownPlan(f"{json_data.plan!r} is not a plan that can be bought.")
    seats = json_data.seats or plan.seats
    if seats > plan.max_seats:
        raise ProblemError(
            f"The {plan.plan} plan has at most {plan.max_seats} seats.",
            status=422,
            code="too_many_seats",
        )
    order_request = service.OrderRequest(plan.plan, seats, json_data.payment_token)
    status, body = workflows.place_order(
        get_session(),
        gateway(),
        user_id=get_jwt()["sub"],
        key=key,
        request=order_request,
        plan=plan,
        settings=settings(),
    )
    if status >= 400:
        return problem_body_response(body)
    return body, status


@bp.get("/orders")
@jwt_required()
@bp.input(PageQuery, location="query")
@bp.output(OrderPage)
@bp.doc(
    summary="My orders, newest first", security=BEARER_AUTH, responses=problem_responses(401, 422)
)
def list_orders(query_data: PageQuery) -> Any:
    items, next_cursor = service.list_orders(
        get_session(),
        get_jwt()["sub"],
        limit=query_data.limit,
        after=decode_keyset(query_data.cursor, (str,)),
    )
    return {"items": [service.order_body(o) for o in items], "next_cursor": next_cursor}


def _is_admin() -> bool:
    return get_jwt().get("role") == "admin"


@bp.get("/orders/<order_id>")
@jwt_required()
@bp.output(OrderOut)
@bp.doc(
    summary="One order (its owner or an admin)",
    security=BEARER_AUTH,
    responses=problem_responses(401, 404),
)
def get_order(order_id: str) -> Any:
    order = service.get_order(
        get_session(), order_id, user_id=get_jwt()["sub"], is_admin=_is_admin()
    )
    return service.order_body(order)


@bp.post("/orders/<order_id>/cancel")
@jwt_required()
@bp.output(OrderOut)
@bp.doc(
    summary="Cancel a paid order: refund it, end the subscription, suspend surplus licenses",
    security=BEARER_AUTH,
    responses=problem_responses(401, 404, 409, 502),
)
def cancel_order(order_id: str) -> Any:
    order = workflows.cancel_order(
        get_session(),
        gateway(),
        order_id=order_id,
        user_id=get_jwt()["sub"],
        is_admin=_is_admin(),
        renewal_lead=current_app.config["RENEWAL_LEAD"],
    )
    return service.order_body(order)


@bp.get("/me/dashboard")
@jwt_required()
@bp.output(DashboardOut)
@bp.doc(
    summary="User, subscription, seats, licenses and recent orders in one call",
    security=BEARER_AUTH,
    responses=problem_responses(401),
)
def dashboard() -> Any:
    session = get_session()
    user_id = get_jwt()["sub"]
    user = auth_api.get_user(session, user_id)
    if user is None:
        raise service.OrderNotFound()
    recent, _ = service.list_orders(session, user_id, limit=5, after=None)
    return {
        "user": user,
        "subscription": auth_api.live_subscription(session, user_id),
        "seats": auth_api.seats_for(session, user_id),
        "licenses": auth_api.list_licenses(session, user_id),
        "recent_orders": [service.order_body(o) for o in recent],
    }
