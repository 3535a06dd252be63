"""``./scripts/run --demo`` end to end, briefly: the demo's own processes (the Forge fake, the
receiver, the setup step) with the real web (gunicorn), worker and clock, on the demo's settings.

Only the private PostgreSQL / Redis and the Procfile plumbing of ``scripts/run`` are left out:
each piece here runs the same command line the generated demo Procfile runs.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from html.parser import HTMLParser
from pathlib import Path

import pytest
import requests

from demo import API_TOKEN, APP_ID, EMAIL, ENVIRONMENT_ID, receiver
from tests.fakes.forge import ForgeFake
from tests.support.live import free_port, live_web

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PASSWORD = "forgedrain-dev-password"  # addon-manifest.json, as scripts/run fills ADDON_PASSWORDS
SALT = "forgedrain-dev-sso-salt"


@contextlib.contextmanager
def process(args: list[str], env: dict, log: Path):
    """Run ``python <args>`` in its own process group; SIGTERM the group at the end."""
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                env={**env, "PATH": f"{BIN}:/usr/bin:/bin", "PYTHONUNBUFFERED": "1"},
                                start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def wait_for_text(log: Path, pattern: str, seconds: float, proc: subprocess.Popen | None = None) -> re.Match:
    deadline = time.monotonic() + seconds
    while True:
        text = log.read_text(encoding="utf-8", errors="replace")
        match = re.search(pattern, text, re.MULTILINE)
        if match:
            return match
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{log.name}: the process exited with {proc.returncode}:\n{text}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{log.name}: no {pattern!r} within {seconds} s:\n{text[-5000:]}")
        time.sleep(0.25)


def wait_until(found, seconds: float, proc: subprocess.Popen, log: Path):
    """``found()``'s first answer other than None, asked until ``seconds`` pass or ``proc`` exits."""
    deadline = time.monotonic() + seconds
    while (result := found()) is None:
        if proc.poll() is not None:
            raise AssertionError(f"{log.name}: the process exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{log.name}: not within {seconds} s:\n{log.read_text(errors='replace')[-5000:]}")
        time.sleep(0.25)
    return result


class FormReader(HTMLParser):
    def __init__(self):
        super().__init__()
        self.action, self.method, self.fields = None, None, {}

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag == "form":
            self.action, self.method = attributes.get("action"), attributes.get("method")
        elif tag == "input" and attributes.get("name"):
            self.fields[attributes["name"]] = attributes.get("value") or ""


def sign_in(link: str) -> requests.Response:
    """What a browser does with the link: load the page, submit its form, follow the redirect."""
    browser = requests.Session()
    browser.trust_env = False
    page = browser.get(link, timeout=10)
    assert page.status_code == 200, page.text
    form = FormReader()
    form.feed(page.text)
    assert form.method == "post" and form.action.endswith("/sso/login"), page.text
    return browser.post(form.action, data=form.fields, timeout=10)


def demo_bodies() -> set[str]:
    """Single-line bodies the fake's demo app logged over the last 70 minutes (same seed)."""
    fake = ForgeFake(seed=1)
    fake.add_app(APP_ID, [ENVIRONMENT_ID], EMAIL, API_TOKEN, records_per_minute=30, late_fraction=0.0)
    now = datetime.now(timezone.utc)
    bodies = set()
    for hour in (now - timedelta(minutes=70), now - timedelta(minutes=10)):
        for record in fake.records(APP_ID, ENVIRONMENT_ID, hour, hour + timedelta(minutes=60), now=1e12):
            body = record["body"]["stringValue"]
            if body and "\n" not in body and "\r" not in body and len(body) < 100 and body.isprintable():
                bodies.add(body)
    return bodies


