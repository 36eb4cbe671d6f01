"""No public secret in any mode, and private files whatever the umask.

- With SECRET_KEY / JWT_SECRET_KEY unset (what `make run` gives), tokens are signed with
  secrets generated once per instance folder, never with a value from the source: an access
  token forged with the old placeholder or any guessable string — for example from the
  `user_id` a license token carries — is refused everywhere.
- The SQLite database (and its -wal and -shm), the generated secrets and keys and the
  sandbox ledger are created 0600 in 0700 folders under umask 022 (and 000); an existing
  database file others can read is reported at start-up.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import multiprocessing
import os
import stat
import time
import uuid
from pathlib import Path

import pytest

from app import create_app
from app.config import ConfigError
from app.kernel import files, migrations
from tests.helpers import (
    API,
    OTHER_SECRET,
    PASSWORD,
    STRONG_SECRET,
    assert_problem,
    b64url,
    bearer,
    login,
    sign_up,
)


@pytest.fixture
def backend():
    return "sqlite"  # files on disk; PostgreSQL has none of its own here


# What an attacker tries first: the placeholder this code base once shipped, blanks and
# the usual suspects.
GUESSES = [
    "development-only-placeholder-never-use-in-production",
    "",
    "secret",
    "changeme",
    "development",
    "testing",
    "jwt-secret",
    "secret-key",
    "flask",
    "x" * 32,
]


def hs256(claims: dict, key: str) -> str:
    """An HS256 JWT signed with `key` (by hand: PyJWT refuses an empty key)."""
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = b64url(json.dumps(claims).encode())
    signature = hmac.new(key.encode(), f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{b64url(signature)}"


def claims_of(token: str) -> dict:
    part = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def mode_of(path: Path | str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def bare_config(app_config, tmp_path, monkeypatch, request):
    """The app as `make run` starts it: no SECRET_KEY, no JWT_SECRET_KEY, its own instance."""
    for name in ("SECRET_KEY", "JWT_SECRET_KEY"):
        monkeypatch.delenv(name, raising=False)
    return {**app_config, "APP_ENV": "development", "INSTANCE_PATH": str(tmp_path / "instance")}


@pytest.fixture
def caplog(caplog, monkeypatch):
    """caplog, kept: create_app would replace the root logger's handlers with its own."""
    monkeypatch.setattr("app.http.observability.configure_logging", lambda *_args: None)
    return caplog


def make(config):
    application = create_app(config)
    return application, application.test_client()


# --- item 1: no public secret --------------------------------------------------------


def test_tokens_forged_with_guessable_keys_are_refused(bare_config, runner):
    application, client = make(bare_config)
    try:
        admin = application.test_cli_runner().invoke(
            args=["users", "create-admin", "root@example.com", "--password-stdin"],
            input=PASSWORD + "\n",
        )
        assert admin.exit_code == 0, admin.output
        root = login(client, "root@example.com").get_json()
        pair = sign_up(client)
        lic = client.post(
            f"{API}/licenses/activate",
            json={"client_id": "box"},
            headers=bearer(pair.access),
        ).get_json()
        # Everything an attacker needs but the key: the license token names its owner; the
        # admin's id is in any of the admin's own tokens.
        owner = claims_of(lic["token"])["user_id"]
        template = claims_of(pair.access)
        now = int(time.time())
        targets = [
            ("GET", f"{API}/auth/me", owner, "user"),
            ("DELETE", f"{API}/licenses/{lic['license_id']}", owner, "user"),
            ("GET", f"{API}/admin/stats/users", claims_of(root["access_token"])["sub"], "admin"),
        ]
        for key in GUESSES:
            for method, path, subject, role in targets:
                claims = {
                    **template,
                    "sub": subject,
                    "role": role,
                    "jti": str(uuid.uuid4()),
                    "iat": now,
                    "nbf": now,
                    "exp": now + 600,
                }
                response = client.open(path, method=method, headers=bearer(hs256(claims, key)))
                assert_problem(response, 401, "invalid_token")
        # The license is untouched and the real tokens still work.
        mine = client.get(f"{API}/licenses/{lic['license_id']}", headers=bearer(pair.access))
        assert mine.get_json()["status"] == "active"
        assert (
            client.get(f"{API}/admin/stats/users", headers=bearer(root["access_token"])).status_code
            == 200
        )
    finally:
        application.extensions["db"].dispose()


