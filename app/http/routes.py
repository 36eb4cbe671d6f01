"""Route declarations written once: who may call a route, its rate limits and its document.

A route says, in three decorators and a docstring, its method and path (the blueprint's
own `get`/`post`…), who may call it, its limits and its documented problems
(`Endpoints.endpoint`), what it takes and answers (`Endpoints.io`), and its summary:

    @bp.post("/auth/password")
    @api.endpoint(BEARER, "auth_change_password", limits=PASSWORD_LIMITS, problems=(403, 422))
    @api.io(body=PasswordChangeIn, output=TokenPairOut)
    def password(json_data: PasswordChangeIn) -> Any:
        '''Change the password: every other session ends; answers with a new token pair'''

A request meets them in the order the routes always had: the caller check, then each rate
limit in the order given, then the input, then the output. Request and response headers a
view handles itself are declared below `io`, closest to the function (app/http/openapi.py).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from apiflask import APIBlueprint

from app.http.bearer import jwt_required
from app.http.blueprints import is_admin_only
from app.http.limits import config_limit, limiter
from app.http.openapi import problem_responses
from app.kernel.pagination import decode_keyset
from app.kernel.web import BEARER_AUTH

View = Callable[..., Any]
Decorator = Callable[[View], View]
Security = list[dict[str, list[str]]]


@dataclass(frozen=True)
class Callers:
    """Who may call a route: the check run before anything else (None where the view or its
    blueprint checks), the OpenAPI security requirement that says so, and the problems a
    caller turned away gets (documented on every such route)."""

    check: Decorator | None
    security: Security | None
    problems: tuple[int, ...] = ()
    blueprint_checks_admin: bool = False


# Anyone: no token asked (a limit or the body's own secret protects the route).
PUBLIC = Callers(check=None, security=None)
# A valid access token, checked before the view: 401 without one.
BEARER = Callers(check=jwt_required(), security=BEARER_AUTH, problems=(401,))
# An admin's access token, checked for the whole blueprint (blueprints.admin_only): 401
# without a valid token, 403 for a user who is not an admin.
ADMIN = Callers(check=None, security=BEARER_AUTH, problems=(401, 403), blueprint_checks_admin=True)


@dataclass(frozen=True)
class Limit:
    """A rate limit: the setting that holds its rate, and the key it counts by."""

    setting: str
    key: Callable[[], str]


class Endpoints:
    """The route declarations of one blueprint."""

    def __init__(self, bp: APIBlueprint) -> None:
        self.bp = bp

    def endpoint(
        self,
        callers: Callers,
        operation_id: str,
        *,
        problems: Sequence[int] = (),
        limits: Sequence[Limit] = (),
        responses: dict[int, Any] | None = None,
        summary: str | None = None,
    ) -> Decorator:
        """Who may call the route and its limits, and its document: operationId, the
        problems it answers besides its callers' (each an application/problem+json
        response), any other `responses`, and its summary: the view's one-line docstring
        (`summary` where a line is too short for it). Put it under the method and path,
        above `io`."""
        if callers.blueprint_checks_admin and not is_admin_only(self.bp):
            raise ValueError(f"{operation_id}: blueprint {self.bp.name} does not check admins")
        documented = {**(responses or {}), **problem_responses(*callers.problems, *problems)}

        def declare(view: View) -> View:
            view = self.bp.doc(
                summary=summary or _docstring_summary(view, operation_id),
                operation_id=operation_id,
                security=callers.security,
                responses=documented,
            )(view)
            # flask-limiter checks a view's limits in the order they were applied (then by
            # window: a per-minute limit before a per-hour one), and stops at the first that
            # refuses: applied as given, a request the first (per address) refuses does
            # not spend the second (per account or token).
            for limit in limits:
                view = limiter.limit(config_limit(limit.setting), key_func=limit.key)(view)
            return view if callers.check is None else callers.check(view)

        return declare

    def io(
        self,
        *,
        output: Any,
        body: Any = None,
        query: Any = None,
        status: int = 200,
        description: str | None = None,
    ) -> Decorator:
        """What the route takes (a JSON `body`, a `query` string) and answers (`output`,
        with its `status`): validated, converted and documented by APIFlask."""
        answer = self.bp.output(output, status_code=status, description=description)
        takes = [self.bp.input(body)] if body is not None else []
        takes += [self.bp.input(query, location="query")] if query is not None else []

        def declare(view: View) -> View:
            view = answer(view)
            for take in takes:
                view = take(view)
            return view

        return declare


def keyset(query: Any, *key_types: type) -> dict[str, Any]:
    """A list query's page as a service takes it: `limit`, and `after`, the key values of
    its `cursor` (key_types: str for an id, datetime for a time)."""
    return {"limit": query.limit, "after": decode_keyset(query.cursor, key_types)}


def page(
    found: tuple[Sequence[Any], str | None], view: Callable[[Any], Any] | None = None
) -> dict[str, Any]:
    """A list's answer: the items a service found (each through `view`), and the cursor of
    the next page."""
    items, next_cursor = found
    return {
        "items": items if view is None else [view(i) for i in items],
        "next_cursor": next_cursor,
    }


def _docstring_summary(view: View, operation_id: str) -> str:
    """The first line of the view's docstring: its summary in the document."""
    summary = (inspect.getdoc(view) or "").partition("\n")[0]
    if not summary:
        raise ValueError(f"{operation_id}: a route's docstring is its summary; it has none")
    return summary
