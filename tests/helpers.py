"""Helpers shared by the tests: accounts, problem assertions, a killable TCP proxy,
process runners."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from http.client import HTTPConnection
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# The schema pass (`make test-schemas`, CI): PostgreSQL databases get the phase-2 layout,
# one schema per module, and every app and child process on them runs with DB_SCHEMAS=on.
PG_SCHEMAS = os.environ.get("TEST_DB_SCHEMAS") == "1"


def is_postgresql(url: str | None) -> bool:
    return bool(url) and url.split(":", 1)[0].split("+", 1)[0] in ("postgresql", "postgres")


def in_layout(table: str, url: str | None) -> str:
    """`table` as raw SQL (and backup manifests) name it in this run's layout on `url`."""
    if layout_config(url)["DB_SCHEMAS"]:
        from app.kernel.ownership import registry

        return f"{registry.schema_of(table)}.{table}"
    return table


def engine_settings(url: str, **options: object):
    """EngineSettings for a test's own engine on `url`, in this run's layout."""
    from app.kernel.engines import EngineSettings

    return EngineSettings(url=url, schemas=layout_config(url)["DB_SCHEMAS"], **options)


# Secrets as an operator makes them (secrets.token_urlsafe(48)): tests that set their own.
STRONG_SECRET = "p0Q7xk2V_rT9mLwZ4sYbN8eHcJ1uGfD6aKoR3vXqE5tWiM-yUzB0nCgS7hLpA2dF"
OTHER_SECRET = "Zm9yIHRlc3RzIG9ubHk_Y2x3Vt8Qe1Rk4NbXp6Hs2Jd9Lf0Ga7Cw3Uy5Io-KzMn"


def bearer(token: str | None) -> dict[str, str]:
    """The Authorization header of an access (or refresh) token; none without one."""
    return {"Authorization": f"Bearer {token}"} if token else {}


# --- accounts: one way to sign up and log in, in process or over real HTTP ---------------

API = "/api/v1"
PASSWORD = "correct horse battery"
ADA = "ada@example.com"


@dataclass(frozen=True)
class Account:
    """A registered customer who has logged in: who they are and their token pair."""

    user_id: str
    email: str
    access: str
    refresh: str

    @property
    def headers(self) -> dict[str, str]:
        """The Authorization header of the access token."""
        return bearer(self.access)


def _remote(ip: str | None, kw: dict) -> dict:
    if ip is not None:
        kw["environ_base"] = {**kw.get("environ_base", {}), "REMOTE_ADDR": ip}
    return kw


def register(client, email: str = ADA, password: str = PASSWORD, *, ip: str | None = None, **kw):
    """POST /auth/register through a Flask test client (the response, unchecked); `ip` is
    the caller's address, `kw` goes to `client.post` (headers, environ_base...)."""
    body = {"email": email, "password": password}
    return client.post(f"{API}/auth/register", json=body, **_remote(ip, kw))


def login(client, email: str = ADA, password: str = PASSWORD, *, ip: str | None = None, **kw):
    """POST /auth/login through a Flask test client (the response, unchecked)."""
    body = {"email": email, "password": password}
    return client.post(f"{API}/auth/login", json=body, **_remote(ip, kw))


def registered(client, email: str = ADA, password: str = PASSWORD) -> dict:
    """A new customer registered through a Flask test client (201): the user's body."""
    response = register(client, email, password)
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def auth_headers(
    client, email: str = ADA, password: str = PASSWORD, *, ip: str | None = None
) -> dict[str, str]:
    """The Authorization header of a fresh access token (the login must succeed)."""
    response = login(client, email, password, ip=ip)
    assert response.status_code == 200, response.get_json()
    return bearer(response.get_json()["access_token"])


def logged_in(client, email: str, user_id: str, password: str = PASSWORD) -> Account:
    """An existing customer's new token pair (the login must succeed)."""
    response = login(client, email, password)
    assert response.status_code == 200, response.get_json()
    pair = response.get_json()
    return Account(user_id, email, pair["access_token"], pair["refresh_token"])


def sign_up(client, email: str = ADA, password: str = PASSWORD) -> Account:
    """A new customer, registered (201) and logged in (200) through a Flask test client."""
    return logged_in(client, email, registered(client, email, password)["user_id"], password)


def register_over_http(base: str, email: str, password: str = PASSWORD):
    """POST /auth/register over real HTTP to the server at `base`: (status, body, headers)."""
    return http("POST", f"{base}{API}/auth/register", {"email": email, "password": password})


