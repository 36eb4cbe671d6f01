"""The rules for secrets and for production, and ConfigError.

The settings themselves are typed and validated in `app.settings`; `load_config` is their
app.config view, kept for the callers that want a plain mapping.

No secret has a default in the source. `APP_ENV=production` refuses to start without real
secrets: a missing `SECRET_KEY` or `JWT_SECRET_KEY` is a `ConfigError` with a message
saying what to set. In development and testing, unset secrets are generated once per
instance folder (`create_app`); a secret that is set must be strong in every environment.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

MIN_SECRET_LENGTH = 32
SECRETS = ("SECRET_KEY", "JWT_SECRET_KEY")


class ConfigError(RuntimeError):
    """The configuration cannot run; the message says what to fix."""


def load_config(
    instance_path: str | os.PathLike[str], env: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The app configuration read from `env` (default: the process environment), under its
    app.config keys: `app.settings.load_settings(…).as_config()`."""
    from app.settings import load_settings

    return load_settings(instance_path, environ=env).as_config()


def rate_limit_settings(config: Mapping[str, Any] | None = None) -> list[str]:
    """The names of the per-route limits (`RATELIMIT_<ROUTE>_PER_<KEY>`)."""
    from app.settings.groups import RateLimits

    return RateLimits.route_limits()


# Values published as examples or placeholders: long enough, known to everyone.
KNOWN_SECRETS = frozenset(
    {
        "development-only-placeholder-never-use-in-production",  # this project's old default
        "your-256-bit-secret",  # jwt.io's example
    }
)
# Words that a made-up or placeholder secret is written with, and runs a keyboard or an
# alphabet gives. None is 5 characters or fewer: a random secret contains one by chance
# with a probability of about 1e-7.
PLACEHOLDER_WORDS = (
    "secret", "change", "replace", "insecure", "password", "example", "default", "sample",
    "placeholder", "generate", "production", "correct", "qwerty", "asdfgh", "zxcvbn",
)  # fmt: skip
# Alphabet and digit runs ("abcdef…", "…3456789") count when they make up this share of a
# secret: a random secret holds a short run now and then ("…d4345678…" in a token_hex).
SEQUENTIAL_SHARE = 1 / 3
MIN_DISTINCT_CHARACTERS = 12  # a token_urlsafe(48) secret has ~45 of its 64 alphabet


def guessable(value: str) -> bool:
    """True for a secret that is long but guessable: a known placeholder, placeholder words
    or keyboard and alphabet runs, blanks or shell/markup text (an unexpanded `$(…)`, a
    `<…>`), letters only (a passphrase), too few distinct characters, or a short pattern
    repeated. A secret made with `secrets.token_urlsafe(48)` or `token_hex(32)` never is."""
    folded = value.casefold()
    if any(known in value for known in KNOWN_SECRETS):
        return True
    if any(word in folded for word in PLACEHOLDER_WORDS):
        return True
    if _sequential_share(folded) >= SEQUENTIAL_SHARE:
        return True
    if any(c.isspace() or c in "$<>()'\"" for c in value) or value.isalpha():
        return True
    if len(set(value)) < MIN_DISTINCT_CHARACTERS:
        return True
    # A short pattern repeated ("changemechangeme…"), give or take its last character.
    n = len(value)
    return any(value[p : n - 1] == value[: n - 1 - p] for p in range(1, n // 2))


def _sequential_share(value: str) -> float:
    """The share of `value` in runs of four or more consecutive characters, up or down
    ("abcd", "6543")."""
    n, covered, i = len(value), 0, 0
    while i < n - 1:
        step = ord(value[i + 1]) - ord(value[i])
        if step not in (1, -1):
            i += 1
            continue
        j = i + 1
        while j + 1 < n and ord(value[j + 1]) - ord(value[j]) == step:
            j += 1
        if j - i + 1 >= 4:
            covered += j - i + 1
        i = j
    return min(covered, n) / n if n else 0.0


def secret_problems(config: Mapping[str, Any]) -> list[str]:
    """What is wrong with SECRET_KEY and JWT_SECRET_KEY (missing, short, guessable, or the
    same)."""
    problems = []
    for name in SECRETS:
        value = config.get(name) or ""
        if not value:
            problems.append(f"{name} is not set")
        elif len(value) < MIN_SECRET_LENGTH:
            problems.append(f"{name} is shorter than {MIN_SECRET_LENGTH} characters")
        elif guessable(value):
            problems.append(f"{name} is guessable (a placeholder, padding or a repeated pattern)")
    secret = config.get("SECRET_KEY")
    if secret and secret == config.get("JWT_SECRET_KEY"):
        problems.append("SECRET_KEY and JWT_SECRET_KEY must differ")
    return problems


GENERATE_SECRET = "python -c 'import secrets; print(secrets.token_urlsafe(48))'"  # noqa: S105


def check_secrets(config: Mapping[str, Any]) -> None:
    """Refuse weak or missing secrets in any environment (tokens are signed with them)."""
    problems = secret_problems(config)
    if problems:
        raise ConfigError(
            "refusing to start: "
            + "; ".join(problems)
            + f". Generate a secret with: {GENERATE_SECRET}"
        )


def check_production(config: Mapping[str, Any]) -> None:
    """Refuse production settings that would be unsafe; raise ConfigError listing them all."""
    if config["APP_ENV"] != "production":
        return
    problems = secret_problems(config)
    if config.get("PAYMENT_PROVIDER") == "sandbox" and not config.get("ALLOW_SANDBOX_PAYMENTS"):
        problems.append("PAYMENT_PROVIDER is the sandbox (set ALLOW_SANDBOX_PAYMENTS=1 for a demo)")
    if not config.get("LICENSE_SIGNING_KEYS"):
        problems.append("LICENSE_SIGNING_KEYS is not set")
    if problems:
        raise ConfigError(
            "refusing to start with APP_ENV=production: "
            + "; ".join(problems)
            + f". Generate a secret with: {GENERATE_SECRET}; "
            + "a license signing key with: flask --app wsgi licenses generate-key PATH"
        )
