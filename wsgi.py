"""The WSGI entry point: `gunicorn wsgi:app`, `flask --app wsgi …`."""

import os
import sys

from app import create_app
from app.auth.api import SigningKeyError
from app.config import ConfigError
from app.kernel.metrics import metrics_folder_problem

# Loading the app writes nothing to the metrics folder; checked before anything measures.
if problem := metrics_folder_problem(os.environ.get("PROMETHEUS_MULTIPROC_DIR")):
    sys.stderr.write(f"error: {problem}\n")
    raise SystemExit(2)

try:
    app = create_app()
except (ConfigError, SigningKeyError) as exc:
    sys.stderr.write(f"error: {exc}\n")
    raise SystemExit(2) from None
