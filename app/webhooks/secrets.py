"""Signing secrets: made, shown once, stored encrypted.

A secret is `whsec_` and the base64 of 24 random bytes; per the Standard Webhooks
specification the base64 part is the HMAC key (receivers pass the whole string to their
library). Stored with Fernet under WEBHOOKS_ENCRYPTION_KEY (a Fernet key; without it, a key
derived from SECRET_KEY), so a copy of the database alone cannot sign. Changing the key
makes the stored secrets unreadable: rotate each endpoint's secret afterwards.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Mapping
from typing import Any

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

PREFIX = "whsec_"


class SecretUnreadable(RuntimeError):
    """A stored secret that the configured key cannot decrypt (the key changed)."""


def new_secret() -> str:
    return PREFIX + base64.b64encode(secrets.token_bytes(24)).decode()


def _fernet(config: Mapping[str, Any]) -> Fernet:
    key = config.get("WEBHOOKS_ENCRYPTION_KEY")
    if key:
        return Fernet(key)
    derived = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"licensing webhooks secrets"
    ).derive(str(config["SECRET_KEY"]).encode())
    return Fernet(base64.urlsafe_b64encode(derived))


def encrypt(config: Mapping[str, Any], secret: str) -> str:
    return _fernet(config).encrypt(secret.encode()).decode()


def decrypt(config: Mapping[str, Any], stored: str) -> str:
    try:
        return _fernet(config).decrypt(stored.encode()).decode()
    except InvalidToken:
        raise SecretUnreadable(
            "the webhook secret cannot be decrypted with the configured key "
            "(WEBHOOKS_ENCRYPTION_KEY or SECRET_KEY changed): rotate the endpoint's secret"
        ) from None


def valid_key(key: str) -> bool:
    try:
        Fernet(key)
    except (ValueError, TypeError):
        return False
    return True
