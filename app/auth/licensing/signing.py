"""Ed25519 license tokens: JWTs that a client verifies offline against the JWKS document.

Keys come from `LICENSE_SIGNING_KEYS`: a comma-separated list of PEM files holding Ed25519
private keys. The first key signs; every key verifies, so a new key can be put first while
tokens signed by the old one stay valid until they expire. Each key's `kid` is its RFC 7638
JWK thumbprint, so it is stable and needs no registry. In development, when the setting is
empty, one key is generated under the instance folder on first use.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from nacl.bindings import crypto_sign, crypto_sign_open, crypto_sign_seed_keypair
from nacl.exceptions import BadSignatureError

from app.kernel import files, metrics
from app.kernel.jws import canonical_parts

log = logging.getLogger(__name__)

ALGORITHM = "EdDSA"
ISSUER = "licensing-platform"
# The JOSE `typ` of a signed validation verdict. License tokens never carry it and verdicts
# always do, so neither can be presented as the other.
VERDICT_TYP = "license-verdict+jwt"
VERDICT_TTL_SECONDS = 300  # a verdict is for the request that asked; apps check it at once
DEV_KEY_NAME = "license-signing-key.pem"
# What every license token carries (`sign`); expiry is the license row's business, not the
# token's, so `exp` is required but not checked.
REQUIRED_CLAIMS = ("iss", "license_id", "user_id", "client_id", "exp")


class SigningKeyError(RuntimeError):
    """A configured signing key cannot be used; the message says which and why."""


def _json_object(data: bytes, part: str) -> dict[str, Any]:
    """A token part's JSON object (jwt.DecodeError for anything else)."""
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):  # not UTF-8, not JSON, nested beyond the stack
        raise jwt.DecodeError(f"Invalid {part}: not JSON") from None
    if not isinstance(value, dict):
        raise jwt.DecodeError(f"Invalid {part}: not a JSON object")
    return value


def _checked_claims(claims: dict[str, Any]) -> dict[str, Any]:
    """A license token's claims, checked as PyJWT's decode checks them with our options
    (issuer, required claims, expiry not verified, no leeway): raises jwt.InvalidTokenError
    where it would."""
    missing = [name for name in REQUIRED_CLAIMS if name not in claims]
    if missing:
        raise jwt.MissingRequiredClaimError(missing[0])
    if claims["iss"] != ISSUER:
        raise jwt.InvalidIssuerError("Invalid issuer")
    if "aud" in claims:  # no audience is expected: a token for one is not ours
        raise jwt.InvalidAudienceError("Invalid audience")
    for name in ("sub", "jti"):
        if name in claims and not isinstance(claims[name], str):
            raise jwt.InvalidTokenError(f"{name} must be a string")
    now = time.time()
    for name in ("iat", "nbf"):  # numbers, and not ahead of this host's clock
        if name in claims:
            try:
                moment = int(claims[name])
            except (TypeError, ValueError, OverflowError):
                raise jwt.DecodeError(f"{name} must be a number") from None
            if moment > now:
                raise jwt.ImmatureSignatureError(f"The token is not yet valid ({name})")
    return claims


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


ED25519_SIGNATURE_BYTES = 64


