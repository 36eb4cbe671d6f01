"""License tokens are verified without PyJWT's decode (signing.KeySet._verify, issue 17):
every token PyJWT's decode refuses is refused, every one it accepts gives the same claims.

`reference` is the verification as PyJWT did it before (header, then decode with our key,
algorithm, issuer and required claims): the two are run over well-formed tokens and over
hostile ones an attacker can write (any header and payload, any signature) or that only
our key could sign (wrong issuer, missing claims).
"""

from __future__ import annotations

import base64
import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt as pyjwt
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from app.auth.licensing.signing import (
    ALGORITHM,
    ISSUER,
    VERDICT_TYP,
    KeySet,
    SigningKey,
)
from tests.helpers import respellings, tampered

# Fixed keys and time: the tokens, and so the cases (a re-spelling exists only for some
# tokens), are the same in every test process.
KEYS = KeySet(
    [SigningKey.from_private(Ed25519PrivateKey.from_private_bytes(bytes(range(32))))],
    verified_cache_size=0,
)
OTHER = SigningKey.from_private(Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33))))
NOW = datetime(2026, 12, 1, tzinfo=UTC)
CLAIMS = {
    "iss": ISSUER,
    "sub": "lic_1",
    "license_id": "lic_1",
    "user_id": "usr_1",
    "client_id": "c1",
    "iat": int(NOW.timestamp()),
    "exp": int((NOW + timedelta(days=1)).timestamp()),
    "ver": 1,
}
NO_TIME = {"verify_exp": False, "verify_iat": False, "verify_nbf": False}


def reference(token: str) -> dict[str, Any]:
    """The verification as PyJWT's decode made it."""
    header = pyjwt.get_unverified_header(token)
    key = KEYS.by_kid.get(header.get("kid", ""))
    if key is None or header.get("alg") != ALGORITHM:
        raise pyjwt.InvalidTokenError("unknown key or algorithm")
    if header.get("typ") == VERDICT_TYP:
        raise pyjwt.InvalidTokenError("a verdict")
    return pyjwt.decode(
        token,
        key.public,
        algorithms=[ALGORITHM],
        issuer=ISSUER,
        options={"verify_exp": False, "require": ["license_id", "user_id", "client_id", "exp"]},
    )


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _json(value: Any) -> str:
    return _b64(json.dumps(value).encode())


def _signed(claims: Any, key: SigningKey | None = None, **header: Any) -> str:
    """A token signed with our key (or `key`), with any payload and header fields."""
    key = key or KEYS.signing
    fields = {"alg": ALGORITHM, "typ": "JWT", "kid": key.kid, **header}
    fields = {name: value for name, value in fields.items() if value is not None}
    body = json.dumps(claims).encode() if not isinstance(claims, bytes) else claims
    signing_input = f"{_json(fields)}.{_b64(body)}"
    return f"{signing_input}.{_b64(key.private.sign(signing_input.encode()))}"


GOOD = KEYS.sign(
    license_id="lic_1",
    user_id="usr_1",
    client_id="c1",
    expires_at=NOW + timedelta(days=1),
    issued_at=NOW,
    version=1,
)
HEADER, PAYLOAD, SIGNATURE = GOOD.split(".")
X = KEYS.signing.jwk()["x"]