def login_over_http(base: str, email: str, password: str = PASSWORD):
    """POST /auth/login over real HTTP to the server at `base`: (status, body, headers)."""
    return http("POST", f"{base}{API}/auth/login", {"email": email, "password": password})


def sign_up_over_http(base: str, email: str, password: str = PASSWORD) -> Account:
    """A new customer, registered and logged in over real HTTP against the server at `base`."""
    status, user, _ = register_over_http(base, email, password)
    assert status == 201, user
    status, pair, _ = login_over_http(base, email, password)
    assert status == 200, pair
    return Account(user["user_id"], email, pair["access_token"], pair["refresh_token"])


def grant_subscription(app, user_id: str, seats: int, plan: str = "pro"):
    """A 30-day subscription granted through the auth module's API (as orders grants it)."""
    from datetime import timedelta

    from app.auth import api as auth_api
    from app.kernel.db import get_session, transaction

    with app.app_context():
        session = get_session()
        with transaction(session):
            return auth_api.grant_subscription(
                session, user_id, plan=plan, seats=seats, period=timedelta(days=30)
            )


# --- rows, as the operator sees them ------------------------------------------------------


def rows(app, stmt) -> list:
    """The objects `stmt` selects, read as the operator in `app`."""
    from app.kernel.db import get_session
    from app.kernel.ownership import OPERATOR, acting_as

    with app.app_context(), acting_as(OPERATOR):
        return list(get_session().scalars(stmt))


def as_operator(app, fn):
    """`fn(session)` in one transaction, as the operator in `app` (what it returns)."""
    from app.kernel.db import get_session, transaction
    from app.kernel.ownership import OPERATOR, acting_as

    with app.app_context(), acting_as(OPERATOR):
        session = get_session()
        with transaction(session):
            return fn(session)


def audit(app, action: str | None = None) -> list:
    """The audit entries (of one action, when given), oldest first."""
    from sqlalchemy import select

    from app.admin.models import AuditLog

    stmt = select(AuditLog).order_by(AuditLog.log_id)
    if action:
        stmt = stmt.where(AuditLog.action == action)
    return rows(app, stmt)


def b64url(data: bytes) -> str:
    """Base64url without padding, as JWTs spell their parts."""
    import base64

    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def tampered(token: str) -> str:
    """The JWT with one character in the middle of its signature changed (never the last
    one: its low bits are padding, so changing it may leave the signature's bytes as is)."""
    header, payload, signature = token.split(".")
    i = len(signature) // 2
    swapped = "A" if signature[i] != "A" else "B"
    return f"{header}.{payload}.{signature[:i]}{swapped}{signature[i + 1 :]}"


def respellings(token: str) -> dict[str, str]:
    """Other spellings of the very same JWS bytes, which a lenient base64url decoder
    accepts: padding appended, and the signature's last character with its unused low
    bits set (the same bytes decoded)."""
    header, payload, signature = token.split(".")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    unused_bits = (len(signature) * 6) % 8  # 2 or 4 for a signature of 32 or 64 bytes
    last = alphabet.index(signature[-1])
    other_last = alphabet[last | ((1 << unused_bits) - 1)]
    assert unused_bits and other_last != signature[-1]
    spellings = {
        "padded signature": f"{token}=",
        "padded twice": f"{token}==",
        "padded header": f"{header}==.{payload}.{signature}",
        "signature's unused bits set": f"{header}.{payload}.{signature[:-1]}{other_last}",
        "a character outside the alphabet": f"{header}.{payload}.{signature[:5]}!{signature[5:]}",
        "standard alphabet": token.replace("-", "+").replace("_", "/"),
    }
    return {name: spelling for name, spelling in spellings.items() if spelling != token}


