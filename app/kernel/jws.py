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


def written_canonically(token: str) -> bool:
    """Three base64url parts, none padded, each the only spelling of its bytes."""
    parts = token.split(".")
    return len(parts) == 3 and all(_canonical(part) for part in parts)


def _canonical(part: str) -> bool:
    if _PART.fullmatch(part) is None:
        return False
    try:
        decoded = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (binascii.Error, ValueError):  # a length no bytes have
        return False
    return base64.urlsafe_b64encode(decoded).rstrip(b"=") == part.encode()
