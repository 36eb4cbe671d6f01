"""The WSGI entry point: `gunicorn wsgi:app`, `flask --app wsgi …`."""

import sys

from app import create_app
from app.auth.api import SigningKeyError
from app.config import ConfigError

try:
    app = create_app()
except (ConfigError, SigningKeyError) as exc:
    sys.stderr.write(f"error: {exc}\n")
    raise SystemExit(2) from None
