"""A real OTLP/HTTP receiver for delivery tests: the rotel collector, run from the venv.

The ``rotel`` wheel (requirements-dev.txt) ships the collector as the
executable ``rotel/rotel-agent`` inside the package (its ``--version`` says
``rotel 0.0.1-alpha10``); the package's own Python client only starts it as a
daemon with fixed default ports and pid file, so it is run directly here:
in the foreground, its OTLP/HTTP receiver on a free loopback port, its gRPC
receiver (which cannot be switched off) on another, traces and metrics
receivers off, no batching (each accepted request is exported at once).

What rotel accepted is observed by letting it export onward: its OTLP
exporter speaks OTLP/HTTP protobuf to :func:`tests.fakes.receivers.otlp_receiver`
on a third loopback port, which decodes every request with the official
``opentelemetry-proto`` classes. The records read there are therefore the ones
rotel itself decoded from the broker's request: ids as raw bytes, severities
as numbers, attributes as typed values. rotel answers the sender as soon as it
has decoded a request and exports asynchronously, so :meth:`Rotel.wait_for_records`
waits for the count to arrive.

::

    with rotel_receiver() as rotel:
        ...  # send to rotel.url (+ /v1/logs)
        records = rotel.wait_for_records(10)
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import requests

from tests.fakes.receivers import Inbox, otlp_receiver
from tests.fakes.server import LocalServer

START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0


def binary() -> Path:
    """The collector executable inside the installed ``rotel`` package."""
    spec = importlib.util.find_spec("rotel")
    if spec is None or spec.origin is None:
        raise RuntimeError("the rotel package is not installed (requirements-dev.txt pins it)")
    path = Path(spec.origin).parent / "rotel-agent"
    if not os.access(path, os.X_OK):
        raise RuntimeError(f"the rotel package has no runnable collector at {path} "
                           "(is there a rotel wheel with a collector for this platform?)")
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class Received:
    """One log record as rotel exported it, with its resource and scope."""

    resource: dict  # attribute key → python value
    scope_name: str
    scope_version: str
    record: object  # opentelemetry.proto.logs.v1.logs_pb2.LogRecord

    @property
    def attributes(self) -> dict:
        return attributes(self.record.attributes)


def _value(any_value):
    kind = any_value.WhichOneof("value")
    if kind is None:
        return None
    value = getattr(any_value, kind)
    if kind in ("array_value", "kvlist_value"):
        return any_value  # not needed by the tests; kept as the message
    return value


def attributes(key_values) -> dict:
    return {item.key: _value(item.value) for item in key_values}


@dataclass
class Rotel:
    url: str                  # base URL of rotel's OTLP/HTTP receiver (no path)
    process: subprocess.Popen
    inbox: Inbox              # the requests rotel exported onward
    output_path: Path         # rotel's stdout and stderr

    def output(self) -> str:
        """What rotel printed so far (its decode errors name the offending field)."""
        try:
            return self.output_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def records(self) -> list[Received]:
        with self.inbox.lock:
            messages = [r["message"] for r in self.inbox.requests]
        return [Received(attributes(rl.resource.attributes), sl.scope.name, sl.scope.version, log)
                for message in messages for rl in message.resource_logs for sl in rl.scope_logs
                for log in sl.log_records]

    def wait_for_records(self, count: int, timeout: float = 15.0, settle: float = 0.3) -> list[Received]:
        """The exported records once at least ``count`` arrived, plus ``settle`` s for any surplus."""
        deadline = time.monotonic() + timeout
        while len(self.records()) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"rotel exported {len(self.records())} of {count} records in {timeout} s; "
                                     f"downstream refused {self.inbox.refused}; rotel said:\n{self.output()}")
            if self.process.poll() is not None:
                raise AssertionError(f"rotel exited ({self.process.returncode}):\n{self.output()}")
            time.sleep(0.02)
        time.sleep(settle)  # duplicates would show up as a surplus
        return self.records()


def _command(http_port: int, grpc_port: int, export_url: str, workdir: Path, extra: list[str]) -> list[str]:
    return [
        str(binary()), "start",
        "--otlp-http-endpoint", f"127.0.0.1:{http_port}",
        "--otlp-grpc-endpoint", f"127.0.0.1:{grpc_port}",
        "--otlp-receiver-traces-disabled", "--otlp-receiver-metrics-disabled",
        # Only used by --daemon, but never let a foreground run touch the shared /tmp defaults.
        "--pid-file", str(workdir / "rotel.pid"), "--log-file", str(workdir / "rotel.log"),
        "--exporter", "otlp", "--otlp-exporter-protocol", "http",
        "--otlp-exporter-endpoint", export_url,
        "--otlp-exporter-retry-initial-backoff", "100ms", "--otlp-exporter-retry-max-backoff", "500ms",
        "--disable-batching",
        *extra,
    ]


def _wait_ready(process: subprocess.Popen, url: str, deadline: float) -> bool:
    """True once the HTTP receiver answers (any status: ``GET /`` is 404); False if rotel exited."""
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            requests.get(url + "/", timeout=0.5)
            return True
        except requests.ConnectionError:
            time.sleep(0.05)
        except requests.Timeout:
            pass
    return False


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT)


@contextlib.contextmanager
def rotel_receiver(extra_args: list[str] | None = None, attempts: int = 3) -> Iterator[Rotel]:
    """Run rotel (OTLP/HTTP on a free loopback port) exporting to a local decoding receiver."""
    app, inbox = otlp_receiver()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROTEL_")}  # no outside config
    with LocalServer(app) as downstream, tempfile.TemporaryDirectory(prefix="rotel-") as tmp:
        workdir = Path(tmp)
        failures = []
        for attempt in range(attempts):
            http_port, grpc_port = free_port(), free_port()
            url = f"http://127.0.0.1:{http_port}"
            output_path = workdir / f"rotel-{attempt}.out"
            with open(output_path, "wb") as output:
                process = subprocess.Popen(_command(http_port, grpc_port, downstream.url, workdir,
                                                    extra_args or []),
                                           stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                                           env=env, cwd=workdir)
            try:
                ready = _wait_ready(process, url, time.monotonic() + START_TIMEOUT)
            except BaseException:
                _stop(process)
                raise
            if ready:
                break
            _stop(process)  # a port taken between free_port() and bind: try other ports
            failures.append(f"exit {process.returncode}: {output_path.read_text(errors='replace')}")
        else:
            raise RuntimeError(f"rotel did not start in {attempts} attempts:\n" + "\n".join(failures))
        rotel = Rotel(url, process, inbox, output_path)
        try:
            yield rotel
        finally:
            _stop(process)