def test_generated_secrets_are_private_shared_by_the_instance_and_logged_once(
    bare_config, tmp_path, caplog
):
    caplog.set_level(logging.INFO)
    first, client = make(bare_config)
    again, again_client = make(bare_config)  # another worker on the same instance folder
    elsewhere, elsewhere_client = make({**bare_config, "INSTANCE_PATH": str(tmp_path / "other")})
    try:
        folder = Path(bare_config["INSTANCE_PATH"])
        assert mode_of(folder) == 0o700
        values = {}
        for name, file in (("SECRET_KEY", "secret-key"), ("JWT_SECRET_KEY", "jwt-secret-key")):
            path = folder / file
            assert mode_of(path) == 0o600, name
            values[name] = path.read_text().strip()
            assert len(values[name]) >= 48, name
            assert first.config[name] == again.config[name] == values[name]
            assert elsewhere.config[name] != values[name]
        assert values["SECRET_KEY"] != values["JWT_SECRET_KEY"]

        pair = sign_up(client)
        assert again_client.get(f"{API}/auth/me", headers=bearer(pair.access)).status_code == 200
        assert_problem(
            elsewhere_client.get(f"{API}/auth/me", headers=bearer(pair.access)),
            401,
            "invalid_token",
        )
        said = [
            r.getMessage()
            for r in caplog.records
            if "generated for this instance" in r.getMessage()
        ]
        assert len(said) == 2  # once for this folder, once for the other one
        assert str(folder / "jwt-secret-key") in said[0]
        for value in values.values():
            assert value not in caplog.text
    finally:
        for application in (first, again, elsewhere):
            application.extensions["db"].dispose()


def _read_secret(folder: str, queue) -> None:
    queue.put(files.instance_secret(folder, "jwt-secret-key"))


def test_workers_starting_at_once_agree_on_one_secret(tmp_path):
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    folder = str(tmp_path / "instance")
    procs = [ctx.Process(target=_read_secret, args=(folder, queue)) for _ in range(8)]
    for proc in procs:
        proc.start()
    results = [queue.get(timeout=60) for _ in procs]
    for proc in procs:
        proc.join(timeout=60)
    assert len({secret for secret, _ in results}) == 1
    assert sum(generated for _, generated in results) == 1
    assert sorted(os.listdir(folder)) == ["jwt-secret-key"]  # no temporary file left behind


@pytest.mark.parametrize("name", ["SECRET_KEY", "JWT_SECRET_KEY"])
@pytest.mark.parametrize("value", ["secret", "changeme", "x" * 31])
def test_a_weak_secret_is_refused_in_development_too(bare_config, name, value):
    with pytest.raises(ConfigError, match=f"{name} is shorter than 32 characters"):
        create_app({**bare_config, name: value})


def test_the_same_secret_twice_is_refused(bare_config):
    with pytest.raises(ConfigError, match="must differ"):
        create_app({**bare_config, "SECRET_KEY": STRONG_SECRET, "JWT_SECRET_KEY": STRONG_SECRET})


# Long enough, and guessable all the same (found by the outside test in production).
GUESSABLE_LONG = [
    "development-only-placeholder-never-use-in-production",
    "a" * 40,
    "changeme" * 4,
    "0123456789" * 4,
    "secret" + " " * 35,
    "your-256-bit-secret-your-256-bit-secret",
    "passwordpasswordpasswordpassword1",
    # … and the second outside test's, long and not repeated:
    "your-secret-key-here-please-change-it-now",
    "change-this-to-a-long-random-string-in-production",
    "insecure-secret-key-do-not-use-in-production",
    "REPLACE_ME_WITH_A_REAL_SECRET_VALUE_123",
    "my-super-secret-jwt-key-that-is-very-long",
    "abcdefghijklmnopqrstuvwxyz0123456789",
    "ABCDEFGHIJKLMNOPQRSTUVWXYZABCDEFGHIJKLMN",
    "qwertyuiopasdfghjklzxcvbnmqwertyuiopasdf",
    "correcthorsebatterystaplecorrecthorse",
    "django-insecure-abcdefghijklmnopqrstuvwxyz012345",
    "<generate with secrets.token_urlsafe(48)>",
    "$(python3 -c 'import secrets; print(secrets.token_urlsafe(48))')",
]


def test_generated_secrets_are_never_guessable():
    import secrets

    from app.config import guessable

    # A token_hex(32) this test once drew (CI, 1 in 2000): "…d43456780…" holds the run
    # "345678", which a placeholder-word check took for a keyboard run.
    assert not guessable("fd84254dd95d43456780b4073bbd9cb20c1b07e5b6906ab679fa367b72b0f0ce")
    for _ in range(2000):
        assert not guessable(secrets.token_urlsafe(48))
        assert not guessable(secrets.token_hex(32))


