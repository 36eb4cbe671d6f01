"""Operator commands end with one line naming the cause (exit code 2) when the database or a
path is out of reach; `postgres://` URLs work wherever `postgresql://` ones do."""

from __future__ import annotations

import pytest

from app.kernel import migrations
from tests.conftest import PG_ADMIN_URL, create_pg_database, drop_pg_database, pg_url
from tests.helpers import free_port, project_env, run_flask

pytestmark = pytest.mark.slow


def _one_line_error(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]


@pytest.fixture
def pg_reachable():
    """Skips (or fails with REQUIRE_SERVICES=1) when PostgreSQL is not there at all."""
    drop_pg_database(create_pg_database("lic_probe"))


def _base(url: str) -> str:
    return url.rpartition("/")[0]


@pytest.mark.parametrize(
    ("make_url", "cause"),
    [
        (lambda tmp: _base(PG_ADMIN_URL) + "/lic_no_such_database", '"lic_no_such_database"'),
        (
            lambda tmp: "postgresql://lic_no_such_role@" + _base(PG_ADMIN_URL).split("@")[1] + "/x",
            '"lic_no_such_role"',
        ),
        (lambda tmp: f"postgresql://postgres@127.0.0.1:{free_port()}/x", "refused"),
    ],
    ids=["missing-database", "wrong-role", "closed-port"],
)
def test_db_upgrade_cannot_reach_postgresql(tmp_path, pg_reachable, make_url, cause):
    url = make_url(tmp_path)
    result = run_flask("db", "upgrade", env=project_env(APP_ENV="testing", DATABASE_URL=url))
    line = _one_line_error(result)
    assert "cannot connect to the database" in line and cause in line, line
    assert "Traceback" not in result.stderr


def test_db_upgrade_cannot_write_the_sqlite_path(tmp_path):
    # A missing folder is created (0700); one that cannot be is the case here (we run as
    # root, so a read-only folder would not stop us: a file stands where the folder should).
    (tmp_path / "not-a-folder").write_text("")
    url = f"sqlite:///{tmp_path}/not-a-folder/app.db"
    result = run_flask("db", "upgrade", env=project_env(APP_ENV="testing", DATABASE_URL=url))
    line = _one_line_error(result)
    assert f"{tmp_path}/not-a-folder" in line, line


@pytest.mark.parametrize(
    "command",
    [
        ["db", "current"],
        ["db", "layout"],
        ["backup", "create"],
        ["tokens", "prune"],
        ["subscriptions", "renew"],
        ["orders", "recover"],
        ["outbox", "status"],
        ["audit", "archive"],
    ],
    ids=lambda c: " ".join(c),
)
def test_every_command_says_it_in_one_line(tmp_path, command):
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/x"
    env = project_env(APP_ENV="testing", DATABASE_URL=url, BACKUP_DIR=str(tmp_path / "bk"))
    line = _one_line_error(run_flask(*command, env=env))
    assert "refused" in line, line


@pytest.mark.parametrize("scheme", ["postgres", "postgres+psycopg", "postgresql+psycopg"])
def test_postgres_urls_work_everywhere(tmp_path, pg_reachable, scheme):
    name = create_pg_database("lic_scheme")
    try:
        url = f"{scheme}://" + pg_url(name).split("://", 1)[1]
        env = project_env(APP_ENV="testing", DATABASE_URL=url, BACKUP_DIR=str(tmp_path / "bk"))
        for command in (["db", "upgrade"], ["db", "current"], ["backup", "create"]):
            result = run_flask(*command, env=env)
            assert result.returncode == 0, (command, result.stderr)
        head = ",".join(sorted(migrations.head_revisions()))
        assert f"{head} (head)" in run_flask("db", "current", env=env).stdout
    finally:
        drop_pg_database(name)


@pytest.mark.parametrize("where", ["under a file", "in /proc"])
def test_an_instance_folder_that_cannot_be_made_is_one_line(tmp_path, where):
    """(outside test: a 30-line FileNotFoundError traceback from create_app)"""
    (tmp_path / "a-file").write_text("")
    folder = tmp_path / "a-file" / "instance" if where == "under a file" else "/proc/licensing-x"
    env = project_env(APP_ENV="testing", DATABASE_URL=f"sqlite:///{tmp_path}/app.db")
    env["INSTANCE_PATH"] = str(folder)
    result = run_flask("db", "current", env=env)
    line = _one_line_error(result)
    assert str(folder) in line, line


@pytest.mark.parametrize(
    "command",
    [
        ["db", "current"],
        ["db", "layout"],
        ["tokens", "prune"],
        ["users", "unlock", "ada@example.com"],
        ["subscriptions", "renew"],
        ["orders", "recover"],
        ["outbox", "status"],
        ["audit", "archive"],
    ],
    ids=lambda c: " ".join(c),
)
@pytest.mark.parametrize("where", ["missing folders", "existing folder"])
def test_a_mistyped_sqlite_path_creates_nothing(tmp_path, command, where):
    """(outside test: any command created the folders and an empty database, then failed on
    a missing table) Only `flask db upgrade` makes a database; the others say it is not there.
    (`backup create` checks the file itself first.)"""
    path = tmp_path / "typo" / "sub" / "app.db" if where == "missing folders" else tmp_path / "x.db"
    env = project_env(
        APP_ENV="testing", DATABASE_URL=f"sqlite:///{path}", BACKUP_DIR=str(tmp_path / "bk")
    )
    line = _one_line_error(run_flask(*command, env=env))
    assert str(path) in line and "does not exist" in line, line
    assert "flask db upgrade" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == [], list(tmp_path.iterdir())


def test_db_upgrade_still_creates_a_fresh_sqlite_database(tmp_path):
    path = tmp_path / "new" / "app.db"
    env = project_env(APP_ENV="testing", DATABASE_URL=f"sqlite:///{path}")
    result = run_flask("db", "upgrade", env=env)
    assert result.returncode == 0, result.stderr
    assert path.exists()
    assert run_flask("db", "current", env=env).returncode == 0
