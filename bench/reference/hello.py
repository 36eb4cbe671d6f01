"""Flask hello: one route, `jsonify(ok=True)` — the floor under GET /healthz.

gunicorn -c deploy/gunicorn.conf.py bench.reference.hello:app
"""

from flask import Flask, jsonify

app = Flask(__name__)


@app.get("/healthz")
def hello():
    return jsonify(ok=True)
