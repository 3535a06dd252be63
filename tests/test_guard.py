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


def test_a_drain_session_checks_every_new_connection_and_connects_to_the_checked_address(tmp_path):
    """DNS rebinding: a name that passed the send-time check but points at a private address by
    the time the connection is made reaches nothing; allowed, HTTPS still checks the name."""
    import ssl
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    import requests

    from broker.sinks import http
    from tests.support.tls import self_signed

    hits = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            hits.append(self.headers["Host"])
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    cert, key = self_signed(tmp_path)
    server = HTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"https://localhost:{server.server_port}/logs"
    try:
        with pytest.raises(requests.ConnectionError, match="destination refused"):
            http.new_session(allow_private=False).post(url, data=b"x", verify=str(cert), timeout=5)
        assert hits == []
        allowed = http.new_session(allow_private=True)
        assert allowed.post(url, data=b"x", verify=str(cert), timeout=5).status_code == 204
        assert hits == [f"localhost:{server.server_port}"]  # the name kept for Host and certificate checks
        with pytest.raises(requests.exceptions.SSLError):
            allowed.post(url, data=b"x", timeout=5)  # not trusted without the throwaway CA
    finally:
        server.shutdown()