def test_the_demo_brings_forge_records_to_the_receiver_and_signs_in(env, conn, tmp_path):
    began = time.monotonic()
    forge_port, receiver_port, signin_port = free_port(), free_port(), free_port()
    demo_env = dict(env, FORGE_API_URL=f"http://127.0.0.1:{forge_port}", FORGE_POLL_LAG_SECONDS="30",
                    ALLOW_PRIVATE_DRAINS="true")
    logs = {name: tmp_path / f"{name}.log" for name in ("forge", "receiver", "worker", "clock", "demo")}
    receiver_url = f"http://127.0.0.1:{receiver_port}/logs"
    setup = ["-m", "demo.setup", "--forge", demo_env["FORGE_API_URL"], "--receiver", receiver_url,
             "--state", str(tmp_path / "resource-id"), "--password", PASSWORD, "--sso-salt", SALT]
    with contextlib.ExitStack() as stack:
        forge = stack.enter_context(process(["-m", "demo.forge", "--port", str(forge_port)], demo_env,
                                            logs["forge"]))
        rx = stack.enter_context(process(["-m", "demo.receiver", "--port", str(receiver_port)], demo_env,
                                         logs["receiver"]))
        web = stack.enter_context(live_web(demo_env, tmp_path, tls=False))
        stack.enter_context(process(["-m", "worker"], demo_env, logs["worker"]))
        stack.enter_context(process(["-m", "worker.clock"], demo_env, logs["clock"]))
        demo = stack.enter_context(process([*setup, "--web", web.base_url, "--signin-port", str(signin_port)],
                                           demo_env, logs["demo"]))

        link = wait_for_text(logs["demo"], r"Dashboard sign-in:\s+(\S+)", 60, demo).group(1)
        resource_id = wait_for_text(logs["demo"], r"Resource:\s+([0-9a-f-]{36})", 1).group(1)
        assert link == f"http://127.0.0.1:{signin_port}/"
        assert (tmp_path / "resource-id").read_text().strip() == resource_id

        # The sign-in link lands on the resource's dashboard.
        dashboard = sign_in(link)
        assert dashboard.status_code == 200, dashboard.text[:2000]
        assert dashboard.url == f"{web.base_url}/dashboard/{resource_id}"
        assert dashboard.history and dashboard.history[0].status_code == 302

        # Forge records from the fake reach the receiver, which accepts them as Vector would: wait
        # until it has printed three of the demo app's own messages. How soon is printed, not
        # judged (it is the machine's load as much as the broker's): the delay from log to drain
        # is measured by bench/freshness.py.
        bodies = demo_bodies()

        def demo_messages() -> list[str] | None:
            printed = logs["receiver"].read_text(encoding="utf-8")
            lines = re.findall(r"^  (\S+Z) (\w+)\s+forge\[([\w-]+)\]: (.*)$", printed, re.MULTILINE)
            found = [body for _, _, _, body in lines if body in bodies]
            return found if len(found) >= 3 else None

        wait_until(demo_messages, 90, rx, logs["receiver"])
        print(f"Forge records at the receiver {time.monotonic() - began:.1f} s after the test began")
        assert "REFUSED" not in logs["receiver"].read_text(encoding="utf-8")
        assert forge.poll() is None and rx.poll() is None

        def run_setup_again() -> str:
            result = subprocess.run([sys.executable, *setup, "--web", web.base_url, "--no-serve"], cwd=ROOT,
                                    env={**demo_env, "PATH": f"{BIN}:/usr/bin:/bin"}, capture_output=True,
                                    text=True, timeout=60)
            assert result.returncode == 0, result.stdout + result.stderr
            return result.stdout

        # Running the setup again (the next ./scripts/run --demo) reuses the resource and its drain.
        again = run_setup_again()
        assert f"Resource:           {resource_id}" in again
        token = re.search(r"Bearer (\S+)'", again).group(1)
        api = requests.Session()
        api.trust_env = False
        api.headers["Authorization"] = f"Bearer {token}"
        drains = api.get(f"{web.base_url}/v1/resources/{resource_id}/drains", timeout=10).json()["drains"]
        sources = api.get(f"{web.base_url}/v1/resources/{resource_id}/sources", timeout=10).json()["sources"]
        assert [(d["kind"], d["url"]) for d in drains] == [("logplex", receiver_url)]
        assert [(s["app_id"], s["state"]) for s in sources] == [(APP_ID, "active")]

        # A source left far behind (the demo stopped for hours) is replaced, not caught up.
        # (Only while no poll holds the source's lease, and not due again soon, so no poll
        # moves the checkpoint forward before the setup looks at it.)
        deadline = time.monotonic() + 30
        while conn.execute("UPDATE sources SET checkpoint = now() - interval '3 hours', "
                           "next_poll_at = now() + interval '1 hour' WHERE lease_token IS NULL").rowcount != 1:
            assert time.monotonic() < deadline, "the source stayed leased"
            time.sleep(0.2)
        assert "re-creating it" in run_setup_again()
        renewed = api.get(f"{web.base_url}/v1/resources/{resource_id}/sources", timeout=10).json()["sources"]
        assert len(renewed) == 1 and renewed[0]["id"] != sources[0]["id"]
        assert renewed[0]["state"] == "active"

        # A deprovisioned demo resource is replaced by a new one.
        gone = api.delete(f"{web.base_url}/heroku/resources/{resource_id}", auth=("forgedrain", PASSWORD),
                          headers={"Authorization": None}, timeout=10)
        assert gone.status_code == 204, gone.text
        output = run_setup_again()
        new_id = re.search(r"Resource:\s+([0-9a-f-]{36})", output).group(1)
        assert new_id != resource_id
        assert (tmp_path / "resource-id").read_text().strip() == new_id


@pytest.mark.parametrize("body, count, reason", [
    (b"54 <190>1 2024-02-13T10:30:44.939Z host forge fn - hello\n", 2, "Logplex-Msg-Count is 2"),
    (b"99 <190>1 2024-02-13T10:30:44.939Z host forge fn - hello\n", 1, "claims 99 bytes"),
])
def test_the_receiver_refuses_what_vector_would(body, count, reason):
    headers = {"Logplex-Msg-Count": str(count), "Logplex-Frame-Id": "f", "Logplex-Drain-Token": "d.x"}
    with pytest.raises(receiver.Refused, match=reason):
        receiver.parse(headers.get, body)
    with pytest.raises(receiver.Refused, match="Logplex-Frame-Id"):
        receiver.parse({"Logplex-Msg-Count": "1", "Logplex-Drain-Token": "d"}.get, body)


def test_the_receiver_shows_each_message_on_one_readable_line():
    line = "<187>1 2024-02-13T10:30:44.939Z d.x forge svc.fn - \x1b[31mfailed\x1b[0m ✓\n"
    body = f"{len(line.encode())} {line}".encode()
    headers = {"Logplex-Msg-Count": "1", "Logplex-Frame-Id": "f", "Logplex-Drain-Token": "d.x"}
    _, events = receiver.parse(headers.get, body)
    assert receiver.describe(events[0], 160) == (
        "2024-02-13T10:30:44.939Z ERROR  forge[svc.fn]: \\x1b[31mfailed\\x1b[0m ✓")
