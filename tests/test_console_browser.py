"""The web console as a person uses it: Debian's Chromium, driven by Playwright, against a
real gunicorn on SQLite and on PostgreSQL (issue 18's scenarios). The SQLite run takes a
screenshot of every page: into the test's temporary folder, or into docs/screenshots/ (shown in
the README) with `make screenshots`, which sets SCREENSHOTS_DIR — a test run leaves the tree as
it found it.

Playwright's own browser download is not used: the browser is the system's `chromium`
(`.ci/run` installs it). Without it the tests skip, or fail under REQUIRE_SERVICES=1.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from tests.conftest import service_unavailable
from tests.helpers import gunicorn_server, http, project_env, run_flask

pytestmark = pytest.mark.slow

PASSWORD = "correct horse battery"


@pytest.fixture(scope="session")
def browser_type_launch_args() -> dict[str, object]:
    """pytest-playwright launches Debian's Chromium, never a downloaded one."""
    executable = shutil.which("chromium")
    if executable is None:
        service_unavailable("Chromium", "no `chromium` on PATH (apt-get install chromium)")
    return {"executable_path": executable}


@pytest.fixture
def server(database_url: str, signing_key_file: str, tmp_path: Path):
    env = {
        "LICENSE_SIGNING_KEYS": signing_key_file,
        "SANDBOX_LEDGER": str(tmp_path / "ledger.jsonl"),
        "BACKUP_DIR": str(tmp_path / "backups"),
    }
    result = run_flask(
        "users",
        "create-admin",
        "root@example.com",
        "--password-stdin",
        env=project_env(DATABASE_URL=database_url, ARGON2_TIME_COST="1", ARGON2_MEMORY_COST="1024"),
        input=PASSWORD + "\n",
    )
    assert result.returncode == 0, result.stderr
    with gunicorn_server(database_url, workers=2, **env) as base:
        yield base


class Shots:
    """Screenshots of every page, from the SQLite run only (one set for the README)."""

    def __init__(self, backend: str, folder: Path) -> None:
        self.enabled = backend == "sqlite"
        self.folder = Path(os.environ.get("SCREENSHOTS_DIR") or folder)
        if self.enabled:
            self.folder.mkdir(parents=True, exist_ok=True)

    def __call__(self, page, name: str) -> None:
        if self.enabled:
            page.screenshot(path=str(self.folder / f"{name}.png"), full_page=True)
            assert (self.folder / f"{name}.png").stat().st_size > 0


def validate(base: str, token: str, client_id: str) -> str:
    status, body, _ = http(
        "POST", base + "/api/v1/licenses/validate", {"token": token, "client_id": client_id}
    )
    assert status == 200, body
    return body["code"]


def activate(base: str, email: str, client_id: str) -> dict:
    status, body, _ = http(
        "POST",
        base + "/api/v1/licenses/activate",
        {"email": email, "password": PASSWORD, "client_id": client_id},
    )
    assert status == 201, body
    return body


def sign_in_by_keyboard(page, base: str, email: str) -> None:
    """Sign in without the mouse: the email field has focus, Tab to the password, Enter."""
    page.goto(base + "/account/sign-in")
    assert page.evaluate("document.activeElement.id") == "email"
    page.keyboard.type(email)
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "password"
    page.keyboard.type(PASSWORD)
    page.keyboard.press("Enter")


