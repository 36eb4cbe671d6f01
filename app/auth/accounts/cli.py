"""The accounts' operator commands: `flask --app wsgi users …` and `tokens …`."""

from __future__ import annotations

import sys
from typing import Any

import click
from flask import current_app

from app.auth import api as auth_api
from app.auth.accounts import browser_sessions
from app.auth.accounts.schemas import valid_email
from app.kernel.cli import OperatorGroup, writes
from app.kernel.db import get_session, transaction
from app.kernel.emails import normalise_email

users_cli = OperatorGroup("users", help="User accounts.")
tokens_cli = OperatorGroup("tokens", help="Token revocation list maintenance.")


@users_cli.command("create-admin")
@click.argument("email")
@click.option(
    "--password-stdin", is_flag=True, help="Read the password from standard input (one line)."
)
@writes
def users_create_admin(email: str, password_stdin: bool) -> None:
    """Create an admin account. Prompts for the password (hidden, confirmed) unless
    --password-stdin is given."""
    try:  # the address register would accept, normalised the same way
        email = valid_email(email)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    problem = auth_api.check_password_policy(password)
    if problem:
        raise click.ClickException(problem)
    hasher = auth_api.hasher_from_config(current_app.config)
    session = get_session()
    try:
        with transaction(session):
            user = auth_api.create_user(session, email, password, role="admin", hasher=hasher)
    except auth_api.EmailTaken:
        raise click.ClickException(
            f"an account with email {normalise_email(email)} already exists"
        ) from None
    click.echo(f"created admin {user.email} ({user.user_id})")


@users_cli.command("unlock")
@click.argument("email")
def users_unlock(email: str) -> None:
    """Lift the login locks of EMAIL (every address, and the account); audited."""
    session = get_session()
    with transaction(session):
        user, cleared = auth_api.unlock_email(session, email, current_app.config, actor_id="cli")
    who = f"{user.email} ({user.user_id})" if user else f"{normalise_email(email)} (no account)"
    click.echo(f"unlocked {who}: {cleared} failure record(s) cleared")


@tokens_cli.command("prune")
@writes
def tokens_prune() -> None:
    """Delete revocations of tokens that have expired anyway, login throttles that no
    longer count and expired browser sessions (run daily from cron)."""
    session = get_session()
    with transaction(session):
        removed = auth_api.prune_token_revocations(session)
        throttles = auth_api.prune_login_throttles(
            session, current_app.config["LOGIN_FAILURE_WINDOW"]
        )
        browsers = browser_sessions.prune(session)
    click.echo(
        f"pruned {removed} expired revocation(s), {throttles} stale login throttle(s), "
        f"{browsers} expired browser session(s)"
    )


def init_app(app: Any) -> None:
    app.cli.add_command(users_cli)
    app.cli.add_command(tokens_cli)