ACCEPTED = {
    "as signed": GOOD,
    "extra claims": _signed({**CLAIMS, "role": "admin", "seats": 10**6}),
    "no typ": _signed(CLAIMS, typ=None),
}
REFUSED = {
    "alg none": f"{_json({'alg': 'none', 'typ': 'JWT'})}.{PAYLOAD}.",
    "alg none with our kid": f"{_json({'alg': 'none', 'kid': KEYS.signing.kid})}.{PAYLOAD}.",
    "HS256 keyed with the published x": pyjwt.encode(
        CLAIMS, X, algorithm="HS256", headers={"kid": KEYS.signing.kid}
    ),
    "another key, our kid": _signed(CLAIMS, OTHER, kid=KEYS.signing.kid),
    "another key, its kid": _signed(CLAIMS, OTHER),
    "no kid": _signed(CLAIMS, kid=None),
    "kid a list": _signed(CLAIMS, kid=[KEYS.signing.kid]),
    "kid a number": _signed(CLAIMS, kid=7),
    "alg a list": _signed(CLAIMS, alg=[ALGORITHM]),
    "a verdict's typ": _signed(CLAIMS, typ=VERDICT_TYP),
    "tampered signature": tampered(GOOD),
    "tampered payload": f"{HEADER}.{_json({**CLAIMS, 'user_id': 'usr_2'})}.{SIGNATURE}",
    "signature cut short": f"{HEADER}.{PAYLOAD}.{SIGNATURE[:-4]}",
    "signature empty": f"{HEADER}.{PAYLOAD}.",
    "signature of zeros": f"{HEADER}.{PAYLOAD}.{_b64(bytes(64))}",
    "header not JSON": f"{_b64(b'{not json')}.{PAYLOAD}.{SIGNATURE}",
    "header not UTF-8": f"{_b64(bytes([0xFF, 0xFE]))}.{PAYLOAD}.{SIGNATURE}",
    "header a list": f"{_json([ALGORITHM])}.{PAYLOAD}.{SIGNATURE}",
    "payload a list, signed": _signed([CLAIMS]),
    "payload not JSON, signed": _signed(b"{not json"),
    "payload a string, signed": _signed("lic_1"),
    "wrong issuer, signed": _signed({**CLAIMS, "iss": "someone-else"}),
    "no issuer, signed": _signed({k: v for k, v in CLAIMS.items() if k != "iss"}),
    **{
        f"no {name}, signed": _signed({k: v for k, v in CLAIMS.items() if k != name})
        for name in ("license_id", "user_id", "client_id", "exp")
    },
    "issued in the future, signed": _signed({**CLAIMS, "iat": int(time.time()) + 3600}),
    "iat not a number, signed": _signed({**CLAIMS, "iat": "yesterday"}),
    "not before in the future, signed": _signed({**CLAIMS, "nbf": int(time.time()) + 3600}),
    "not before not a number, signed": _signed({**CLAIMS, "nbf": "tomorrow"}),
    "an audience, signed": _signed({**CLAIMS, "aud": "another-service"}),
    "sub not a string, signed": _signed({**CLAIMS, "sub": 7}),
    "jti not a string, signed": _signed({**CLAIMS, "jti": ["a"]}),
    "issuer not a string, signed": _signed({**CLAIMS, "iss": [ISSUER]}),
    "unencoded payload (b64 false), signed": _signed(CLAIMS, b64=False),
    "header nested 2,000 deep": f"{_b64(b'[' * 2000 + b']' * 2000)}.{PAYLOAD}.{SIGNATURE}",
    "payload nested 2,000 deep, signed": _signed(b"[" * 2000 + b"]" * 2000),
    "two parts": f"{HEADER}.{PAYLOAD}",
    "four parts": f"{GOOD}.{SIGNATURE}",
    "empty": "",
    **respellings(GOOD),
}


@pytest.mark.parametrize("name", ACCEPTED)
def test_what_pyjwt_accepted_gives_the_same_claims(name):
    token = ACCEPTED[name]
    assert KEYS._verify(token) == reference(token)


@pytest.mark.parametrize("name", REFUSED)
def test_what_pyjwt_refused_is_refused(name):
    token = REFUSED[name]
    with pytest.raises(pyjwt.InvalidTokenError):
        KEYS._verify(token)
    if name not in respellings(GOOD):  # PyJWT accepts those (the reason they are checked)
        with pytest.raises(pyjwt.InvalidTokenError):
            reference(token)


def test_critical_header_parameters_are_refused():
    """RFC 7515's `crit` names extensions the verifier must understand: we sign with none."""
    with pytest.raises(pyjwt.InvalidTokenError):
        KEYS._verify(_signed(CLAIMS, crit=["b64"], b64=False))


# --- libsodium signs and verifies (SigningKey.sign_bytes, verifies, compact_jws) ---------
# The key is loaded and published with `cryptography`, and signs and verifies through
# libsodium (PyNaCl), which is twice as fast. Ed25519 is deterministic, so the two must
# write the very same signatures and tokens, and agree on every signature they check.

GROUP_ORDER = 2**252 + 27742317777372353535851937790883648493  # Ed25519's L
MESSAGE = f"{HEADER}.{PAYLOAD}".encode()
SIG = KEYS.signing.sign_bytes(MESSAGE)


def openssl_verifies(key: SigningKey, signature: bytes, message: bytes) -> bool:
    try:
        key.public.verify(signature, message)
    except InvalidSignature:
        return False
    return True


@settings(max_examples=200, deadline=None)
@given(message=st.binary(max_size=600))
def test_libsodium_signs_as_openssl_signs(message):
    assert KEYS.signing.sign_bytes(message) == KEYS.signing.private.sign(message)