@pytest.mark.parametrize("environment", ["production", "development"])
@pytest.mark.parametrize("value", GUESSABLE_LONG)
def test_a_long_but_guessable_secret_is_refused(bare_config, signing_key_file, environment, value):
    config = {
        **bare_config,
        "APP_ENV": environment,
        "ALLOW_SANDBOX_PAYMENTS": True,
        "LICENSE_SIGNING_KEYS": signing_key_file,
        "SECRET_KEY": OTHER_SECRET,
        "JWT_SECRET_KEY": value,
    }
    with pytest.raises(ConfigError, match="JWT_SECRET_KEY is guessable"):
        create_app(config)


def test_a_generated_secret_is_accepted(bare_config):
    application = create_app(
        {**bare_config, "SECRET_KEY": STRONG_SECRET, "JWT_SECRET_KEY": OTHER_SECRET}
    )
    application.extensions["db"].dispose()


# --- item 5: private files -----------------------------------------------------------


@pytest.fixture(params=[0o022, 0o000], ids=["umask 022", "umask 000"])
def umask(request):
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


def test_everything_private_is_created_0600_in_0700_folders(bare_config, tmp_path, umask):
    instance = Path(bare_config["INSTANCE_PATH"])
    nested = tmp_path / "data" / "licensing"  # folders that do not exist yet
    config = {**bare_config, "DATABASE_URL": f"sqlite:///{nested}/app.db"}
    config.pop("SANDBOX_LEDGER")  # the default: in the instance folder
    config.pop("LICENSE_SIGNING_KEYS")  # the development default: generated there
    migrations.upgrade(config["DATABASE_URL"])
    application, client = make(config)
    try:
        pair = sign_up(client)
        headers = bearer(pair.access)
        assert (
            client.post(
                f"{API}/licenses/activate", json={"client_id": "b"}, headers=headers
            ).status_code
            == 201
        )
        order = client.post(
            f"{API}/orders",
            json={"plan": "pro", "payment_token": "tok_ok"},
            headers={**headers, "Idempotency-Key": "k1"},
        )
        assert order.status_code == 201, order.get_json()
        expected = {
            nested: 0o700,
            nested.parent: 0o700,
            nested / "app.db": 0o600,
            nested / "app.db-wal": 0o600,
            nested / "app.db-shm": 0o600,
            nested / "app.db-writers": 0o600,  # where writers queue (kernel.db)
            instance: 0o700,
            instance / "secret-key": 0o600,
            instance / "jwt-secret-key": 0o600,
            instance / "license-signing-key.pem": 0o600,
            instance / "sandbox-ledger.jsonl": 0o600,
        }
        found = {path: mode_of(path) for path in expected}
        assert found == expected, {str(p): oct(m) for p, m in found.items()}
    finally:
        application.extensions["db"].dispose()


def test_a_database_file_others_can_read_is_reported_at_start(bare_config, tmp_path, caplog):
    path = tmp_path / "legacy.db"
    url = f"sqlite:///{path}"
    migrations.upgrade(url)
    os.chmod(path, 0o644)  # as an older version (or umask 022) left it
    files.warn_if_exposed.cache_clear()
    caplog.set_level(logging.WARNING)
    application = create_app({**bare_config, "DATABASE_URL": url})
    application.extensions["db"].dispose()
    [warning] = [r.getMessage() for r in caplog.records if str(path) in r.getMessage()]
    assert "readable by other users (mode 0644)" in warning
    assert f"chmod 600 {path}" in warning
    assert mode_of(path) == 0o644  # reported, not changed behind the operator's back

    os.chmod(path, 0o600)
    files.warn_if_exposed.cache_clear()
    caplog.clear()
    application = create_app({**bare_config, "DATABASE_URL": url})
    application.extensions["db"].dispose()
    assert not [r for r in caplog.records if str(path) in r.getMessage()]


def test_a_generated_signing_keys_new_folders_are_private(tmp_path, umask):
    """(outside test: `licenses generate-key` into a new folder made it 0755)"""
    from app.auth.licensing.signing import generate_key_file

    key = tmp_path / "keys" / "2026" / "license-key.pem"
    generate_key_file(key)
    assert (mode_of(key.parent.parent), mode_of(key.parent), mode_of(key)) == (0o700, 0o700, 0o600)


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_the_app_serves_a_missing_sqlite_file_as_unavailable_and_creates_nothing(
    app_config, tmp_path
):
    """A mistyped DATABASE_URL: 503 and a /readyz naming the database, no empty database."""
    missing = tmp_path / "typo" / "app.db"
    application = create_app({**app_config, "DATABASE_URL": f"sqlite:///{missing}"})
    try:
        client = application.test_client()
        assert_problem(
            client.post(
                f"{API}/auth/register", json={"email": "a@example.com", "password": PASSWORD}
            ),
            503,
            "database_unavailable",
        )
        assert client.get("/readyz").status_code == 503
    finally:
        application.extensions["db"].dispose()
    assert not (tmp_path / "typo").exists()
