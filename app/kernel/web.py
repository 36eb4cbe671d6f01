"""What the OpenAPI document says about every route: declared request headers, problem
responses, the Bearer security requirement (the rest of the HTTP layer is in app/http/)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

log = logging.getLogger(__name__)


def request_headers(*parameters: dict[str, Any]) -> Callable[[Callable[..., Any]], Any]:
    """Declare, for OpenAPI, request headers a view reads itself (Idempotency-Key, If-Match):
    each an OpenAPI parameter object without `in`. Put it closest to the function."""

    def declare(view: Callable[..., Any]) -> Callable[..., Any]:
        view._request_headers = [{"in": "header", **p} for p in parameters]  # type: ignore[attr-defined]
        return view

    return declare


def document_request_headers(app: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """A spec processor adding the headers declared with `request_headers` to the document."""
    import re

    def process(spec: dict[str, Any]) -> dict[str, Any]:
        for rule in app.url_map.iter_rules():
            headers = getattr(app.view_functions[rule.endpoint], "_request_headers", None)
            if not headers:
                continue
            path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
            for method in rule.methods - {"HEAD", "OPTIONS"}:
                operation = spec.get("paths", {}).get(path, {}).get(method.lower())
                if operation is not None:
                    operation.setdefault("parameters", []).extend(headers)
        return spec

    return process


# The headers of a response that carries tokens: no cache (browser, proxy) may keep it.
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}

# The OpenAPI security requirement of routes that take an access token.
BEARER_AUTH: list[dict[str, list[str]]] = [{"BearerAuth": []}]


PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["type", "title", "status", "detail", "code"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "code": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "loc": {"type": "array", "items": {"type": ["string", "integer"]}},
                    "msg": {"type": "string"},
                },
            },
        },
    },
    "additionalProperties": True,
}


def problem_responses(*statuses: int) -> dict[int, dict[str, Any]]:
    """OpenAPI responses for error statuses, each an application/problem+json document."""
    return {
        status: {
            "description": HTTPStatus(status).phrase,
            "content": {"application/problem+json": {"schema": PROBLEM_SCHEMA}},
        }
        for status in statuses
    }


def document_common_errors(spec: dict[str, Any]) -> dict[str, Any]:
    """Add the errors every operation can answer to the OpenAPI document, in one place:
    400/413/415/422 where there is a JSON body, 422 where there are parameters, 401 where a
    token is required, 500 and 503 everywhere (as problem+json)."""
    for item in spec.get("paths", {}).values():
        for method, operation in item.items():
            if method not in ("get", "post", "put", "patch", "delete"):
                continue
            statuses = [500, 503]
            if "requestBody" in operation:
                operation["requestBody"]["required"] = True  # an empty body is malformed JSON
                statuses += [400, 413, 415, 422]
            if operation.get("parameters"):
                statuses.append(422)
            if operation.get("security"):
                statuses.append(401)
            responses = operation.setdefault("responses", {})
            for status, response in problem_responses(*statuses).items():
                responses.setdefault(str(status), response)
    return spec
