"""The DDL of every revision is history: databases have run it, and a fresh database must get
the very same schema. tests/migrations_ddl.txt records, step by step up to head and back down
to base on SQLite, which statements each step adds to the schema and which it removes. A
change to an old migration that alters what it creates fails here, however it is written.

A new revision adds its steps: `UPDATE_MIGRATIONS_DDL=1 .venv/bin/pytest
tests/test_migrations_ddl.py` rewrites the file, and the diff shows what the revision does.
"""

from __future__ import annotations

import os
import re
import sqlite3
from pathlib import Path

from alembic.script import ScriptDirectory

from app.kernel import migrations

RECORD = Path(__file__).with_name("migrations_ddl.txt")


def _schema(path: Path) -> set[str]:
    """Every CREATE statement in the database, white space folded to one line each."""
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT sql FROM sqlite_master WHERE sql IS NOT NULL").fetchall()
    return {re.sub(r"\s+", " ", sql).replace("( ", "(").replace(" )", ")") for (sql,) in rows}


def _steps() -> list[tuple[str, str]]:
    """(direction, target) for each step from base to head and back to base."""
    script = ScriptDirectory.from_config(migrations.alembic_config("sqlite://"))
    revisions = [s.revision for s in reversed(list(script.walk_revisions()))]
    down = [*reversed(revisions[:-1]), "base"]
    return [("up", r) for r in revisions] + [("down", r) for r in down]


def _record(tmp_path: Path) -> str:
    path = tmp_path / "ddl.db"
    url = f"sqlite:///{path}"
    before: set[str] = set()
    lines = []
    for direction, target in _steps():
        step = migrations.upgrade if direction == "up" else migrations.downgrade
        step(url, target)
        after = _schema(path)
        lines.append(f"== {direction} to {target}")
        lines += [f"- {sql}" for sql in sorted(before - after)]
        lines += [f"+ {sql}" for sql in sorted(after - before)]
        before = after
    return "\n".join(lines) + "\n"


def test_every_step_up_and_down_runs_the_recorded_ddl(tmp_path):
    recorded = _record(tmp_path)
    if os.environ.get("UPDATE_MIGRATIONS_DDL") == "1":
        RECORD.write_text(recorded)
    assert recorded.splitlines() == RECORD.read_text().splitlines()
