"""The one normalisation of email addresses: every email the service sees goes through it.

Registration, login, activation with credentials, lockout and rate-limit keys, the admin's
search and the CLI all compare `normalise_email(typed)`, so anything that normalises to an
existing account is that account: `Bob@EXAMPLE.com` typed in fullwidth letters,
`bob@example.com` and `BOB@example.com` are one person, and `kate@example.com` with a
fullwidth k cannot register beside `kate@example.com`.

- The whole address: trimmed, Unicode NFKC (fullwidth and other compatibility forms become
  their plain letters).
- The local part (before the last `@`): case-folded (and NFKC again, as case folding can
  undo it).
- The domain: IDNA (UTS #46) in its Unicode form, so `xn--exmple-cua.com` and `exämple.com`
  are one domain. A domain IDNA refuses is case-folded only (it cannot match a registered
  account: registration refuses such addresses).

It also serves prefixes (the admin's search): a prefix whose domain part IDNA refuses
falls back to case folding, like a whole address.
"""

from __future__ import annotations

import unicodedata

import idna


def _fold(text: str) -> str:
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())


def canonical_domain(domain: str) -> str:
    """The domain in its canonical IDNA Unicode form, or case-folded if IDNA refuses it."""
    try:
        return idna.decode(idna.encode(domain, uts46=True))
    except (idna.IDNAError, UnicodeError, ValueError):
        return _fold(domain)


def normalise_email(email: str) -> str:
    """The canonical form of an email address (see the module's docstring)."""
    text = unicodedata.normalize("NFKC", email.strip())
    local, at, domain = text.rpartition("@")
    if not at:
        return _fold(text)
    return f"{_fold(local)}@{canonical_domain(domain) if domain else ''}"