@contextlib.contextmanager
def sql_sent(*engines):
    """The SQL statements the `engines` send to their databases inside the block, in order
    (SQLAlchemy's before_cursor_execute), as a list filled while it runs."""
    from sqlalchemy import event

    sent: list[str] = []

    def record(_conn, _cursor, statement, *_args):
        sent.append(statement)

    for engine in engines:
        event.listen(engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        for engine in engines:
            event.remove(engine, "before_cursor_execute", record)


def soak_report(category: str, tried: object, held: object) -> None:
    """One line for `make soak`'s summary (scripts/soak.py), when SOAK_REPORT names a file."""
    import json

    target = os.environ.get("SOAK_REPORT")
    if target:
        with open(target, "a", encoding="utf-8") as out:
            out.write(json.dumps({"category": category, "tried": tried, "held": held}) + "\n")


def db_scalar(url: str, stmt) -> object:
    """One value read from the database at `url` (as the operator), on an engine of its own."""
    rows = db_rows(url, stmt)
    return rows[0][0] if rows else None


def db_rows(url: str, stmt) -> list:
    """The rows of `stmt` read from the database at `url` (as the operator)."""
    from app.kernel.engines import make_engine
    from app.kernel.ownership import OPERATOR, acting_as

    engine = make_engine(engine_settings(url, pool_size=1, max_overflow=0))
    try:
        with acting_as(OPERATOR), engine.connect() as conn:
            return list(conn.execute(stmt))
    finally:
        engine.dispose()


def layout_config(url: str | None) -> dict[str, bool]:
    """The DB_SCHEMAS setting an app on `url` needs in this test run."""
    return {"DB_SCHEMAS": PG_SCHEMAS and is_postgresql(url)}


FLASK = [str(BIN / "flask"), "--app", "wsgi"]


def run_flask(
    *args: str, env: dict[str, str], timeout: float = 120, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """`flask --app wsgi ARGS` in a child process, as an operator would run it."""
    return subprocess.run(
        [*FLASK, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input,
    )


def assert_problem(response, status: int, code: str | None = None) -> dict:
    """The Flask test response is an RFC 9457 problem with this status (and code)."""
    text = response.get_data(as_text=True)
    assert response.status_code == status, text
    assert response.mimetype == "application/problem+json", response.mimetype
    body = response.get_json(force=True)
    assert {"type", "title", "status", "detail", "code"} <= body.keys(), body
    assert body["status"] == status
    if code is not None:
        assert body["code"] == code, body
    assert "Traceback" not in text and 'File "' not in text
    return body


def limits_storage(request, memory_uri: str) -> str:
    """The rate-limit storage of a fixture parametrised "memory" / "redis": `memory_uri`, or
    this run's Redis emptied of the counts an earlier run left."""
    if request.param == "memory":
        return memory_uri
    import redis

    url = request.getfixturevalue("redis_url")
    client = redis.Redis.from_url(url)
    for key in client.scan_iter("*LIMITS*"):
        client.delete(key)
    client.close()
    return url


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TcpProxy:
    """A TCP forwarder we can cut and restore, to simulate a database outage for real.

    `stop()` closes the listener and every open connection (the app sees its connections
    die and new connects refused); `start()` listens again on the same port.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def stop(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        with self._lock:
            for conn in self._conns:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
                conn.close()
            self._conns.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._conns.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)


def wait_for_http(url: str, timeout: float = 20.0, proc: subprocess.Popen | None = None) -> None:
    """Poll `url` until it answers (any status) or fail after `timeout` seconds."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"server exited early with code {proc.returncode}")
        try:
            # 3 s: longer than an answer that takes a second (nginx's 504 in front of a mute
            # upstream with proxy_read_timeout 1s) on a loaded machine.
            urllib.request.urlopen(url, timeout=3).close()  # noqa: S310 - loopback test URL
            return
        except urllib.error.HTTPError:
            return
        except OSError as exc:
            last = exc
            time.sleep(0.1)
    raise AssertionError(f"{url} did not answer within {timeout}s: {last}")


def project_env(**overrides: str) -> dict[str, str]:
    """The environment for a child process: this one, minus app settings, plus overrides
    (and DB_SCHEMAS=on for a PostgreSQL database in the schema pass)."""
    app_settings = {"APP_ENV", "DATABASE_URL", "REDIS_URL", "DB_SCHEMAS", "TEST_DB_SCHEMAS"}
    env = {k: v for k, v in os.environ.items() if k not in app_settings}
    env.update(overrides)
    if "DB_SCHEMAS" not in overrides and layout_config(env.get("DATABASE_URL"))["DB_SCHEMAS"]:
        env["DB_SCHEMAS"] = "on"
    return env


@contextlib.contextmanager
def gunicorn_server(
    database_url: str,
    workers: int = 3,
    processes: list | None = None,
    output: list[str] | None = None,
    *,
    app: str = "wsgi:app",
    cwd: Path = ROOT,
    log_path: Path | None = None,
    **env: str,
):
    """A real gunicorn (deploy/gunicorn.conf.py) on a free port; yields its base URL.
    The gunicorn master's Popen is appended to `processes` when given, and what it printed
    (a file, never a pipe nobody reads) to `output` when it has stopped. `app` is the WSGI
    app to serve, from `cwd` (another checkout, say); `log_path` keeps what it printed in
    that file instead of a temporary one (the benchmark reads it while the server runs)."""
    import tempfile

    port = free_port()
    settings = {
        "APP_ENV": "testing",
        "DATABASE_URL": database_url,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "WEB_CONCURRENCY": str(workers),
        "ARGON2_TIME_COST": "1",
        "ARGON2_MEMORY_COST": "1024",
        "LOG_LEVEL": "WARNING",
        "RATELIMIT_ENABLED": "false",
    }
    settings.update(env)
    with open(log_path, "w+b") if log_path else tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            [BIN / "gunicorn", "-c", "deploy/gunicorn.conf.py", app],
            cwd=cwd,
            env=project_env(**settings),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        base = f"http://127.0.0.1:{port}"
        if processes is not None:
            processes.append(proc)
        try:
            wait_for_http(base + "/healthz", timeout=30, proc=proc)
            yield base
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 15)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait()
            if output is not None:
                log.seek(0)
                output.append(log.read().decode(errors="replace"))


def http(method: str, url: str, body: object = None, headers: dict[str, str] | None = None):
    """One real HTTP request; returns (status, parsed JSON body or None, headers)."""
    import json
    import urllib.error
    import urllib.request

    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)  # noqa: S310 - loopback
    request.add_header("Content-Type", "application/json")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            raw = response.read()
            return response.status, (json.loads(raw) if raw else None), dict(response.headers)
    except urllib.error.HTTPError as err:
        raw = err.read()
        return err.code, (json.loads(raw) if raw else None), dict(err.headers)


class RedisServer:
    """A private redis-server on a free port, so it can really be killed and restarted."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise AssertionError("redis-server is not installed")
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        import redis

        client = redis.Redis(port=self.port)
        for _ in range(100):
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise AssertionError("private redis-server did not start")

    def kill(self) -> None:
        """SIGKILL: no shutdown, no save — and it saves nothing anyway."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def restart(self) -> None:
        """Kill it and start a new, empty one on the same port."""
        self.kill()
        self.start()


def nginx_binary() -> str | None:
    return shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )


