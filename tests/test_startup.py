"""A broken deployment does not start: the gunicorn master checks before it forks; /readyz
names the real cause; the SQLite warning is said once per service start."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile

import pytest

from app import create_app
from app.kernel import migrations
from tests.helpers import (
    BIN,
    OTHER_SECRET,
    ROOT,
    STRONG_SECRET,
    free_port,
    gunicorn_server,
    project_env,
    run_flask,
)

pytestmark = pytest.mark.slow

SECRETS = {
    "SECRET_KEY": STRONG_SECRET,
    "JWT_SECRET_KEY": OTHER_SECRET,
    "ALLOW_SANDBOX_PAYMENTS": "1",
}


def _gunicorn_exits(port: int, **env: str) -> tuple[int, str]:
    """Run the real gunicorn with deploy/gunicorn.conf.py until it exits by itself."""
    settings = {"HOST": "127.0.0.1", "PORT": str(port), "WEB_CONCURRENCY": "3", **env}
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            [BIN / "gunicorn", "-c", "deploy/gunicorn.conf.py", "wsgi:app"],
            cwd=ROOT,
            env=project_env(**settings),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            code = proc.wait(timeout=120)  # a hang guard, not a margin: it must exit itself
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
        log.seek(0)
        return code, log.read().decode(errors="replace")


def _port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def test_production_without_secrets_exits_at_once_like_the_cli(tmp_path):
    env = {"APP_ENV": "production", "DATABASE_URL": f"sqlite:///{tmp_path}/app.db"}
    cli = run_flask("db", "current", env=project_env(**env))
    [cli_line] = cli.stderr.strip().splitlines()
    port = free_port()
    code, output = _gunicorn_exits(port, **env)
    assert code == 2, output
    assert cli_line in output.splitlines(), output
    assert "Booting worker" not in output  # refused before forking, not restarted forever
    assert _port_is_free(port)


def test_production_behind_head_or_without_its_key_refuses_to_serve(tmp_path, signing_key_file):
    url = f"sqlite:///{tmp_path}/app.db"
    migrations.upgrade(url, "0006")  # an older release's schema
    port = free_port()
    code, output = _gunicorn_exits(
        port,
        APP_ENV="production",
        DATABASE_URL=url,
        LICENSE_SIGNING_KEYS=signing_key_file,
        **SECRETS,
    )
    assert code == 2 and "error: refusing to serve with APP_ENV=production" in output, output
    assert "migrations: behind" in output and "Booting worker" not in output
    assert _port_is_free(port)

    migrations.upgrade(url)
    code, output = _gunicorn_exits(
        free_port(),
        APP_ENV="production",
        DATABASE_URL=url,
        LICENSE_SIGNING_KEYS=str(tmp_path / "missing.pem"),
        **SECRETS,
    )
    assert code == 2 and "error: cannot read license signing key" in output, output
    assert "Booting worker" not in output


def test_development_starts_and_says_each_thing_once(tmp_path, signing_key_file):
    url = f"sqlite:///{tmp_path}/app.db"
    migrations.upgrade(url, "0006")
    output: list[str] = []
    with gunicorn_server(
        url,
        workers=3,
        output=output,
        LOG_LEVEL="INFO",
        APP_ENV="development",
        LICENSE_SIGNING_KEYS=signing_key_file,
    ):
        pass
    [text] = output
    assert text.count("migrations: behind") == 1, text
    assert text.count("Booting worker") == 3
    import sqlite3

    from app.kernel.engines import sqlite_has_wal_reset_bug

    expected = 1 if sqlite_has_wal_reset_bug(sqlite3.sqlite_version) else 0
    assert text.count("WAL-reset bug") == expected, text  # once, not once per worker


def test_the_cli_says_the_sqlite_warning_only_when_it_writes(tmp_path):
    import sqlite3

    from app.kernel.engines import sqlite_has_wal_reset_bug

    env = project_env(APP_ENV="testing", DATABASE_URL=f"sqlite:///{tmp_path}/app.db")
    expected = 1 if sqlite_has_wal_reset_bug(sqlite3.sqlite_version) else 0
    upgrade = run_flask("db", "upgrade", env=env)
    assert upgrade.returncode == 0 and upgrade.stderr.count("WAL-reset bug") == expected
    current = run_flask("db", "current", env=env)
    assert current.returncode == 0 and "WAL-reset bug" not in current.stderr


@pytest.fixture
def read_only_folder(tmp_path):
    """A folder on a tmpfs mounted read-only (root ignores file modes, not ro mounts)."""
    folder = tmp_path / "ro"
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(folder)], capture_output=True)
    if done.returncode != 0:
        from tests.conftest import service_unavailable

        service_unavailable("a tmpfs mount", done.stderr.decode().strip())
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=False)


def test_readyz_names_a_read_only_folder_and_an_unusable_key(
    read_only_folder, sqlite_template, app_config, tmp_path
):
    shutil.copy(sqlite_template, read_only_folder / "app.db")
    subprocess.run(["mount", "-o", "remount,ro", str(read_only_folder)], check=True)
    app = create_app(
        {
            **app_config,
            "DATABASE_URL": f"sqlite:///{read_only_folder}/app.db",
            "LICENSE_SIGNING_KEYS": None,
            "DB_SCHEMAS": False,
        }
    )
    app.instance_path = str(read_only_folder)  # as if the instance folder were read-only
    try:
        response = app.test_client().get("/readyz")
        body = response.get_json()
        assert response.status_code == 503, body
        checks = body["checks"]
        assert checks["instance"] == f"read-only: {read_only_folder}"
        assert checks["database"].startswith(f"read-only: {read_only_folder}"), checks
        assert "cannot create the development signing key" in checks["signing_keys"], checks
    finally:
        app.extensions["db"].dispose()


def test_an_unreadable_signing_key_is_named_and_activations_are_503(app_config, tmp_path):
    app = create_app({**app_config, "LICENSE_SIGNING_KEYS": str(tmp_path / "gone.pem")})
    try:
        client = app.test_client()
        body = client.get("/readyz").get_json()
        assert body["checks"]["signing_keys"].startswith("cannot read license signing key")
        client.post("/api/v1/auth/register", json={"email": "a@example.com", "password": "p" * 12})
        activation = client.post(
            "/api/v1/licenses/activate",
            json={"client_id": "x", "email": "a@example.com", "password": "p" * 12},
        )
        assert activation.status_code == 503, activation.get_json()
        assert activation.get_json()["code"] == "signing_unavailable"
        assert str(tmp_path) not in activation.get_data(as_text=True)
        # Nothing was kept for an answer without a token: no license, no seat in use.
        login = client.post(
            "/api/v1/auth/login", json={"email": "a@example.com", "password": "p" * 12}
        ).get_json()
        bearer = {"Authorization": f"Bearer {login['access_token']}"}
        assert client.get("/api/v1/licenses", headers=bearer).get_json()["items"] == []
    finally:
        app.extensions["db"].dispose()
