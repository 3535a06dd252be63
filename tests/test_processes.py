"""The Procfile's process types, started the way a platform starts them."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

from broker import db

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_env(env: dict[str, str], **extra: str) -> dict[str, str]:
    return dict(env, PATH=f"{BIN}:/usr/bin:/bin", PYTHONUNBUFFERED="1", **extra)


def honcho(*args: str, env: dict[str, str], **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [str(BIN / "honcho"), "-f", "Procfile", "-d", str(ROOT), "start", *args],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True, **kwargs,
    )


def stop(process: subprocess.Popen) -> str:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
    try:
        output, _ = process.communicate(timeout=40)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
    return output


def test_the_release_process_migrates_and_exits_0(env, empty_database_url):
    process = honcho("release", env=process_env(env, DATABASE_URL=empty_database_url))
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    assert "migrations applied=" in output
    with db.connect(empty_database_url) as conn:
        assert conn.execute("SELECT count(*) AS n FROM schema_migrations").fetchone()["n"] >= 1


def test_the_web_process_answers_readyz_under_honcho(env):
    port = free_port()
    process = honcho("-p", str(port), "web", env=process_env(env, WEB_CONCURRENCY="2"))
    try:
        deadline = time.monotonic() + 30
        response = None
        while time.monotonic() < deadline and process.poll() is None:
            try:
                response = requests.get(f"http://127.0.0.1:{port}/readyz", timeout=(1, 5))
                break
            except requests.ConnectionError:
                time.sleep(0.2)
        assert response is not None, "web never answered"
        assert response.status_code == 200
        assert response.json()["checks"] == {"postgres": "ok", "redis": "ok"}
        # access log lines are logfmt and carry the request id
        requests.get(f"http://127.0.0.1:{port}/healthz", headers={"X-Request-Id": "probe-1"},
                     timeout=(1, 5))
    finally:
        output = stop(process)
    assert "request_id=probe-1" in output


def test_the_web_process_refuses_to_start_on_a_bad_environment(env):
    port = free_port()
    bad = process_env(env, PUBLIC_URL="")
    process = honcho("-p", str(port), "web", env=bad)
    output, _ = process.communicate(timeout=60)
    assert process.returncode != 0
    assert "PUBLIC_URL is not set" in output


def test_clock_and_worker_carry_a_tick_to_the_database(env, database_url):
    env = process_env(env, CLOCK_TICK_SECONDS="1")
    process = honcho("worker", "clock", env=env)
    try:
        deadline = time.monotonic() + 30
        beat = None
        with db.connect(database_url) as conn:
            while time.monotonic() < deadline and process.poll() is None:
                beat = conn.execute("SELECT beat_at FROM heartbeats WHERE name = 'tick'").fetchone()
                if beat:
                    break
                time.sleep(0.2)
    finally:
        output = stop(process)
    assert beat is not None, output
    assert "clock started tick_seconds=1" in output


def test_a_warm_shutdown_lets_the_running_job_finish(env, database_url, redis_url):
    """SIGTERM (Heroku's shutdown) must not kill a job mid-way: HerokuWorker's horse ignores it."""
    from broker import jobs, redisconn

    process = subprocess.Popen(
        [sys.executable, "-m", "worker"], cwd=ROOT, env=process_env(env),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        jobs.queue("control", redisconn.connect(redis_url)).enqueue(
            "tests.support.jobs.slow", 3.0, job_timeout=60
        )
        with db.connect(database_url) as conn:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if conn.execute("SELECT 1 FROM heartbeats WHERE name = 'slow-job-started'").fetchone():
                    break
                time.sleep(0.05)
            else:
                raise AssertionError("the job never started")
            process.send_signal(signal.SIGTERM)
            output, _ = process.communicate(timeout=40)
            finished = conn.execute(
                "SELECT 1 FROM heartbeats WHERE name = 'slow-job-finished'"
            ).fetchone()
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert finished is not None, output
    assert process.returncode == 0
