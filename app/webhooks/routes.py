"""The webhooks admin API (/api/v1/admin/webhooks). Every route requires the admin role,
checked once for the blueprint; every change is audited."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from flask import current_app, request
from flask_jwt_extended import get_jwt, verify_jwt_in_request

from app.admin import api as admin_api
from app.http.limits import client_ip
from app.http.openapi import problem_responses
from app.kernel.db import get_session, transaction
from app.kernel.errors import Forbidden
from app.kernel.pagination import decode_keyset
from app.kernel.web import BEARER_AUTH
from app.webhooks import bp, service
from app.webhooks.schemas import (
    DeliveryOut,
    DeliveryPage,
    DeliveryQuery,
    EndpointIn,
    EndpointList,
    EndpointOut,
    EndpointPatch,
    EndpointWithSecret,
)


@bp.before_request
def _require_admin() -> None:
    if request.method == "OPTIONS":
        return
    verify_jwt_in_request()
    claims = get_jwt()
    if claims.get("role") != "admin" or not admin_api.is_admin(get_session(), claims["sub"]):
        raise Forbidden("This needs the admin role.", code="admin_required")


def _doc(summary: str, operation_id: str, *statuses: int) -> Any:
    return bp.doc(
        summary=summary,
        operation_id=operation_id,
        security=BEARER_AUTH,
        responses=problem_responses(401, 403, *statuses),
    )


def _actor() -> dict[str, Any]:
    return {"actor_id": get_jwt()["sub"], "ip": client_ip()}


def _with_secret(created: service.Created) -> dict[str, Any]:
    return {**service.endpoint_view(created.endpoint), "secret": created.secret}


@bp.post("")
@bp.input(EndpointIn)
@bp.output(EndpointWithSecret, status_code=201)
@_doc(
    "Register an endpoint; its signing secret is in this answer only", "admin_create_webhook", 422
)
def create_endpoint(json_data: EndpointIn) -> Any:
    session = get_session()
    with transaction(session):
        created = service.create_endpoint(
            session,
            current_app.config,
            url=json_data.url,
            event_types=json_data.events,
            description=json_data.description,
            **_actor(),
        )
    return _with_secret(created)


@bp.get("")
@bp.output(EndpointList)
@_doc("Every endpoint, oldest first", "admin_list_webhooks")
def list_endpoints() -> Any:
    return {"items": [service.endpoint_view(e) for e in service.list_endpoints(get_session())]}


@bp.get("/<webhook_id>")
@bp.output(EndpointOut)
@_doc("One endpoint", "admin_get_webhook", 404)
def get_endpoint(webhook_id: str) -> Any:
    return service.endpoint_view(service.get_endpoint(get_session(), webhook_id))


@bp.patch("/<webhook_id>")
@bp.input(EndpointPatch)
@bp.output(EndpointOut)
@_doc(
    "Change an endpoint's URL, events, description, or enable/disable it",
    "admin_update_webhook",
    404,
    422,
)
def update_endpoint(webhook_id: str, json_data: EndpointPatch) -> Any:
    session = get_session()
    changes = json_data.model_dump(exclude_unset=True, exclude_none=True)
    with transaction(session):
        endpoint = service.update_endpoint(
            session, current_app.config, webhook_id, changes, **_actor()
        )
    return service.endpoint_view(endpoint)


@bp.delete("/<webhook_id>")
@bp.output({}, status_code=204)
@_doc("Delete an endpoint and its deliveries", "admin_delete_webhook", 404)
def delete_endpoint(webhook_id: str) -> Any:
    session = get_session()
    with transaction(session):
        service.delete_endpoint(session, webhook_id, **_actor())
    return "", 204


@bp.post("/<webhook_id>/rotate-secret")
@bp.output(EndpointWithSecret)
@_doc(
    "A new signing secret (shown once); the old one also signs for 24 hours",
    "admin_rotate_webhook_secret",
    404,
)
def rotate_secret(webhook_id: str) -> Any:
    session = get_session()
    with transaction(session):
        created = service.rotate_secret(session, current_app.config, webhook_id, **_actor())
    return _with_secret(created)


@bp.get("/<webhook_id>/deliveries")
@bp.input(DeliveryQuery, location="query")
@bp.output(DeliveryPage)
@_doc(
    "Deliveries to an endpoint, newest first, in keyset pages",
    "admin_list_webhook_deliveries",
    404,
    422,
)
def list_deliveries(webhook_id: str, query_data: DeliveryQuery) -> Any:
    items, cursor = service.list_deliveries(
        get_session(),
        webhook_id,
        limit=query_data.limit,
        after=decode_keyset(query_data.cursor, (datetime, str)),
    )
    return {"items": [service.delivery_view(d) for d in items], "next_cursor": cursor}


@bp.post("/<webhook_id>/deliveries/<delivery_id>/redeliver")
@bp.output(DeliveryOut, status_code=202)
@_doc(
    "Post a delivery again, now, with a fresh set of attempts",
    "admin_redeliver_webhook_delivery",
    404,
)
def redeliver(webhook_id: str, delivery_id: str) -> Any:
    session = get_session()
    with transaction(session):
        delivery = service.redeliver(session, webhook_id, delivery_id)
    return service.delivery_view(delivery), 202


@bp.post("/<webhook_id>/test")
@bp.output(DeliveryOut, status_code=202)
@_doc("Queue a webhook.test event for this endpoint", "admin_test_webhook", 404)
def send_test(webhook_id: str) -> Any:
    session = get_session()
    with transaction(session):
        delivery = service.send_test(session, webhook_id)
    return service.delivery_view(delivery), 202
