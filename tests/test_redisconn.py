import shutil
import socket
import subprocess
import time

import pytest
import redis

from broker import redisconn
from tests.support.tls import self_signed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("url, expected", [
    ("rediss://:p@host:6380", "rediss://:p@host:6380?ssl_cert_reqs=none"),
    ("rediss://:p@host:6380/0?socket_keepalive=true",
     "rediss://:p@host:6380/0?socket_keepalive=true&ssl_cert_reqs=none"),
    ("rediss://host:6380?ssl_cert_reqs=required", "rediss://host:6380?ssl_cert_reqs=required"),
    ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
])
def test_it_turns_verification_off_only_for_rediss_urls_that_do_not_choose(url, expected):
    assert redisconn.effective_url(url) == expected


@pytest.fixture
def tls_redis(tmp_path):
    """A real Redis speaking only TLS, with a self-signed certificate (as Heroku's does)."""
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed")
    cert, key = self_signed(tmp_path)
    port = free_port()
    process = subprocess.Popen(
        ["redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-auth-clients", "no",
         "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.05)
    yield f"rediss://127.0.0.1:{port}/0"
    process.terminate()
    process.wait(timeout=10)


def test_it_talks_to_a_tls_redis_with_a_self_signed_certificate(tls_redis):
    client = redisconn.connect(tls_redis)
    assert client.ping() is True
    client.set("k", "v")
    assert client.get("k") == b"v"


def test_a_default_client_would_refuse_that_certificate(tls_redis):
    # Why effective_url exists: redis-py verifies certificates by default.
    with pytest.raises(redis.ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
        redis.Redis.from_url(tls_redis, socket_connect_timeout=2).ping()