def customer_registers_signs_in_and_buys(customer, page, base: str, shot: Shots) -> None:
    # A customer registers, and signs in with the keyboard alone.
    page.goto(base + "/account/register")
    shot(page, "register")
    page.get_by_label("Email").fill("ada@example.com")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Register").click()
    page.wait_for_url(base + "/account/sign-in")
    assert page.get_by_role("status").inner_text() == "Your account is ready: sign in."
    shot(page, "sign-in")
    sign_in_by_keyboard(page, base, "ada@example.com")
    page.wait_for_url(base + "/account/")
    assert page.get_by_role("heading", level=1).inner_text() == "My licenses"

    # The cookie: HttpOnly, SameSite=Lax, for the whole site, and the API takes none.
    (cookie,) = customer.cookies()
    assert cookie["name"] == "console" and cookie["httpOnly"] and cookie["sameSite"] == "Lax"
    assert cookie["path"] == "/"
    assert page.evaluate("document.cookie") == ""
    api = page.request.get(base + "/api/v1/auth/me")
    assert api.status == 401

    # It buys a plan; the rendered form names the purchase once.
    page.get_by_role("link", name="Plans").click()
    page.wait_for_url(base + "/account/plans")
    shot(page, "plans")
    page.get_by_label("Plan").select_option("pro")
    page.get_by_label("Seats").fill("3")
    page.get_by_label("Payment token").fill("tok_ok")
    page.get_by_role("button", name="Buy").click()
    page.wait_for_url(base + "/account/orders")
    assert "pro with 3 seats is yours" in page.get_by_role("status").inner_text()
    shot(page, "orders")


def customer_manages_licenses(page, base: str, shot: Shots) -> dict:
    """Two licenses by the API, one deactivated in the portal: the other one (its body)."""
    # Two licenses activated through the API show in the portal; one is deactivated.
    first = activate(base, "ada@example.com", "laptop-7f3a")
    second = activate(base, "ada@example.com", "desktop-91bc")
    page.get_by_role("link", name="My licenses").click()
    page.wait_for_url(base + "/account/")
    assert "2 of 3" in page.inner_text("main")
    shot(page, "dashboard")
    row = page.get_by_role("row").filter(has_text="laptop-7f3a")
    row.get_by_role("button", name="Deactivate").click()
    page.get_by_role("status").filter(has_text="laptop-7f3a is deactivated").wait_for()
    assert "1 of 3" in page.inner_text("main")
    assert validate(base, first["token"], "laptop-7f3a") == "REVOKED"
    assert validate(base, second["token"], "desktop-91bc") == "VALID"

    # Its token, to copy.
    row = page.get_by_role("row").filter(has_text="desktop-91bc")
    row.get_by_role("link", name="Copy").click()
    page.wait_for_url(re.compile(r"/token\?view=1$"))
    token = page.get_by_label("Token").input_value()
    assert validate(base, token, "desktop-91bc") == "VALID"
    shot(page, "license-token")

    # A form posted without its CSRF token changes nothing.
    refused = page.request.post(
        base + "/account/licenses/" + second["license_id"] + "/deactivate", form={}
    )
    assert refused.status == 400
    assert validate(base, second["token"], "desktop-91bc") == "VALID"

    # Not an admin: the console is a 403 page.
    page.goto(base + "/console/")
    assert page.get_by_role("heading", level=1).inner_text() == "Admins only"
    shot(page, "forbidden")
    return second


