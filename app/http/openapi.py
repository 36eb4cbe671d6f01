"""The OpenAPI document at /openapi.json, made exact enough for client generators.

APIFlask builds the document from the routes and their Pydantic models; `processor(app)`
then finishes it in one pass (docs/adr/0015-an-exact-openapi-contract.md):

- schema names are unique: Pydantic's nested models, which APIFlask registers under dotted
  names (`ValidateOut.LicenseOut`), become one component each (`LicenseOut`);
- every error response is `application/problem+json` with the one `Problem` component, whose
  `code` is the `ProblemCode` enum;
- response headers are declared (`X-Request-ID` on every response, `Retry-After`, the
  `X-RateLimit-*` headers of rate-limited operations, `WWW-Authenticate`, and those a view
  declares with `response_headers`, such as `ETag`);
- each operation has an operationId `<tag>_<action>` and exactly one tag, the part of the
  product it belongs to (`auth`, `licensing`, `orders`, `admin`, `operations`);
- request headers a view reads itself (`request_headers`) and refinements a module adds at
  start-up (`refine`: e.g. the plans that can be bought) are part of the document.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Iterator
from http import HTTPStatus
from typing import Any

from app.kernel.errors import DEFAULT_CODES, PROBLEM_MEDIA_TYPE, ProblemError

Spec = dict[str, Any]
Refinement = Callable[[Spec], None]

TAGS = {
    "auth": "Accounts: register, log in, access and refresh tokens",
    "licensing": "Licenses: activate, validate, deactivate; the public keys that verify them",
    "orders": "Plans, orders and the user's dashboard",
    "admin": "Statistics, users, the audit log and license administration (admin role)",
    "operations": "Liveness and readiness",
}
OPERATION_ID = re.compile(r"^(?P<tag>[a-z]+)_[a-z][a-z0-9_]*$")

# Codes that are given where an error is raised (`code="too_many_seats"`) rather than by a
# ProblemError subclass or as a status's default; tests/test_contract.py checks the source.
OTHER_CODES = (
    "admin_required",
    "database_unavailable",
    "duplicate_license",
    "fresh_token_required",
    "invalid_token",
    "invalid_value",
    "license_not_active",
    "not_ready",
    "payment_declined",
    "settlement_failed",
    "signing_unavailable",
    "token_expired",
    "too_many_seats",
    "user_not_found",
)

PROBLEM = {"$ref": "#/components/schemas/Problem"}


def problem_codes() -> list[str]:
    """Every `code` a problem can carry: the statuses' defaults, the codes of the app's
    ProblemError classes, and OTHER_CODES."""
    codes = set(DEFAULT_CODES.values()) | set(OTHER_CODES)
    pending = [ProblemError]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if cls.__module__.startswith("app."):
            codes.add(cls.code)
    return sorted(codes)


def problem_schemas() -> dict[str, Any]:
    """The components of the problem+json body (RFC 9457) every error response carries."""
    return {
        "Problem": {
            "type": "object",
            "description": "An error (RFC 9457). `code` says what went wrong, for machines; "
            "some codes add members of their own (listed here).",
            "required": ["type", "title", "status", "detail", "code"],
            "properties": {
                "type": {"type": "string", "description": "/problems/<code>"},
                "title": {"type": "string"},
                "status": {"type": "integer", "minimum": 400, "maximum": 599},
                "detail": {"type": "string"},
                "code": {"$ref": "#/components/schemas/ProblemCode"},
                "errors": {
                    "type": "array",
                    "description": "validation_error: what is wrong, where",
                    "items": {"$ref": "#/components/schemas/ValidationIssue"},
                },
                "seats_limit": {
                    "type": "integer",
                    "description": "seat_limit_reached: the seats the plan has",
                },
                "current_version": {
                    "type": "integer",
                    "description": "version_conflict: the license's version now",
                },
                "license_id": {"type": "string", "description": "the license concerned"},
                "locked_until": {
                    "type": "string",
                    "format": "date-time",
                    "description": "account_locked: when logging in is possible again",
                },
                "order_id": {"type": "string", "description": "the order concerned"},
                "refund_id": {
                    "type": "string",
                    "description": "settlement_failed: the refund that undid the charge",
                },
                "checks": {
                    "type": "object",
                    "additionalProperties": {"type": "string"},
                    "description": "not_ready: each readiness check and its state",
                },
            },
            "additionalProperties": True,
        },
        "ProblemCode": {"type": "string", "enum": problem_codes()},
        "ValidationIssue": {
            "type": "object",
            "required": ["loc", "msg"],
            "properties": {
                "loc": {
                    "type": "array",
                    "description": "where: the location (json, query, headers) then the path",
                    "items": {"type": ["string", "integer"]},
                },
                "msg": {"type": "string"},
            },
        },
    }


# --- what views declare ------------------------------------------------------------------


def request_headers(*parameters: dict[str, Any]) -> Callable[[Callable[..., Any]], Any]:
    """Declare, for OpenAPI, request headers a view reads itself (Idempotency-Key, If-Match):
    each an OpenAPI parameter object without `in`. Put it closest to the function."""

    def declare(view: Callable[..., Any]) -> Callable[..., Any]:
        view._request_headers = [{"in": "header", **p} for p in parameters]  # type: ignore[attr-defined]
        return view

    return declare


def response_headers(status: int, **headers: dict[str, Any]) -> Callable[[Callable[..., Any]], Any]:
    """Declare, for OpenAPI, headers a view sets on its `status` response (ETag): each an
    OpenAPI header object. Put it closest to the function."""

    def declare(view: Callable[..., Any]) -> Callable[..., Any]:
        declared = getattr(view, "_response_headers", {})
        declared.setdefault(str(status), {}).update(headers)
        view._response_headers = declared  # type: ignore[attr-defined]
        return view

    return declare


def problem_responses(*statuses: int) -> dict[int, dict[str, Any]]:
    """OpenAPI responses for error statuses, each an application/problem+json `Problem`."""
    return {status: _problem_response(HTTPStatus(status).phrase) for status in statuses}


def _problem_response(description: str) -> dict[str, Any]:
    return {"description": description, "content": {PROBLEM_MEDIA_TYPE: {"schema": PROBLEM}}}


def refine(app: Any, refinement: Refinement) -> None:
    """Have `refinement(spec)` applied to the document: what a module knows only once the
    app is configured (the plans that can be bought)."""
    app.extensions.setdefault("openapi_refinements", []).append(refinement)


# --- the processor -----------------------------------------------------------------------


def processor(app: Any) -> Callable[[Spec], Spec]:
    """The spec processor that finishes the document (APIFlask keeps only one)."""
    headers = document_request_headers(app)

    def finish(spec: Spec) -> Spec:
        spec = headers(document_common_errors(spec))
        components = spec.setdefault("components", {})
        unique_schema_names(spec)
        components["schemas"].update(problem_schemas())
        problems_everywhere(spec)
        document_response_headers(app, spec)
        tag_operations(app, spec)
        for refinement in app.extensions.get("openapi_refinements", []):
            refinement(spec)
        _drop_unused(spec, ("HTTPError", "ValidationError"))
        return spec

    return finish


def _operations(spec: Spec) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in spec.get("paths", {}).items():
        for method, operation in item.items():
            if method in ("get", "post", "put", "patch", "delete"):
                yield path, method, operation


def _views(app: Any, spec: Spec) -> Iterator[tuple[Any, str, dict[str, Any]]]:
    """(view function, endpoint, operation) for every documented operation."""
    for rule in app.url_map.iter_rules():
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            operation = spec.get("paths", {}).get(path, {}).get(method.lower())
            if operation is not None:
                yield app.view_functions[rule.endpoint], rule.endpoint, operation


def document_request_headers(app: Any) -> Callable[[Spec], Spec]:
    """A spec processor adding the headers declared with `request_headers` to the document."""

    def process(spec: Spec) -> Spec:
        for view, _endpoint, operation in _views(app, spec):
            headers = getattr(view, "_request_headers", None)
            if headers:
                operation.setdefault("parameters", []).extend(copy.deepcopy(headers))
        return spec

    return process


def document_common_errors(spec: Spec) -> Spec:
    """Add the errors every operation can answer to the OpenAPI document, in one place:
    400/413/415/422 where there is a JSON body, 422 where there are parameters, 401 where a
    token is required, 500 and 503 everywhere (as problem+json)."""
    for _path, _method, operation in _operations(spec):
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


def problems_everywhere(spec: Spec) -> None:
    """Every error response carries the `Problem` component, whatever a view declared."""
    for _path, _method, operation in _operations(spec):
        for status, response in operation.get("responses", {}).items():
            if status.isdigit() and int(status) >= 400:
                response["content"] = {PROBLEM_MEDIA_TYPE: {"schema": dict(PROBLEM)}}


def unique_schema_names(spec: Spec) -> None:
    """One component per model: `Parent.Child` (a nested Pydantic model as APIFlask names
    it) becomes `Child`, references follow. Two different models of one name are an error
    (a generator would drop one of them): rename one of the classes."""
    schemas = spec.get("components", {}).get("schemas", {})
    renames = {name: name.rsplit(".", 1)[1] for name in schemas if "." in name}
    if not renames:
        return
    refs = {
        f"#/components/schemas/{old}": f"#/components/schemas/{new}" for old, new in renames.items()
    }
    _rewrite_refs(spec, refs)
    for old, new in renames.items():
        body = schemas.pop(old)
        if new in schemas and schemas[new] != body:
            raise ValueError(
                f"two different models are named {new!r} in the OpenAPI document; "
                "rename one of them"
            )
        schemas[new] = body


def _rewrite_refs(node: Any, refs: dict[str, str]) -> None:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref in refs:
            node["$ref"] = refs[ref]
        for value in node.values():
            _rewrite_refs(value, refs)
    elif isinstance(node, list):
        for value in node:
            _rewrite_refs(value, refs)


def _header_object(description: str, schema_type: str, **schema: Any) -> dict[str, Any]:
    return {"description": description, "schema": {"type": schema_type, **schema}}


# Response headers, declared once as components and referenced.
HEADERS: dict[str, dict[str, Any]] = {
    "X-Request-ID": {
        "description": "The request's id, as logged: the one sent (1-64 of A-Z a-z 0-9 . _ : -) "
        "or a new one. Quote it when reporting a problem.",
        "required": True,
        "schema": {"type": "string"},
    },
    "Retry-After": _header_object("Seconds to wait before trying again", "integer", minimum=0),
    "X-RateLimit-Limit": _header_object(
        "Requests allowed in the current window of one limit: the limit that refused the "
        "request, else the first checked (per address, shortest window)",
        "integer",
    ),
    "X-RateLimit-Remaining": _header_object(
        "Requests left in the current window of that limit", "integer"
    ),
    "X-RateLimit-Reset": _header_object(
        "When the current window ends (Unix time, seconds)", "integer"
    ),
    "WWW-Authenticate": _header_object(
        "The authentication scheme (Bearer) and what was wrong with the token", "string"
    ),
}
RATE_LIMIT_HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")


def _header(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/headers/{name}"}


def document_response_headers(app: Any, spec: Spec) -> None:
    """Declare the headers responses carry: X-Request-ID on every one; Retry-After on 423,
    429 and 503; the X-RateLimit-* headers on every response of an operation that can
    answer 429; WWW-Authenticate on 401; and the headers views declare."""
    spec.setdefault("components", {}).setdefault("headers", {}).update(copy.deepcopy(HEADERS))
    declared = {id(op): getattr(view, "_response_headers", {}) for view, _, op in _views(app, spec)}
    for _path, _method, operation in _operations(spec):
        responses = operation.get("responses", {})
        limited = "429" in responses
        for status, response in responses.items():
            headers = response.get("headers") or {}
            headers["X-Request-ID"] = _header("X-Request-ID")
            if status in ("423", "429"):
                headers["Retry-After"] = {**HEADERS["Retry-After"], "required": True}
            elif status == "503":  # a database outage says when to retry; not every 503 does
                headers["Retry-After"] = _header("Retry-After")
            if limited:
                headers.update({name: _header(name) for name in RATE_LIMIT_HEADERS})
            if status == "401":
                headers["WWW-Authenticate"] = _header("WWW-Authenticate")
            headers.update(copy.deepcopy(declared.get(id(operation), {}).get(status, {})))
            response["headers"] = headers


def tag_operations(app: Any, spec: Spec) -> None:
    """One tag per operation, the prefix of its operationId; an operation without one
    (a route that forgot `operation_id`) gets `<blueprint>_<function>`."""
    for _view, endpoint, operation in _views(app, spec):
        operation.setdefault("operationId", endpoint.replace(".", "_"))
    for _path, _method, operation in _operations(spec):
        match = OPERATION_ID.match(operation.get("operationId", ""))
        operation["tags"] = [match["tag"]] if match else []
    used = {tag for _, _, op in _operations(spec) for tag in op["tags"]}
    spec["tags"] = [
        {"name": name, "description": description}
        for name, description in TAGS.items()
        if name in used
    ] + [{"name": name} for name in sorted(used - set(TAGS))]


def _drop_unused(spec: Spec, names: tuple[str, ...]) -> None:
    """Remove components APIFlask adds that nothing refers to any more (HTTPError)."""
    schemas = spec.get("components", {}).get("schemas", {})
    text = json.dumps({**spec, "components": {**spec["components"], "schemas": None}})
    text += json.dumps({k: v for k, v in schemas.items() if k not in names})
    for name in names:
        if name in schemas and f'"#/components/schemas/{name}"' not in text:
            del schemas[name]
