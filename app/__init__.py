"""The licensing platform: a modular monolith of auth, admin and orders over one database."""

from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import Mapping
from typing import Any

from apiflask import APIFlask
from flask import Request
from flask.json.provider import DefaultJSONProvider
from flask.sessions import NullSession, SessionInterface
from werkzeug.middleware.proxy_fix import ProxyFix

from app import observability
from app.config import ConfigError
from app.http import openapi
from app.kernel import files
from app.kernel.errors import MalformedJSON, ProblemError
from app.settings import configure_settings, finish_settings

__all__ = ["create_app"]

log = logging.getLogger(__name__)

# Outside production, secrets that are not set are generated into the instance folder.
SECRET_FILES = {"SECRET_KEY": "secret-key", "JWT_SECRET_KEY": "jwt-secret-key"}


# Error responses are documented per route as application/problem+json (app.http.openapi.
# problem_responses), so APIFlask's generic application/json error entries are turned off.
OPENAPI_SETTINGS = {
    "AUTO_VALIDATION_ERROR_RESPONSE": False,
    "AUTO_AUTH_ERROR_RESPONSE": False,
    "AUTO_404_RESPONSE": False,
    # No `servers` from the first request's Host (APIFlask would cache it for every later
    # client): without it, OpenAPI means the host the document was fetched from.
    "AUTO_SERVERS": False,
    "SECURITY_SCHEMES": {"BearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
}


class NoCookieSession(SessionInterface):
    """The API authenticates with Bearer tokens and keeps no cookie session: skip Flask's
    (opening and saving it is measurable per request: bench/README.md)."""

    def open_session(self, app: Any, request: Any) -> NullSession:
        return NullSession()

    def save_session(self, app: Any, session: Any, response: Any) -> None:
        return None


class ApiRequest(Request):
    """Bodies are JSON, sent as JSON: `application/json` or a `+json` type, else 415; and
    malformed JSON is a 400 problem with code `malformed_json`, not a bare BadRequest.

    Views read bodies with `get_json(force=True)` (APIFlask does): `force` is ignored
    here, so a `text/plain` or form body (which a cross-site page can post without a
    CORS preflight) is never parsed as JSON."""

    def get_json(self, force: bool = False, silent: bool = False, cache: bool = True) -> Any:
        if not self.is_json:
            if silent:
                return None
            raise ProblemError(
                "Send the body as JSON, with Content-Type: application/json.",
                status=415,
                code="unsupported_media_type",
            )
        return super().get_json(force=False, silent=silent, cache=cache)

    def on_json_loading_failed(self, e: ValueError | None) -> Any:
        raise MalformedJSON("The request body is not valid JSON.")


class ApiJSONProvider(DefaultJSONProvider):
    """Request bodies are strict UTF-8 JSON (RFC 8259); anything else is malformed input.

    - Python's parser recurses and raises RecursionError (not ValueError) on a body like
      `[[[[…]]]]` ten thousand deep; Flask only turns ValueError into "bad JSON" (and
      `get_json(silent=True)`, as the rate-limit keys use it, only swallows ValueError).
    - `json.loads(bytes)` decodes with "surrogatepass", so encoded surrogates (invalid
      UTF-8) would get through as lone surrogates, and it guesses UTF-16 and UTF-32.
    - Duplicate member names (`{"seats": 1, "seats": 50}`) are refused, at any depth:
      Python keeps the last one, another parser (a proxy, a log reader) may keep the first.
    """

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        if isinstance(s, bytes | bytearray):
            s = bytes(s).decode("utf-8-sig")  # UnicodeDecodeError is a ValueError
        kwargs.setdefault("object_pairs_hook", _unique_members)
        try:
            return super().loads(s, **kwargs)
        except RecursionError:
            raise ValueError("JSON nested too deeply") from None


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    members = dict(pairs)
    if len(members) != len(pairs):
        raise ValueError("duplicate member names in a JSON object")
    return members


def instance_path(config: Mapping[str, Any] | None = None) -> str | None:
    """The instance folder: `INSTANCE_PATH` (config, then environment), else Flask's
    default (`instance/` beside the package)."""
    path = (config or {}).get("INSTANCE_PATH") or os.environ.get("INSTANCE_PATH")
    return os.path.abspath(path) if path else None


def create_app(config: Mapping[str, Any] | None = None) -> APIFlask:
    """Build the application. `config` overrides settings read from the environment.

    No side effects beyond reading configuration and the instance folder (created 0700;
    outside production, the secrets generated there on first start): no migrations, no
    network connections.
    """
    app = APIFlask(
        __name__,
        title="Licensing API",
        version="1.0",
        spec_path="/openapi.json",
        docs_path=None,
        instance_path=instance_path(config),
        instance_relative_config=True,
    )
    app.request_class = ApiRequest
    app.session_interface = NoCookieSession()
    app.json = ApiJSONProvider(app)
    configure_settings(app, config)  # every setting validated, then copied to app.config
    app.config.from_mapping(OPENAPI_SETTINGS)
    try:
        files.private_dir(app.instance_path)
    except OSError as exc:
        raise ConfigError(
            f"the instance folder {app.instance_path} cannot be made private: "
            f"{exc.strerror or exc} (set INSTANCE_PATH to a folder this user may create)"
        ) from None
    observability.configure_logging(app.config["LOG_LEVEL"], app.config["LOG_FORMAT"])
    try:
        use_instance_secrets(app)
    except OSError as exc:
        raise ConfigError(
            f"cannot keep the generated secrets in {app.instance_path}: {exc.strerror or exc} "
            "(set SECRET_KEY and JWT_SECRET_KEY, or INSTANCE_PATH to a writable folder)"
        ) from None
    finish_settings(app)  # generated secrets recorded, weak ones refused

    register_extensions(app)
    register_blueprints(app)
    register_errorhandlers(app)
    register_commands(app)
    app.spec_processor(openapi.processor(app))  # only one is kept
    if app.config["TRUSTED_PROXIES"] > 0:
        app.wsgi_app = TrustedProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, app.config["TRUSTED_PROXIES"], app.config["TRUSTED_PROXY_ADDRESSES"]
        )
    return app


