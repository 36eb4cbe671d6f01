"""The license-validation hot path after its optimisations (bench/README.md): it still
reads the current row every time and answers exactly as before."""

from __future__ import annotations

from sqlalchemy import update

from app.auth import licensing
from app.auth.models import License
from app.kernel.db import get_database, get_session, transaction
from app.kernel.ownership import OPERATOR, acting_as
from tests.test_licenses import account, activate


def test_validation_lookup_reads_the_current_row_every_time(app, client):
    lic = activate(client, account(client)).get_json()
    with app.app_context(), acting_as("auth"):
        session = get_session()
        first = licensing.license_for_validation(session, lic["license_id"])
        assert (first.status, first.version, first.client_id) == ("active", 1, "laptop-1")
        assert first.expires_at.tzinfo is not None  # aware UTC, as the ORM gives it
        # Changed by someone else (another session, committed) while this one is open:
        other = get_database().sessions()
        with acting_as(OPERATOR), transaction(other):
            other.execute(
                update(License)
                .where(License.license_id == lic["license_id"])
                .values(status="suspended", version=2)
            )
        other.close()
        session.rollback()  # a request's read transaction ends; the next one starts fresh
        again = licensing.license_for_validation(session, lic["license_id"])
        assert (again.status, again.version) == ("suspended", 2)
        assert licensing.license_for_validation(session, "lic_unknown") is None
