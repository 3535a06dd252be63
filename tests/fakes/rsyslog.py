"""A real rsyslog (Debian's package) as a syslog drain: TCP and TLS, octet-counted.

Each instance runs in the foreground with its own configuration, pid file,
work directory and loopback ports — never the system daemon. It listens for
syslog over TLS (GnuTLS stream driver, a throwaway certificate the sender
trusts) and over plain TCP, parses what arrives as RFC 5424, runs
``mmpstrucdata`` over the structured data and writes one JSON line per
message: what rsyslog itself understood of each frame.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from pathlib import Path

from tests.support.tls import self_signed

CONFIG = """
global(workDirectory="{dir}" maxMessageSize="64k"
       parser.escapeControlCharactersOnReceive="off"
       defaultNetstreamDriverCAFile="{cert}"
       defaultNetstreamDriverCertFile="{cert}"
       defaultNetstreamDriverKeyFile="{key}")
module(load="imtcp" maxSessions="200")
module(load="mmpstrucdata")
input(type="imtcp" address="127.0.0.1" port="{tls_port}" name="tls"
      streamDriver.name="gtls" streamDriver.mode="1" streamDriver.authMode="anon")
input(type="imtcp" address="127.0.0.1" port="{tcp_port}" name="tcp")
template(name="message" type="list" option.jsonf="on") {{
  property(outname="input" name="inputname" format="jsonf")
  property(outname="pri" name="pri" format="jsonf")
  property(outname="timestamp" name="timereported" dateFormat="rfc3339" format="jsonf")
  property(outname="hostname" name="hostname" format="jsonf")
  property(outname="app" name="app-name" format="jsonf")
  property(outname="procid" name="procid" format="jsonf")
  property(outname="msgid" name="msgid" format="jsonf")
  property(outname="sd" name="structured-data" format="jsonf")
  property(outname="params" name="$!rfc5424-sd" format="jsonf")
  property(outname="msg" name="msg" format="jsonf")
}}
action(type="mmpstrucdata" sd_name.lowercase="off")
action(type="omfile" file="{out}" template="message")
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _binary() -> str:
    found = shutil.which("rsyslogd") or shutil.which("rsyslogd", path="/usr/sbin:/sbin")
    if not found:
        raise RuntimeError("rsyslogd is not installed (Debian: apt-get install rsyslog rsyslog-gnutls); "
                           "./scripts/test installs it")
    return found


class Rsyslog:
    def __init__(self, directory: Path, names: tuple[str, ...] = ("localhost", "127.0.0.1")):
        self.dir = directory
        self.cert, self.key = self_signed(directory, names=names)
        self.out = directory / "messages.jsonl"
        self.tls_port, self.tcp_port = _free_port(), _free_port()
        self.process: subprocess.Popen | None = None

    @property
    def tls_url(self) -> str:
        return f"syslog+tls://localhost:{self.tls_port}"

    @property
    def tcp_url(self) -> str:
        return f"syslog+tcp://127.0.0.1:{self.tcp_port}"

    def start(self) -> Rsyslog:
        config = self.dir / "rsyslog.conf"
        config.write_text(CONFIG.format(dir=self.dir, cert=self.cert, key=self.key, out=self.out,
                                        tls_port=self.tls_port, tcp_port=self.tcp_port))
        log = open(self.dir / "rsyslogd.log", "wb")
        self.process = subprocess.Popen([_binary(), "-n", "-f", str(config), "-i", str(self.dir / "rsyslogd.pid")],
                                        stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 15
        for port in (self.tls_port, self.tcp_port):
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"rsyslogd exited: {(self.dir / 'rsyslogd.log').read_text()}")
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError("rsyslogd did not listen in time") from None
                    time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def messages(self) -> list[dict]:
        if not self.out.exists():
            return []
        found = [json.loads(line) for line in self.out.read_text(encoding="utf-8").splitlines() if line.strip()]
        for message in found:  # mmpstrucdata's reading of the structured data, as an object
            message["params"] = json.loads(message["params"]) if message.get("params") else {}
        return found

    def wait_for(self, count: int, timeout: float = 15) -> list[dict]:
        """The messages once at least ``count`` were written (rsyslog writes asynchronously)."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.messages()
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.05)

    def __enter__(self) -> Rsyslog:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
