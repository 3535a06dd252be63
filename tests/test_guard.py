import ipaddress

import pytest

from broker.sinks.guard import BlockedDestination, is_public, resolve


@pytest.mark.parametrize("address, public", [
    ("8.8.8.8", True), ("1.1.1.1", True), ("2606:4700:4700::1111", True),
    ("127.0.0.1", False), ("10.1.2.3", False), ("172.16.0.1", False), ("192.168.1.1", False),
    ("169.254.169.254", False), ("100.64.0.1", False), ("0.0.0.0", False), ("224.0.0.1", False),
    ("::1", False), ("fe80::1", False), ("fc00::1", False), ("::ffff:127.0.0.1", False),
    ("::ffff:8.8.8.8", True), ("192.0.2.1", False), ("240.0.0.1", False),
])
def test_only_public_addresses_pass(address, public):
    assert is_public(ipaddress.ip_address(address)) is public


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "[::1]".strip("[]"), "127.1"])
def test_loopback_names_and_literals_are_refused_unless_allowed(host):
    with pytest.raises(BlockedDestination, match="private, loopback"):
        resolve(host, 443, allow_private=False)
    assert resolve(host, 443, allow_private=True)


def test_an_unresolvable_name_is_refused():
    with pytest.raises(BlockedDestination, match="cannot resolve"):
        resolve("no-such-host.invalid", 443, allow_private=True)
