"""The webhooks admin API (/api/v1/admin/webhooks). Every route requires the admin role,
checked once for the blueprint; every change is audited."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from flask import current_app
from flask_jwt_extended import get_jwt

from app.admin import api as admin_api
from app.http.blueprints import admin_only
from app.http.limits import client_ip
from app.http.routes import ADMIN, Endpoints, keyset, page
from app.kernel.db import get_session, transaction
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

admin_only(bp, admin_api.is_admin)
api = Endpoints(bp)


def _actor() -> dict[str, Any]:
    return {"actor_id": get_jwt()["sub"], "ip": client_ip()}


def _with_secret(created: service.Created) -> dict[str, Any]:
    return {**service.endpoint_view(created.endpoint), "secret": created.secret}


@bp.post("")
@api.endpoint(ADMIN, "admin_create_webhook", problems=(422,))
@api.io(body=EndpointIn, output=EndpointWithSecret, status=201)
def create_endpoint(json_data: EndpointIn) -> Any:
    """Register an endpoint; its signing secret is in this answer only"""
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
@api.endpoint(ADMIN, "admin_list_webhooks")
@api.io(output=EndpointList)
def list_endpoints() -> Any:
    """Every endpoint, oldest first"""
    return {"items": [service.endpoint_view(e) for e in service.list_endpoints(get_session())]}


@bp.get("/<webhook_id>")
@api.endpoint(ADMIN, "admin_get_webhook", problems=(404,))
@api.io(output=EndpointOut)
def get_endpoint(webhook_id: str) -> Any:
    """One endpoint"""
    return service.endpoint_view(service.get_endpoint(get_session(), webhook_id))


@bp.patch("/<webhook_id>")
@api.endpoint(ADMIN, "admin_update_webhook", problems=(404, 422))
@api.io(body=EndpointPatch, output=EndpointOut)
def update_endpoint(webhook_id: str, json_data: EndpointPatch) -> Any:
    """Change an endpoint's URL, events, description, or enable/disable it"""
    session = get_session()
    changes = json_data.model_dump(exclude_unset=True, exclude_none=True)
    with transaction(session):
        endpoint = service.update_endpoint(
            session, current_app.config, webhook_id, changes, **_actor()
        )
    return service.endpoint_view(endpoint)


@bp.delete("/<webhook_id>")
@api.endpoint(ADMIN, "admin_delete_webhook", problems=(404,))
@api.io(output={}, status=204)
def delete_endpoint(webhook_id: str) -> Any:
    """Delete an endpoint and its deliveries"""
    session = get_session()
    with transaction(session):
        service.delete_endpoint(session, webhook_id, **_actor())
    return "", 204


@bp.post("/<webhook_id>/rotate-secret")
@api.endpoint(
    ADMIN,
    "admin_rotate_webhook_secret",
    problems=(404, 409),
    summary="A new signing secret (shown once); the old one also signs for 24 hours (409 while a "
    "previous rotation's 24 hours last)",
)
@api.io(output=EndpointWithSecret)
def rotate_secret(webhook_id: str) -> Any:
    session = get_session()
    with transaction(session):
        created = service.rotate_secret(session, current_app.config, webhook_id, **_actor())
    return _with_secret(created)


@bp.get("/<webhook_id>/deliveries")
@api.endpoint(ADMIN, "admin_list_webhook_deliveries", problems=(404, 422))
@api.io(query=DeliveryQuery, output=DeliveryPage)
def list_deliveries(webhook_id: str, query_data: DeliveryQuery) -> Any:
    """Deliveries to an endpoint, newest first, in keyset pages"""
    found = service.list_deliveries(get_session(), webhook_id, **keyset(query_data, datetime, str))
    return page(found, service.delivery_view)


@bp.post("/<webhook_id>/deliveries/<delivery_id>/redeliver")
@api.endpoint(ADMIN, "admin_redeliver_webhook_delivery", problems=(404,))
@api.io(output=DeliveryOut, status=202)
def redeliver(webhook_id: str, delivery_id: str) -> Any:
    """Post a delivery again, now, with a fresh set of attempts"""
    session = get_session()
    with transaction(session):
        delivery = service.redeliver(session, webhook_id, delivery_id)
    return service.delivery_view(delivery), 202


@bp.post("/<webhook_id>/test")
@api.endpoint(ADMIN, "admin_test_webhook", problems=(404,))
@api.io(output=DeliveryOut, status=202)
def send_test(webhook_id: str) -> Any:
    """Queue a webhook.test event for this endpoint"""
    session = get_session()
    with transaction(session):
        delivery = service.send_test(session, webhook_id)
    return service.delivery_view(delivery), 202
