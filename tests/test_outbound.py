"""The broker's own calls out (Atlassian, Heroku) take no proxies or credentials from the environment."""

from __future__ import annotations

import socket

import pytest
import requests
from flask import Flask, request

from broker import outbound
from tests.fakes.server import LocalServer


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def hostile_environment(monkeypatch, tmp_path):
    """A proxy that would see every call (here: nobody listening) and a netrc entry for the host."""
    proxy = f"http://127.0.0.1:{closed_port()}"
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.setenv(name, proxy)
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login leaked password from-netrc\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))


def test_calls_out_ignore_proxies_and_netrc_from_the_environment(hostile_environment):
    app, seen = Flask("echo"), []

    @app.get("/")
    def echo():
        seen.append(request.headers.get("Authorization"))
        return "ok"

    with LocalServer(app) as server:
        with pytest.raises(requests.ConnectionError):  # what a plain session does here: via the proxy
            requests.Session().get(server.url + "/", timeout=5)
        with outbound.session() as session:
            assert session.get(server.url + "/", timeout=5).text == "ok"
    assert seen == [None]  # no netrc credentials attached