class TrustedProxyFix:
    """ProxyFix for requests that come from a trusted proxy only.

    Believe exactly `hops` X-Forwarded-* hops (anything further left is the client's own
    claim), and only when the peer is one of `addresses` (networks): a client that reaches
    gunicorn directly is its own socket address, whatever it writes in the header."""

    def __init__(self, wsgi_app: Any, hops: int, addresses: str) -> None:
        self.wsgi_app = wsgi_app
        self.fixed = ProxyFix(wsgi_app, x_for=hops, x_proto=hops)
        self.proxies = [
            ipaddress.ip_network(a.strip(), strict=False) for a in addresses.split(",") if a.strip()
        ]

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        try:
            peer = ipaddress.ip_address(environ.get("REMOTE_ADDR", ""))
        except ValueError:
            peer = None
        if isinstance(peer, ipaddress.IPv6Address) and peer.ipv4_mapped is not None:
            peer = peer.ipv4_mapped  # a dual-stack bind: ::ffff:127.0.0.1 is 127.0.0.1
        if peer is not None and any(peer in network for network in self.proxies):
            return self.fixed(environ, start_response)
        return self.wsgi_app(environ, start_response)


def use_instance_secrets(app: APIFlask) -> None:
    """Development and testing: SECRET_KEY / JWT_SECRET_KEY that are not set are generated
    once per instance folder (random, mode 0600) and shared by every process using it.
    Nothing is ever signed with a value from the source code. Production must set both."""
    if app.config["APP_ENV"] == "production":
        return
    generated = []
    for name in SECRET_FILES:
        if not app.config.get(name):
            app.config[name], made = files.instance_secret(app.instance_path, SECRET_FILES[name])
            if made:
                generated.append(name)
    if generated:
        _say_where_secrets_are(tuple(generated), app.instance_path)


def _say_where_secrets_are(names: tuple[str, ...], folder: str) -> None:
    """Said once per instance folder, by the process that generated the secrets: later
    processes (every worker, every CLI command) just use them, quietly."""
    paths = ", ".join(os.path.join(folder, SECRET_FILES[name]) for name in names)
    log.info(
        "%s not set: using the secrets generated for this instance in %s (mode 0600). "
        "Set them in production.",
        " and ".join(names),
        paths,
    )


def register_extensions(app: APIFlask) -> None:
    # The modules declare their tables first: the engine's flat layout maps their schemas.
    from app import admin, auth, extensions, orders, webhooks  # noqa: F401
    from app.kernel import db

    db.init_app(app)
    extensions.init_app(app)


def register_blueprints(app: APIFlask) -> None:
    from app import admin, auth, console, orders, webhooks
    from app.operations import health

    observability.init_app(app)
    health.init_app(app)
    auth.init_app(app)
    admin.init_app(app)
    orders.init_app(app)
    webhooks.init_app(app)
    console.init_app(app)  # after the modules: its pages call their services


def register_errorhandlers(app: APIFlask) -> None:
    from app.kernel import errors

    errors.init_app(app)


def register_commands(app: APIFlask) -> None:
    """The kernel's commands and the backups'; each module registers its own in init_app."""
    from app.kernel import cli
    from app.operations import cli as backups_cli

    cli.init_app(app)
    backups_cli.init_app(app)
