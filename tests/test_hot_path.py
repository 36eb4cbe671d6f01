"""The license-validation hot path after its optimisations (bench/README.md): it still
reads the current row every time and answers exactly as before."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import jwt as pyjwt
import pytest
from sqlalchemy import update

from app.auth.licensing import service as licensing
from app.auth.licensing import signing
from app.auth.licensing.signing import KeySet, generate_key_file
from app.auth.models import License
from app.kernel.db import get_database, get_session, transaction
from app.kernel.ownership import OPERATOR, acting_as
from tests.test_licenses import account, activate


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_validation_lookup_reads_the_current_row_every_time(app, client):
    """In ONE session and read transaction (READ COMMITTED: each statement sees what is
    committed), a change committed elsewhere is seen by the next look-up — which an ORM
    `Session.get` answering from its identity map would not. (SQLite keeps the snapshot
    of an open read transaction, so only PostgreSQL can tell the two apart.)"""
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
        again = licensing.license_for_validation(session, lic["license_id"])
        assert (again.status, again.version) == ("suspended", 2)
        assert licensing.license_for_validation(session, "lic_unknown") is None


def _keys(tmp_path, name="k.pem") -> KeySet:
    generate_key_file(tmp_path / name)
    return KeySet.from_files([str(tmp_path / name)])


def _token(keys: KeySet, license_id: str = "lic_1") -> str:
    now = datetime.now(UTC)
    return keys.sign(
        license_id=license_id,
        user_id="usr_1",
        client_id="c1",
        expires_at=now + timedelta(days=1),
        issued_at=now,
        version=1,
    )


def _verifications(keys: KeySet) -> list[str]:
    """The tokens `keys` really verifies (signature and claims) from now on: the misses."""
    verified: list[str] = []
    verify = keys._verify

    def counted(token: str):
        verified.append(token)
        return verify(token)

    keys._verify = counted  # type: ignore[method-assign]
    return verified


def test_verified_tokens_are_remembered_but_never_forged_ones(tmp_path):
    keys = _keys(tmp_path)
    token = _token(keys)
    misses = _verifications(keys)

    first = keys.verify(token)
    first["license_id"] = "tampered"  # a caller's change does not leak into the cache
    assert keys.verify(token) == {**first, "license_id": "lic_1"}
    assert misses == [token]  # the second was answered from the cache

    # A changed payload with the old signature, or another key's token: verified (and
    # refused) every time, never answered from the cache.
    header, _payload, signature = token.split(".")
    other = _token(keys, "lic_2").split(".")[1]
    for bad in (f"{header}.{other}.{signature}", _token(_keys(tmp_path, "other.pem"))):
        for _ in range(2):
            with pytest.raises(pyjwt.InvalidTokenError):
                keys.verify(bad)
    assert len(misses) == 5
    assert len(keys._verified) == 1


def test_the_verified_cache_is_bounded_and_keeps_the_recently_used(tmp_path):
    keys = KeySet(_keys(tmp_path).keys, verified_cache_size=3)
    tokens = [_token(keys, f"lic_{i}") for i in range(4)]
    misses = _verifications(keys)
    for token in tokens[:3]:
        keys.verify(token)
    keys.verify(tokens[0])  # used again: now the most recent
    keys.verify(tokens[3])  # a fourth: the least recently used (lic_1) goes
    assert (len(keys._verified), len(misses)) == (3, 4)
    assert keys.verify(tokens[0])["license_id"] == "lic_0"  # kept: a hit
    assert keys.verify(tokens[1])["license_id"] == "lic_1"  # evicted: verified again
    assert misses == [*tokens[:3], tokens[3], tokens[1]]


def test_a_verified_cache_of_size_zero_keeps_nothing(tmp_path):
    keys = KeySet(_keys(tmp_path).keys, verified_cache_size=0)
    token = _token(keys)
    misses = _verifications(keys)
    assert keys.verify(token)["license_id"] == keys.verify(token)["license_id"] == "lic_1"
    assert (len(keys._verified), misses) == (0, [token, token])


def test_the_verified_cache_reports_its_fill_and_its_memory(tmp_path):
    """/metrics shows each worker's cache: entries up to the bound, and the memory they hold
    (what the benchmark's memory check subtracts from a worker's growth): close to what
    the entries really take, and back down when they are evicted."""
    import tracemalloc

    from app.kernel import metrics

    keys = KeySet(_keys(tmp_path).keys, verified_cache_size=300)
    tokens = [_token(keys, f"lic_{i:05d}") for i in range(1300)]
    keys.verify(tokens[0])
    start_bytes = metrics.LICENSE_TOKEN_CACHE_BYTES._value.get()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for token in tokens[1:300]:
        keys.verify(token)
    taken = sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(before, "filename"))
    tracemalloc.stop()
    reported = metrics.LICENSE_TOKEN_CACHE_BYTES._value.get() - start_bytes
    assert metrics.LICENSE_TOKEN_CACHE_ENTRIES._value.get() == 300
    assert 0.7 * taken <= reported <= 1.3 * taken, (reported, taken)
    full = metrics.LICENSE_TOKEN_CACHE_BYTES._value.get()
    for token in tokens[300:]:  # 1,000 more: as many evicted; the table's slack stays bounded
        keys.verify(token)
    assert metrics.LICENSE_TOKEN_CACHE_ENTRIES._value.get() == 300
    assert full * 0.95 < metrics.LICENSE_TOKEN_CACHE_BYTES._value.get() < full * 1.25
    assert keys._verified_bytes == sum(
        signing._entry_bytes(digest, known) for digest, known in keys._verified.items()
    )
