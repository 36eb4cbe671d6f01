"""Which URLs webhooks may post to (SSRF): checked when an endpoint is saved and again at
every delivery, against the addresses the host resolves to *then* (DNS rebinding), and the
connection goes to the address that was checked.

Refused unless WEBHOOKS_ALLOW_PRIVATE=1 (tests, on-premise receivers): any address that is
not globally routable — loopback, private, link-local (169.254.169.254 and other cloud
metadata services), shared (100.64/10), multicast, reserved, unspecified — including an
IPv4 address written inside IPv6. Production requires https.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

MAX_URL_LENGTH = 2048


class UrlRefused(ValueError):
    """The URL may not receive webhooks; the message says why (shown to the admin)."""


@dataclass(frozen=True)
class Target:
    """A checked URL: where to connect (an address the host resolved to) and what to send."""

    scheme: str
    host: str
    port: int
    address: str
    path: str


def check_syntax(url: str, *, require_https: bool) -> tuple[str, str, int, str]:
    """(scheme, host, port, path) of an acceptable URL; UrlRefused otherwise."""
    if len(url) > MAX_URL_LENGTH:
        raise UrlRefused(f"the URL is longer than {MAX_URL_LENGTH} characters")
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        raise UrlRefused("the URL contains spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UrlRefused(f"the URL does not parse: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise UrlRefused("the URL must be http or https")
    if require_https and scheme != "https":
        raise UrlRefused("the URL must be https")
    if parts.username is not None or parts.password is not None:
        raise UrlRefused("the URL must not carry a user name or password")
    host = parts.hostname
    if not host:
        raise UrlRefused("the URL has no host")
    if parts.fragment:
        raise UrlRefused("the URL must not have a fragment")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return scheme, host, port or (443 if scheme == "https" else 80), path


def _refusal(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    mapped = getattr(address, "ipv4_mapped", None) or getattr(address, "sixtofour", None)
    if mapped is not None:
        return _refusal(mapped)
    if address.is_loopback:
        return "loopback"
    if address.is_unspecified:
        return "unspecified"
    if address.is_link_local:
        return "link-local (cloud metadata)"
    if address.is_private:
        return "private"
    if not address.is_global or address.is_multicast:
        return "not a public"
    return None


def resolve(
    url: str, *, require_https: bool, allow_private: bool, resolver: object = None
) -> Target:
    """The URL checked and resolved: UrlRefused with the reason when it may not be used."""
    scheme, host, port, path = check_syntax(url, require_https=require_https)
    lookup = resolver or socket.getaddrinfo
    try:
        infos = lookup(host, port, type=socket.SOCK_STREAM)  # type: ignore[operator]
    except (OSError, UnicodeError) as exc:
        raise UrlRefused(f"the host {host} does not resolve ({exc})") from None
    addresses = [info[4][0] for info in infos]
    if not addresses:
        raise UrlRefused(f"the host {host} does not resolve")
    if not allow_private:
        for text in addresses:
            why = _refusal(ipaddress.ip_address(text.split("%", 1)[0]))
            if why is not None:
                raise UrlRefused(
                    f"the host {host} resolves to {text}, a {why} address "
                    "(set WEBHOOKS_ALLOW_PRIVATE=1 for receivers on a private network)"
                )
    return Target(scheme, host, port, addresses[0], path)
