"""Bare apps the service is measured against (issue 17): what the same work costs when
written without the service's features. Served like the service, by gunicorn with
deploy/gunicorn.conf.py (same worker count and class)."""
