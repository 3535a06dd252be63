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


REBOUND = "drain.rebinding.test"  # answered only by the scripted resolver: never a real lookup


@pytest.fixture
def https_receiver(tmp_path):
    """An HTTPS receiver on 127.0.0.1 only (127.0.0.2 refuses), with a certificate for REBOUND."""
    import ssl
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from tests.support.tls import self_signed

    hits = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            hits.append(self.headers["Host"])
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    cert, key = self_signed(tmp_path, REBOUND, names=(REBOUND,))
    server = HTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_port, str(cert), hits
    finally:
        server.shutdown()


def test_dns_rebinding_a_name_checked_public_then_pointed_at_loopback_reaches_nothing(monkeypatch,
                                                                                      https_receiver):
    """The name passes a check (it resolves to a public address), then its DNS answer changes to
    127.0.0.1 before the connection is made: the connection's own lookup is checked, and refused."""
    import requests

    from broker.sinks import http
    from tests.support.resolver import ScriptedResolver

    port, cert, hits = https_receiver
    dns = ScriptedResolver(monkeypatch, REBOUND, ["8.8.8.8", "127.0.0.1"])
    # The check a drain passes when it is saved or a send begins: the name's answer is public then.
    assert resolve(REBOUND, port, allow_private=False) == ["8.8.8.8"]
    with pytest.raises(requests.ConnectionError, match="destination refused.*127.0.0.1"):
        http.new_session(allow_private=False).post(f"https://{REBOUND}:{port}/logs", data=b"x",
                                                   verify=cert, timeout=5)
    assert hits == []
    # The connection asked again (an earlier check is never trusted) and was told 127.0.0.1.
    assert dns.lookups == [["8.8.8.8"], ["127.0.0.1"]]


def test_a_drain_session_connects_to_the_address_it_checked_never_to_the_name_again(monkeypatch,
                                                                                   https_receiver):
    """Rebinding between the check and the connect: the name answers 127.0.0.1 (the receiver) to
    the guard's lookup and 127.0.0.2 (nothing listens) to any later one. A connection made to the
    name after the check would meet the second answer; the guard's connects to the first.
    HTTPS still checks the certificate against the name, and Host carries the name."""
    import requests

    from broker.sinks import http
    from tests.support.resolver import ScriptedResolver

    port, cert, hits = https_receiver
    dns = ScriptedResolver(monkeypatch, REBOUND, ["127.0.0.1", "127.0.0.2"])
    url = f"https://{REBOUND}:{port}/logs"
    allowed = http.new_session(allow_private=True)
    assert allowed.post(url, data=b"x", verify=cert, timeout=5).status_code == 204
    assert hits == [f"{REBOUND}:{port}"]  # the name kept for Host and certificate checks
    assert dns.lookups == [["127.0.0.1"]]  # one lookup: the checked answer is the one connected to
    dns.then("127.0.0.1")
    with pytest.raises(requests.exceptions.SSLError):
        http.new_session(allow_private=True).post(url, data=b"x", timeout=5)  # not trusted without the CA
    assert hits == [f"{REBOUND}:{port}"]
