"""Licensing's operator commands: `flask --app wsgi licenses …`."""

from __future__ import annotations

import os
from typing import Any

import click

from app.auth.licensing.signing import generate_key_file
from app.kernel.cli import OperatorGroup

licenses_cli = OperatorGroup("licenses", help="License signing keys.")


@licenses_cli.command("generate-key")
@click.argument("path", type=click.Path(dir_okay=False, writable=True))
def licenses_generate_key(path: str) -> None:
    """Write a new Ed25519 signing key to PATH (mode 0600; never overwrites).

    To rotate: put the new key first in LICENSE_SIGNING_KEYS and keep the old one after it
    until every token it signed has expired.
    """
    if os.path.exists(path):
        raise click.ClickException(f"{path} exists; refusing to overwrite a key")
    generate_key_file(path)
    click.echo(f"wrote {path}")


def init_app(app: Any) -> None:
    app.cli.add_command(licenses_cli)
