"""SSRF guard: a drain may only point at the public internet (SPEC §7).

The host is resolved at send time — not when the drain is saved — because a
name can be pointed at 127.0.0.1 or 169.254.169.254 after it passed a check
(DNS rebinding). Every address the name resolves to must be public; the caller
then connects to one of the returned addresses, not to the name again.
``ALLOW_PRIVATE_DRAINS`` lifts the rule for tests and private deployments.
"""

from __future__ import annotations

import ipaddress
import socket


class BlockedDestination(Exception):
    """The drain's host resolves to an address drains may not reach."""


def is_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return not (address.is_private or address.is_loopback or address.is_link_local
                or address.is_reserved or address.is_multicast or address.is_unspecified
                or not address.is_global)


def resolve(host: str, port: int, *, allow_private: bool) -> list[str]:
    """The addresses to connect to for ``host:port``; raises :class:`BlockedDestination`."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise BlockedDestination(f"cannot resolve {host!r} ({exc.__class__.__name__})") from None
    addresses = []
    for info in infos:
        address = ipaddress.ip_address(info[4][0].split("%", 1)[0])
        if not allow_private and not is_public(address):
            raise BlockedDestination(
                f"{host} resolves to {address}, a private, loopback, link-local or reserved "
                "address; drains must be on the public internet")
        if str(address) not in addresses:
            addresses.append(str(address))
    if not addresses:
        raise BlockedDestination(f"{host!r} has no address")
    return addresses
