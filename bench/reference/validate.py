"""A minimal license validation: Flask + PyJWT EdDSA verify + one SQLAlchemy Core
primary-key select + `jsonify` — the same work as POST /licenses/validate, written bare
(no rate limits, logs, metrics, ownership guard, schemas or session).

    DATABASE_URL=… LICENSE_SIGNING_KEYS=key.pem \\
        gunicorn -c deploy/gunicorn.conf.py bench.reference.validate:app

It reads the service's own database (the seeded `licenses` table, SQLite in WAL mode or
PostgreSQL) and verifies the tokens the service signed, with the first key of
LICENSE_SIGNING_KEYS. SQLAlchemy's defaults otherwise: what a bare implementation gets.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime

import jwt
from cryptography.hazmat.primitives import serialization
from flask import Flask, jsonify, request
from sqlalchemy import (
    Column,
    DateTime,
    Integer,
    MetaData,
    String,
    Table,
    bindparam,
    create_engine,
    event,
    select,
)

url = os.environ["DATABASE_URL"]
if url.startswith("postgresql://"):
    url = "postgresql+psycopg://" + url[len("postgresql://") :]
engine = create_engine(url)
if engine.dialect.name == "sqlite":

    @event.listens_for(engine, "connect")
    def _wal(dbapi_connection, _record):
        dbapi_connection.execute("PRAGMA journal_mode=WAL")


licenses = Table(
    "licenses",
    MetaData(),
    Column("license_id", String, primary_key=True),
    Column("client_id", String),
    Column("status", String),
    Column("expires_at", DateTime(timezone=True)),
    Column("version", Integer),
)
BY_ID = select(licenses).where(licenses.c.license_id == bindparam("license_id"))

with open(os.environ["LICENSE_SIGNING_KEYS"].split(",")[0].strip(), "rb") as pem:
    PUBLIC_KEY = serialization.load_pem_private_key(pem.read(), password=None).public_key()

app = Flask(__name__)


@app.post("/api/v1/licenses/validate")
def validate():
    body = request.get_json()
    now = datetime.now(UTC)
    try:
        claims = jwt.decode(
            body["token"],
            PUBLIC_KEY,
            algorithms=["EdDSA"],
            issuer="licensing-platform",
            options={"verify_exp": False, "require": ["license_id", "client_id", "exp"]},
        )
    except jwt.InvalidTokenError:
        return jsonify(valid=False, code="INVALID_TOKEN", checked_at=now.isoformat())
    with engine.connect() as conn:
        row = conn.execute(BY_ID, {"license_id": claims["license_id"]}).first()
    if row is None:
        code = "NOT_FOUND"
    elif body.get("client_id") not in (None, row.client_id):
        code = "CLIENT_MISMATCH"
    elif row.status != "active":
        code = row.status.upper()
    elif row.expires_at.replace(tzinfo=row.expires_at.tzinfo or UTC) <= now:
        code = "EXPIRED"
    else:
        code = "VALID"
    license_ = None
    if row is not None and code != "CLIENT_MISMATCH":
        license_ = {
            "license_id": row.license_id,
            "client_id": row.client_id,
            "status": row.status,
            "expires_at": row.expires_at.isoformat(),
            "version": row.version,
        }
    return jsonify(valid=code == "VALID", code=code, license=license_, checked_at=now.isoformat())