def nginx_config(upstream: str, port: int, folder: Path, settings: dict[str, str] | None = None):
    """deploy/nginx.conf as a test runs it: its own port, upstream, pid, logs and temp
    folders, and `settings` ({directive: value}) replacing the sample's values."""
    conf = (ROOT / "deploy" / "nginx.conf").read_text()
    for old, new in {
        "listen 80;": f"listen 127.0.0.1:{port};",
        "server 127.0.0.1:8000;": f"server {upstream};",
        "pid /run/nginx-licensing.pid;": f"pid {folder}/nginx.pid;",
        "/var/log/nginx/licensing-error.log": f"{folder}/error.log",
        "/var/log/nginx/licensing-access.log": f"{folder}/access.log",
        "http {": f"http {{\n    client_body_temp_path {folder}/body;\n    proxy_temp_path {folder}/proxy;",
    }.items():
        assert old in conf, old
        conf = conf.replace(old, new)
    for directive, value in (settings or {}).items():
        conf, n = re.subn(
            rf"^(\s*){re.escape(directive)}\s[^;]*;",
            rf"\g<1>{directive} {value};",
            conf,
            flags=re.M,
        )
        assert n == 1, f"{directive} appears {n} times in deploy/nginx.conf"
    return conf


@contextlib.contextmanager
def nginx_in_front_of(upstream: str, tmp_path: Path, settings: dict[str, str] | None = None):
    """A real nginx running deploy/nginx.conf in front of `upstream` (host:port); yields
    its port. `settings` overrides directives (e.g. shorter timeouts for a test)."""
    binary = nginx_binary()
    if binary is None:
        from tests.conftest import service_unavailable

        service_unavailable("nginx", "not installed")
    port = free_port()
    (tmp_path / "nginx.conf").write_text(nginx_config(upstream, port, tmp_path, settings))
    subprocess.run(
        [binary, "-t", "-c", str(tmp_path / "nginx.conf")], check=True, capture_output=True
    )
    with open(tmp_path / "nginx.stderr", "w") as stderr:
        proc = subprocess.Popen(
            [binary, "-c", str(tmp_path / "nginx.conf"), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/healthz", timeout=10, proc=proc)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def nginx_call(port: int, method: str, path: str, body=None, headers=None, source="127.0.0.1"):
    """One request to a local server; returns (status, raw body, headers)."""
    conn = HTTPConnection("127.0.0.1", port, timeout=10, source_address=(source, 0))
    payload = json.dumps(body).encode() if isinstance(body, dict) else body
    conn.request(
        method, path, body=payload, headers={"Content-Type": "application/json", **(headers or {})}
    )
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, data, dict(response.getheaders())
