"""A JWS (a JWT) in compact form, spelled exactly as its signer wrote it.

RFC 7515 writes each of a compact JWS's three parts in base64url without padding, and the
bytes of a part have one such spelling. PyJWT's decoder is lenient: it accepts padding
(`=`), characters outside the alphabet (Python's base64 drops them) and a last character
whose unused low bits are set, so many strings verify as the same signed token. They carry
the issued token's claims and nothing more, but a token is an identifier as well as a
credential — caches, logs and audits key on its text — so only the one spelling issued is
accepted: a check made before a token is verified, never after.
"""

from __future__ import annotations

import base64
import binascii
import re

_PART = re.compile(r"[A-Za-z0-9_-]+")


def canonical_parts(token: str) -> tuple[bytes, bytes, bytes] | None:
    """The header's, the payload's and the signature's bytes of a token written
    canonically (three base64url parts, none padded, each the only spelling of its bytes);
    None for any other string."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    decoded = [_decoded(part) for part in parts]
    if None in decoded:
        return None
    header, payload, signature = decoded
    return header, payload, signature  # type: ignore[return-value]


def written_canonically(token: str) -> bool:
    """Whether `token` is a compact JWS as its signer wrote it (`canonical_parts`)."""
    return canonical_parts(token) is not None


def _decoded(part: str) -> bytes | None:
    if _PART.fullmatch(part) is None:
        return None
    try:
        decoded = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (binascii.Error, ValueError):  # a length no bytes have
        return None
    return decoded if base64.urlsafe_b64encode(decoded).rstrip(b"=") == part.encode() else None