@settings(max_examples=200, deadline=None)
@given(
    ids=st.tuples(st.text(max_size=40), st.text(max_size=40), st.text(max_size=80)),
    times=st.tuples(st.integers(0, 2**40), st.integers(0, 2**40)),
    version=st.integers(0, 2**31),
    nonce=st.none() | st.text(max_size=64),
    typ=st.sampled_from(["JWT", VERDICT_TYP]),
)
def test_tokens_are_written_byte_for_byte_as_pyjwt_writes_them(ids, times, version, nonce, typ):
    """Any license id, user id, client id (non-ASCII too: JSON's escapes) and numbers."""
    license_id, user_id, client_id = ids
    claims = {
        "iss": ISSUER,
        "sub": license_id,
        "license_id": license_id,
        "user_id": user_id,
        "client_id": client_id,
        "nonce": nonce,
        "iat": times[0],
        "exp": times[1],
        "ver": version,
    }
    key = KEYS.signing
    ours = key.compact_jws(claims, typ)
    assert ours == pyjwt.encode(
        claims, key.private, algorithm=ALGORITHM, headers={"kid": key.kid, "typ": typ}
    )
    assert pyjwt.decode(ours, key.public, algorithms=[ALGORITHM], options=NO_TIME) == claims


def test_keyset_tokens_and_verdicts_are_pyjwts():
    """What KeySet signs, PyJWT (every app's library) reads with the published key."""
    verdict = KEYS.sign_verdict(
        code="VALID", license_id="lic_1", client_id="c1", nonce="n", issued_at=NOW, ttl_seconds=60
    )
    assert pyjwt.get_unverified_header(verdict) == {
        "alg": ALGORITHM,
        "kid": KEYS.signing.kid,
        "typ": VERDICT_TYP,
    }
    assert (
        pyjwt.decode(verdict, KEYS.signing.public, algorithms=[ALGORITHM], options=NO_TIME)["code"]
        == "VALID"
    )
    assert pyjwt.get_unverified_header(GOOD) == {
        "alg": ALGORITHM,
        "kid": KEYS.signing.kid,
        "typ": "JWT",
    }
    assert reference(GOOD) == KEYS._verify(GOOD)


def _mutations() -> st.SearchStrategy[tuple[bytes, bytes]]:
    """(signature, message) pairs around a valid one, as an attacker would try them."""
    s = int.from_bytes(SIG[32:], "little")
    flips = st.integers(0, 64 * 8 - 1).map(
        lambda bit: (
            bytes(b ^ (1 << (bit % 8)) if i == bit // 8 else b for i, b in enumerate(SIG)),
            MESSAGE,
        )
    )
    message_flips = st.integers(0, len(MESSAGE) * 8 - 1).map(
        lambda bit: (
            SIG,
            bytes(b ^ (1 << (bit % 8)) if i == bit // 8 else b for i, b in enumerate(MESSAGE)),
        )
    )
    cut = st.integers(0, 64).map(lambda n: (SIG[:n], MESSAGE))
    # libsodium checks signature-then-message: a short signature with the message's first
    # bytes after it must not verify the rest of the message
    shifted = st.integers(1, 8).map(lambda n: (SIG[:-n], SIG[-n:] + MESSAGE))
    longer = st.binary(min_size=1, max_size=8).map(lambda extra: (SIG + extra, MESSAGE))
    return st.one_of(
        st.just((SIG, MESSAGE)),
        flips,
        message_flips,
        cut,
        shifted,
        longer,
        st.just((SIG[:32] + (s + GROUP_ORDER).to_bytes(32, "little"), MESSAGE)),  # S + L
        st.just((bytes(64), MESSAGE)),
        st.tuples(st.binary(min_size=64, max_size=64), st.just(MESSAGE)),
        st.tuples(st.binary(max_size=80), st.binary(max_size=80)),
    )


@settings(max_examples=400, deadline=None)
@given(pair=_mutations())
def test_libsodium_and_openssl_agree_on_every_signature(pair):
    signature, message = pair
    key = KEYS.signing
    assert key.verifies(signature, message) is openssl_verifies(key, signature, message)
    if (signature, message) != (SIG, MESSAGE):
        assert not key.verifies(signature, message)


def test_a_signature_of_another_length_is_refused_before_libsodium_sees_it():
    """libsodium reads the first 64 bytes of signature-then-message as the signature: a
    63-byte signature followed by its own last byte and the message is the valid pair
    moved by one byte, which must not pass for the message."""
    assert KEYS.signing.verifies(SIG, MESSAGE)
    assert not KEYS.signing.verifies(SIG[:-1], SIG[-1:] + MESSAGE)
    assert not KEYS.signing.verifies(SIG + MESSAGE[:1], MESSAGE[1:])


def test_a_key_pair_whose_halves_differ_is_refused():
    """libsodium signs with raw bytes derived from `private` and verifies with `public`'s:
    a SigningKey made of one key's private half and another's public half would sign what
    it cannot verify (and publish a kid for neither)."""
    from app.auth.licensing.signing import SigningKeyError

    mine, theirs = KEYS.signing, OTHER
    with pytest.raises(SigningKeyError, match="not the private key's"):
        SigningKey(mine.kid, mine.private, theirs.public)
    with pytest.raises(ValueError, match="typ"):
        mine.compact_jws(CLAIMS, typ="")
