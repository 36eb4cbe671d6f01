"""The HTTP layer: the only place that knows APIFlask and flask-limiter (docs/adr/0005)."""
