"""Which URLs webhooks may post to (SSRF): checked when an endpoint is saved and again at
every delivery, against the addresses the host resolves to *then* (DNS rebinding), and the
connection goes to the address that was checked.

Refused unless WEBHOOKS_ALLOW_PRIVATE=1 (tests, on-premise receivers): any address that is
not globally routable — loopback, private, link-local (169.254.169.254 and other cloud
metadata services), shared (100.64/10), multicast, reserved, unspecified, broadcast — including an
IPv4 address written inside IPv6 (mapped, compatible ::/96, translated ::ffff:0:0:0/96, NAT64
64:ff9b::/96, 6to4), which is judged as that IPv4 address; local-use NAT64 (64:ff9b:1::/48)
and the deprecated site-local fec0::/10, which Python calls global, are refused outright.
Production requires https.
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
    if port == 0:
        raise UrlRefused("the URL's port must be from 1 to 65535")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return scheme, host, port or (443 if scheme == "https" else 80), path


IPV4_COMPATIBLE = ipaddress.ip_network("::/96")  # deprecated, but still routed by some stacks
IPV4_TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")
NAT64 = ipaddress.ip_network("64:ff9b::/96")
# Refused outright, with no IPv4 inside to judge by (Python's ipaddress calls both global).
NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
SITE_LOCAL = ipaddress.ip_network("fec0::/10")
BROADCAST = ipaddress.ip_address("255.255.255.255")


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, compatible, translated, NAT64,
    6to4), if any: what a packet to it may reach."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    low = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address in IPV4_COMPATIBLE and int(address) > 1:  # not :: nor ::1
        return low
    if address in IPV4_TRANSLATED or address in NAT64:
        return low
    return None


def _refusal(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why the address may not receive webhooks ("a loopback address"), or None."""
    if isinstance(address, ipaddress.IPv6Address):
        inside = _embedded_ipv4(address)
        if inside is not None:
            return _refusal(inside)
        if address in NAT64_LOCAL:
            return "a local-use NAT64 address"
        if address in SITE_LOCAL:
            return "a site-local address"
    if address.is_loopback:
        return "a loopback address"
    if address.is_unspecified:
        return "an unspecified address"
    if address == BROADCAST:
        return "a broadcast address"
    if address.is_link_local:
        return "a link-local address (cloud metadata)"
    if address.is_private:
        return "a private address"
    if not address.is_global or address.is_multicast:
        return "not a public address"
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
                    f"the host {host} resolves to {text}, {why} "
                    "(set WEBHOOKS_ALLOW_PRIVATE=1 for receivers on a private network)"
                )
    return Target(scheme, host, port, addresses[0], path)