def admin_suspends_resolves_a_conflict_and_audits(browser, base: str, shot: Shots, second: dict):
    """An admin suspends the customer's `second` license, meets a stale page, applies a
    batch, and reads the audit log and the operations page."""
    # An admin finds the customer by email and suspends a license.
    admin = browser.new_context()
    console = admin.new_page()
    console.goto(base + "/console/")
    console.wait_for_url(re.compile(r"/account/sign-in\?next="))
    console.get_by_label("Email").fill("root@example.com")
    console.get_by_label("Password").fill(PASSWORD)
    console.get_by_role("button", name="Sign in").click()
    console.wait_for_url(base + "/console/")
    assert console.get_by_role("img", name="Users per plan").is_visible()
    shot(console, "console-overview")
    console.get_by_role("link", name="Users").click()
    console.wait_for_url(base + "/console/users")
    console.get_by_label("Email").fill("ada@")
    console.get_by_role("button", name="Search").click()
    console.wait_for_url(re.compile(r"/console/users\?email=ada%40"))
    console.get_by_role("link", name="ada@example.com").click()
    console.wait_for_url(re.compile(r"/console/users/usr_"))
    shot(console, "console-user")
    row = console.get_by_role("row").filter(has_text="desktop-91bc")
    row.get_by_role("button", name="Suspend").click()
    console.get_by_role("status").filter(has_text="desktop-91bc is now suspended").wait_for()
    assert validate(base, second["token"], "desktop-91bc") == "SUSPENDED"

    # A stale page: another tab reactivates it meanwhile; this one's Revoke is refused.
    stale = console
    fresh = admin.new_page()
    fresh.goto(stale.url)
    fresh.get_by_role("row").filter(has_text="desktop-91bc").get_by_role(
        "button", name="Reactivate"
    ).click()
    fresh.get_by_role("status").filter(has_text="now active").wait_for()
    stale.get_by_role("row").filter(has_text="desktop-91bc").get_by_role(
        "button", name="Revoke"
    ).click()
    alert = stale.get_by_role("alert")
    alert.wait_for()
    assert "Nothing was changed" in alert.inner_text()
    assert "now active (version 3)" in alert.inner_text()
    shot(stale, "console-conflict")
    assert validate(base, second["token"], "desktop-91bc") == "VALID"

    # A batch over the selected licenses (from the page as it is now).
    stale.reload()
    stale.get_by_label("Select desktop-91bc").check()
    stale.get_by_label("Action for the selected licenses").select_option("Suspend")
    stale.get_by_role("button", name="Apply to selected").click()
    stale.get_by_role("status").filter(has_text="1 license(s) are now suspended").wait_for()
    assert validate(base, second["token"], "desktop-91bc") == "SUSPENDED"

    # The audit log, filtered, and the operations page.
    stale.get_by_role("link", name="Audit log").click()
    stale.wait_for_url(base + "/console/audit")
    stale.get_by_label("Action", exact=True).fill("LICENSE_STATUS_CHANGED")
    stale.get_by_role("button", name="Filter").click()
    stale.wait_for_url(re.compile(r"action=LICENSE_STATUS_CHANGED"))
    assert stale.get_by_role("cell", name="LICENSE_STATUS_CHANGED").count() == 3
    shot(stale, "console-audit")
    stale.get_by_role("link", name="Operations").click()
    stale.wait_for_url(base + "/console/operations")
    assert stale.get_by_role("cell", name="database").is_visible()
    shot(stale, "console-operations")
    admin.close()


def customer_changes_password_and_signs_out(page, base: str, shot: Shots) -> None:
    # The customer changes the password: this browser stays, the API's old tokens end.
    status, pair, _ = http(
        "POST",
        base + "/api/v1/auth/login",
        {"email": "ada@example.com", "password": PASSWORD},
    )
    assert status == 200
    page.goto(base + "/account/")
    page.get_by_role("link", name="Change password").click()
    page.wait_for_url(base + "/account/password")
    shot(page, "password")
    page.get_by_label("Current password").fill(PASSWORD)
    page.get_by_label("New password").fill("staple battery horse")
    page.get_by_role("button", name="Change password").click()
    page.wait_for_url(base + "/account/")
    assert "every other session is signed out" in page.get_by_role("status").inner_text()
    me = http(
        "GET", base + "/api/v1/auth/me", headers={"Authorization": "Bearer " + pair["access_token"]}
    )
    assert me[0] == 401

    # Signing out ends the session: the cookie no longer opens the portal.
    page.goto(base + "/account/")
    page.get_by_role("button", name="Sign out", exact=True).click()
    page.wait_for_url(base + "/account/sign-in")
    page.goto(base + "/account/")
    page.wait_for_url(re.compile(r"/account/sign-in\?next="))


def test_a_customer_and_an_admin_in_a_real_browser(server, browser, backend, tmp_path):
    base = server
    shot = Shots(backend, tmp_path / "screenshots")
    customer = browser.new_context()
    page = customer.new_page()
    errors: list[str] = []
    page.on(
        "console",
        lambda m: errors.append(f"{m.text} @ {m.location}") if m.type == "error" else None,
    )
    customer_registers_signs_in_and_buys(customer, page, base, shot)
    second = customer_manages_licenses(page, base, shot)
    admin_suspends_resolves_a_conflict_and_audits(browser, base, shot, second)
    customer_changes_password_and_signs_out(page, base, shot)
    assert not [e for e in errors if "Content Security Policy" in e], errors
    customer.close()
