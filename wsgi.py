"""The WSGI entry point: `gunicorn wsgi:app`, `flask --app wsgi …`."""

import os
import sys


def metrics_folder_problem(folder: str | None) -> str | None:
    """PROMETHEUS_MULTIPROC_DIR made when missing (as gunicorn's start makes it), or why it
    cannot be used: the app's metrics write their process's files there as its modules
    load, so a missing folder made every `flask` command end in a traceback
    (tests/test_observability.py). deploy/gunicorn.conf.py checks it the same way."""
    if folder:
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as exc:
            return f"PROMETHEUS_MULTIPROC_DIR={folder} cannot be made ({exc.strerror})"
        if not os.access(folder, os.W_OK | os.X_OK):
            return f"PROMETHEUS_MULTIPROC_DIR={folder} is not a folder this user can write to"
    return None


if problem := metrics_folder_problem(os.environ.get("PROMETHEUS_MULTIPROC_DIR")):
    sys.stderr.write(f"error: {problem}\n")
    raise SystemExit(2)

from app import create_app  # noqa: E402 - after the metrics' folder is there
from app.auth.api import SigningKeyError  # noqa: E402
from app.config import ConfigError  # noqa: E402

try:
    app = create_app()
except (ConfigError, SigningKeyError) as exc:
    sys.stderr.write(f"error: {exc}\n")
    raise SystemExit(2) from None
