"""orders' HTTP API: plans, orders (idempotent), cancel, the dashboard."""

from __future__ import annotations

import re
from typing import Any

from flask import current_app, request
from flask_jwt_extended import get_jwt

from app.auth import api as auth_api
from app.http.openapi import request_headers
from app.http.problems import problem_body_response
from app.http.routes import BEARER, PUBLIC, Endpoints, keyset, page
from app.kernel.db import get_session
from app.kernel.errors import ProblemError
from app.kernel.pagination import PageQuery
from app.orders import bp, service, workflows
from app.orders.payments import PaymentGateway, gateway_of
from app.orders.plans import Plan, catalog_of
from app.orders.schemas import DashboardOut, OrderIn, OrderOut, OrderPage, PlanOut

api = Endpoints(bp)
KEY_PATTERN = re.compile(r"^[\x21-\x7e]{1,255}$")


class IdempotencyKeyRequired(ProblemError):
    status, code = 400, "idempotency_key_required"


def catalog() -> dict[str, Plan]:
    return catalog_of(current_app)


def gateway() -> PaymentGateway:
    return gateway_of(current_app)


def settings() -> workflows.Settings:
    return workflows.Settings(lease=current_app.config["ORDER_LEASE"])


def document_catalog(plans: dict[str, Plan]) -> Any:
    """The document's OrderIn as the catalog has it: `plan` one of those that can be
    bought, `seats` at most that plan's max_seats (so a generator or a fuzzer sends what
    the server takes)."""
    purchasable = [p for p in plans.values() if p.purchasable]

    def refine(spec: dict[str, Any]) -> None:
        order_in = spec["components"]["schemas"]["OrderIn"]
        plan = order_in["properties"]["plan"]
        plan["enum"] = [p.plan for p in purchasable]
        plan["description"] = "A plan from GET /plans that can be bought"
        seats = order_in["properties"]["seats"]
        seats["description"] = "At most the plan's max_seats; none: the plan's seats"
        for branch in seats.get("anyOf", [seats]):
            if branch.get("type") == "integer" and purchasable:
                branch["maximum"] = max(p.max_seats for p in purchasable)
        order_in["allOf"] = [
            {
                "if": {"properties": {"plan": {"const": p.plan}}, "required": ["plan"]},
                "then": {"properties": {"seats": {"maximum": p.max_seats}}},
            }
            for p in purchasable
        ]

    return refine


@bp.get("/plans")
@api.endpoint(PUBLIC, "orders_list_plans")
@api.io(output=list[PlanOut])
def plans() -> Any:
    """The plan catalog"""
    return [p.as_dict() for p in catalog().values()]


@bp.post("/orders")
@api.endpoint(BEARER, "orders_place", problems=(400, 402, 409, 422, 502))
@api.io(body=OrderIn, output=OrderOut, status=201)
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
    """Buy a plan (Idempotency-Key header required; retries replay the answer)"""
    key = request.headers.get("Idempotency-Key", "")
    if not KEY_PATTERN.match(key):
        raise IdempotencyKeyRequired(
            "Send an Idempotency-Key header (1-255 visible ASCII characters, e.g. a UUID) "
            "so a retry cannot charge twice."
        )
    plan, seats = service.plan_to_buy(catalog(), json_data.plan, json_data.seats)
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
@api.endpoint(BEARER, "orders_list", problems=(422,))
@api.io(query=PageQuery, output=OrderPage)
def list_orders(query_data: PageQuery) -> Any:
    """My orders, newest first"""
    found = service.list_orders(get_session(), get_jwt()["sub"], **keyset(query_data, str))
    return page(found, service.order_body)


def _is_admin() -> bool:
    return get_jwt().get("role") == "admin"


@bp.get("/orders/<order_id>")
@api.endpoint(BEARER, "orders_get", problems=(404,))
@api.io(output=OrderOut)
def get_order(order_id: str) -> Any:
    """One order (its owner or an admin)"""
    order = service.get_order(
        get_session(), order_id, user_id=get_jwt()["sub"], is_admin=_is_admin()
    )
    return service.order_body(order)


@bp.post("/orders/<order_id>/cancel")
@api.endpoint(
    BEARER,
    "orders_cancel",
    problems=(404, 409, 502),
    summary="Cancel a paid order (its owner or an admin): refund it, end the subscription, "
    "suspend surplus licenses",
)
@api.io(output=OrderOut)
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
@api.endpoint(BEARER, "orders_dashboard")
@api.io(output=DashboardOut)
def dashboard() -> Any:
    """User, subscription, seats, licenses and recent orders in one call"""
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
