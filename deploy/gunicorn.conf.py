"""gunicorn settings for `make run` and production (`gunicorn -c deploy/gunicorn.conf.py wsgi:app`).

Workers import the app themselves (no preload): each gets its own database pool, never
one inherited across fork().
"""

import multiprocessing
import os

bind = f"{os.environ.get('HOST', '127.0.0.1')}:{os.environ.get('PORT', '8000')}"
workers = int(os.environ.get("WEB_CONCURRENCY") or multiprocessing.cpu_count() * 2 + 1)
worker_class = "sync"
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "30"))
graceful_timeout = 30
keepalive = 5
# Recycle workers now and then (with jitter, so they do not all restart at once).
max_requests = 5000
max_requests_jitter = 500
# Only the local reverse proxy may set X-Forwarded-*; the app's ProxyFix decides how
# many hops to believe (TRUSTED_PROXIES).
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")
accesslog = "-"
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()
