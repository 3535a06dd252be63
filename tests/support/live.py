"""The web process as it really runs: gunicorn with gunicorn.conf.py, over real sockets.

``live_web(env, directory)`` starts ``gunicorn --config gunicorn.conf.py
'web:create_app()'`` the way the Procfile does (PORT names the port,
WEB_CONCURRENCY=1), waits until ``/healthz`` answers, and on exit sends
SIGTERM to the whole process group, as a platform does at shutdown.

With ``tls=True`` gunicorn also terminates TLS itself, with a throwaway
certificate for 127.0.0.1: an app whose PUBLIC_URL is ``https://…`` marks its
cookies ``Secure``, and a client (like kensa's Mechanize, or ``requests``)
sends those back only over HTTPS, exactly as Heroku's router would carry them.
Clients verify against :attr:`LiveWeb.verify` (the certificate's path).

The process's output goes to a file (a pipe nobody reads would block it when
full); :meth:`LiveWeb.output` returns it for assertion messages.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import requests

from tests.support.tls import self_signed

ROOT = Path(__file__).resolve().parent.parent.parent
BIN = Path(sys.executable).parent
START_TIMEOUT_SECONDS = 30
STOP_TIMEOUT_SECONDS = 30


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LiveWeb:
    process: subprocess.Popen
    base_url: str
    verify: str | bool
    log_path: Path

    def url(self, path: str) -> str:
        return f"{self.base_url}{path}"

    def output(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def session(self) -> requests.Session:
        """A client session that trusts this server's certificate.

        ``trust_env`` is off: requests would otherwise let REQUESTS_CA_BUNDLE /
        CURL_CA_BUNDLE override ``session.verify``, and proxy variables must not
        route loopback traffic anywhere.
        """
        session = requests.Session()
        session.trust_env = False
        session.verify = self.verify
        return session


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=STOP_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@contextlib.contextmanager
def live_web(env: dict[str, str], directory: Path, *, tls: bool = True,
             concurrency: int = 1) -> Iterator[LiveWeb]:
    """Run the web process with ``env`` until the block ends; yield how to reach it."""
    port = free_port()
    command = [str(BIN / "gunicorn"), "--config", "gunicorn.conf.py"]
    verify: str | bool = True
    if tls:
        cert, key = self_signed(directory)
        command += ["--certfile", str(cert), "--keyfile", str(key)]
        verify = str(cert)
    command.append("web:create_app()")
    process_env = dict(env, PATH=f"{BIN}:/usr/bin:/bin", PYTHONUNBUFFERED="1",
                       PORT=str(port), WEB_CONCURRENCY=str(concurrency))
    log_path = directory / "web.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=process_env, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    scheme = "https" if tls else "http"
    web = LiveWeb(process, f"{scheme}://127.0.0.1:{port}", verify, log_path)
    try:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while True:
            if process.poll() is not None:
                raise AssertionError(f"gunicorn exited with {process.returncode}:\n{web.output()}")
            try:
                if requests.get(web.url("/healthz"), verify=verify, timeout=(1, 5)).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"gunicorn did not answer /healthz in time:\n{web.output()}")
            time.sleep(0.1)
        yield web
    finally:
        _stop(process)