@dataclass(frozen=True)
class SigningKey:
    """An Ed25519 key pair. `cryptography` loads and writes it (PEM); libsodium (PyNaCl)
    signs and verifies with it: the same signatures — Ed25519 is deterministic — in about
    half the time (verify 135 -> 73 us, sign 43 -> 30 us; bench/README.md, issue 17), paid
    on every validation and activation. The raw keys libsodium takes are derived from
    `private` and `public` (and checked against each other), never given."""

    kid: str
    private: Ed25519PrivateKey
    public: Ed25519PublicKey
    public_raw: bytes = field(init=False, repr=False)  # the 32-byte public key
    secret_raw: bytes = field(init=False, repr=False)  # libsodium's 64 bytes: seed, public
    # each `typ`'s header, encoded once (two in use)
    _headers: dict[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        raw = self.public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        seed = self.private.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        sodium_public, secret = crypto_sign_seed_keypair(seed)  # checks the seed's length
        if sodium_public != raw:  # one key pair, two libraries: they must agree on it
            raise SigningKeyError("the public key is not the private key's")
        object.__setattr__(self, "public_raw", raw)
        object.__setattr__(self, "secret_raw", secret)
        object.__setattr__(self, "_headers", {})

    @classmethod
    def from_private(cls, private: Ed25519PrivateKey) -> SigningKey:
        public = private.public_key()
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        # RFC 7638: SHA-256 over the required members, lexicographic order, no spaces.
        x = _b64(raw)
        thumbprint = json.dumps({"crv": "Ed25519", "kty": "OKP", "x": x}, separators=(",", ":"))
        kid = _b64(hashlib.sha256(thumbprint.encode()).digest())
        return cls(kid, private, public)

    def sign_bytes(self, message: bytes) -> bytes:
        """The Ed25519 signature of `message` (64 bytes)."""
        return crypto_sign(message, self.secret_raw)[:ED25519_SIGNATURE_BYTES]

    def verifies(self, signature: bytes, message: bytes) -> bool:
        """Whether `signature` is this key's Ed25519 signature of `message`. libsodium's
        check is at least as strict as OpenSSL's (S below the group order, and no
        small-order points); a signature of any other length than 64 bytes is refused
        first (libsodium takes its first 64 bytes of signature-then-message)."""
        if len(signature) != ED25519_SIGNATURE_BYTES:
            return False
        try:
            crypto_sign_open(signature + message, self.public_raw)
        except BadSignatureError:
            return False
        return True

    def compact_jws(self, claims: dict[str, Any], typ: str = "JWT") -> str:
        """`claims` signed as a compact JWS (a JWT), written exactly as
        `jwt.encode(claims, key, algorithm="EdDSA", headers={"kid": kid, "typ": typ})`
        writes it — the header's members sorted, the payload's in their order, both
        without spaces — without PyJWT's general path around the signature (a verdict:
        66 -> 40 us with libsodium's signature; bench/README.md, issue 17)."""
        if not typ:  # PyJWT would leave an empty `typ` out of the header
            raise ValueError("a JWS is written with a `typ`")
        header = self._headers.get(typ)
        if header is None:
            fields = {"alg": ALGORITHM, "kid": self.kid, "typ": typ}
            header = _b64(json.dumps(fields, separators=(",", ":"), sort_keys=True).encode())
            self._headers[typ] = header
        payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
        signing_input = f"{header}.{payload}"
        return f"{signing_input}.{_b64(self.sign_bytes(signing_input.encode()))}"

    def jwk(self) -> dict[str, str]:
        return {
            "kty": "OKP",
            "crv": "Ed25519",
            "x": _b64(self.public_raw),
            "kid": self.kid,
            "use": "sig",
            "alg": ALGORITHM,
        }


def load_key(path: str | os.PathLike[str]) -> SigningKey:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise SigningKeyError(f"cannot read license signing key {path}: {exc.strerror}") from None
    try:
        private = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise SigningKeyError(f"{path} is not an unencrypted PEM private key: {exc}") from None
    if not isinstance(private, Ed25519PrivateKey):
        raise SigningKeyError(f"{path} is not an Ed25519 key")
    return SigningKey.from_private(private)


def generate_key_file(path: str | os.PathLike[str]) -> None:
    """Write a new Ed25519 private key (mode 0600); never overwrites an existing file."""
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path = Path(path)
    files.private_dir(path.parent)  # missing folders 0700, like the key itself
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return  # another worker made it first; use theirs
    with os.fdopen(fd, "wb") as f:
        f.write(pem)


def _entry_bytes(digest: bytes, known: tuple[tuple[str, ...], tuple[Any, ...]]) -> int:
    """The memory an entry of the verified-token cache holds on its own: its digest, its
    values' tuple and each value it does not share with other entries (the claim names and
    the issuer are shared)."""
    _names, values = known
    own = {id(v): v for v in values if v is not ISSUER}
    return sys.getsizeof(digest) + sys.getsizeof(values) + sum(map(sys.getsizeof, own.values()))


def key_paths(setting: str | None) -> list[str]:
    return [p.strip() for p in (setting or "").split(",") if p.strip()]


class KeySet:
    """The signing key (first) and every verifying key, by kid."""

    def __init__(self, keys: list[SigningKey], verified_cache_size: int = 16_384) -> None:
        if not keys:
            raise SigningKeyError("no license signing keys configured")
        self.keys = keys
        self.by_kid = {k.kid: k for k in keys}
        # Apps validate the same token again and again (at every start, on a timer): a
        # token whose signature checked out once is remembered, so the next validation
        # skips the Ed25519 verification and the JWT parsing. Only successes are kept,
        # and a token's result cannot change while the keys don't (expiry is the license
        # row's business, not the token's). Bounded (least recently used out), per
        # process, and small: an entry is the token's digest and its claims' values (the
        # claim names shared), ~0.3 KiB instead of the token and its decoded dict's 1.2.
        self._verified: dict[bytes, tuple[tuple[str, ...], tuple[Any, ...]]] = {}
        self._verified_size = verified_cache_size
        self._verified_bytes = 0  # the entries' objects (`_entry_bytes`), the table apart
        self._claim_names: dict[tuple[str, ...], tuple[str, ...]] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_files(cls, paths: list[str]) -> KeySet:
        return cls([load_key(p) for p in paths])

    @property
    def signing(self) -> SigningKey:
        return self.keys[0]

    def sign(
        self,
        *,
        license_id: str,
        user_id: str,
        client_id: str,
        expires_at: datetime,
        issued_at: datetime,
        version: int,
    ) -> str:
        """A token for the license as it is now. `exp` is `expires_at` rounded down, so it
        never exceeds the license's expiry; `ver` is the license's version, so `validate`
        can tell a token signed before the terms changed (ADR 0007)."""
        claims = {
            "iss": ISSUER,
            "sub": license_id,
            "license_id": license_id,
            "user_id": user_id,
            "client_id": client_id,
            "iat": int(issued_at.timestamp()),
            "exp": int(expires_at.timestamp()),
            "ver": version,
        }
        return self.signing.compact_jws(claims)

    def sign_verdict(
        self,
        *,
        code: str,
        license_id: str | None,
        client_id: str | None,
        nonce: str | None,
        issued_at: datetime,
        ttl_seconds: int,
    ) -> str:
        """A short-lived JWS over a validation's answer: the app that sent `nonce` can tell
        the service's answer from a fake server's or a replayed one."""
        iat = int(issued_at.timestamp())
        claims = {
            "iss": ISSUER,
            "code": code,
            "license_id": license_id,
            "client_id": client_id,
            "nonce": nonce,
            "iat": iat,
            "exp": iat + ttl_seconds,
        }
        return self.signing.compact_jws(claims, typ=VERDICT_TYP)

    def verify(self, token: str) -> dict[str, Any]:
        """The claims of a token signed by one of our keys. Expiry is not checked here: the
        license row decides that. Raises jwt.InvalidTokenError for anything else."""
        # The exact token's digest: another token (any byte changed) is verified afresh.
        digest = hashlib.blake2b(token.encode(), digest_size=20).digest()
        known = self._verified.get(digest)
        if known is None:
            claims = self._verify(token)
            names = tuple(claims)
            # Equal strings kept once: the issuer is ours, `sub` is the license id.
            shared = {ISSUER: ISSUER, claims["license_id"]: claims["license_id"]}
            values = tuple(shared.get(v, v) if isinstance(v, str) else v for v in claims.values())
            known = (self._claim_names.setdefault(names, names), values)
            with self._lock:
                twin = self._verified.pop(digest, None)  # another thread's, verified meanwhile
                if twin is not None:
                    self._verified_bytes -= _entry_bytes(digest, twin)
                while self._verified and len(self._verified) >= self._verified_size:
                    oldest = next(iter(self._verified))  # the least recently used
                    self._verified_bytes -= _entry_bytes(oldest, self._verified.pop(oldest))
                if self._verified_size:
                    self._verified[digest] = known
                    self._verified_bytes += _entry_bytes(digest, known)
                self._report_cache()
        else:
            with self._lock:  # most recently used last
                if self._verified.pop(digest, None) is not None:
                    self._verified[digest] = known
        return dict(zip(*known, strict=True))  # a dict of its own: callers may change it

    def _report_cache(self) -> None:
        """The cache's fill, for /metrics: a worker's memory grows while it fills, up to its
        bound, and no further (what the benchmark's memory check subtracts)."""
        entries, held = metrics.LICENSE_TOKEN_CACHE_ENTRIES, metrics.LICENSE_TOKEN_CACHE_BYTES
        if entries is not None and held is not None:  # a worker's (metrics.start_per_worker)
            entries.set(len(self._verified))
            held.set(self._verified_bytes + sys.getsizeof(self._verified))

    def _verify(self, token: str) -> dict[str, Any]:
        """The claims of a license token signed by one of our keys, checked as PyJWT's
        decode would (our algorithm and key, the issuer, the claims a license token must
        carry), over the parts `canonical_parts` has already decoded: PyJWT would parse the
        token twice more in Python (its header alone, then all of it, each character
        checked), about half of a verification's time (issue 17)."""
        parts = canonical_parts(token)
        if parts is None:
            raise jwt.DecodeError("not the token as it was signed")
        header, payload, signature = parts
        fields = _json_object(header, "header")
        kid = fields.get("kid")
        key = self.by_kid.get(kid) if isinstance(kid, str) else None
        if key is None or fields.get("alg") != ALGORITHM:
            raise jwt.InvalidTokenError("unknown key or algorithm")
        if fields.get("typ") == VERDICT_TYP:
            raise jwt.InvalidTokenError("a validation verdict is not a license token")
        if "crit" in fields or fields.get("b64", True) is not True:
            # RFC 7515's critical extensions, RFC 7797's unencoded payload: never ours
            raise jwt.InvalidTokenError("unsupported header parameters")
        if not key.verifies(signature, token[: token.rindex(".")].encode()):
            raise jwt.InvalidSignatureError("Signature verification failed")
        return _checked_claims(_json_object(payload, "payload"))

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        return {"keys": [k.jwk() for k in self.keys]}


def license_keys() -> KeySet:
    """The current app's key set (loaded once; a development key is made if none is set)."""
    from flask import current_app

    keys = current_app.extensions.get("license_keys")
    if keys is None:
        paths = key_paths(current_app.config.get("LICENSE_SIGNING_KEYS"))
        if not paths:
            if current_app.config["APP_ENV"] == "production":
                raise SigningKeyError("LICENSE_SIGNING_KEYS is not set")
            default = Path(current_app.instance_path) / DEV_KEY_NAME
            try:
                generate_key_file(default)
            except OSError as exc:
                raise SigningKeyError(
                    f"cannot create the development signing key {default}: {exc.strerror}"
                ) from None
            paths = [str(default)]
        keys = KeySet.from_files(paths)
        current_app.extensions["license_keys"] = keys
    return keys
