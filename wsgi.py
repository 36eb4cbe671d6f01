"""The WSGI entry point: `gunicorn wsgi:app`, `flask --app wsgi …`."""

import os
import sys


def metrics_folder_problem() -> str | None:
    """PROMETHEUS_MULTIPROC_DIR made when missing (as gunicorn's start makes it), or why it
    cannot be: the app's metrics write their process's files there as its modules load, so
    a missing folder made every `flask` command end in a traceback (the outside test)."""
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if folder:
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as exc:
            return (
                f"PROMETHEUS_MULTIPROC_DIR={folder} is not a folder the metrics can be "
                f"written to ({exc.strerror})"
            )
    return None


if problem := metrics_folder_problem():
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
