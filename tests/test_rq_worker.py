"""The worker class ``python -m worker`` runs, with a real Redis and PostgreSQL."""

from __future__ import annotations

import logging
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from rq import SimpleWorker

from broker import config, heartbeats, jobs, redisconn
from worker import context
from worker.rq_worker import Worker

ROOT = Path(__file__).resolve().parent.parent


class InProcess(SimpleWorker, Worker):
    """The worker's own job handling, with jobs performed in this process so its log is seen here."""


def test_a_job_whose_record_left_redis_while_it_ran_is_not_a_failure(env, conn, redis_url, caplog):
    """A FLUSHALL during a job used to log RQ's InvalidJobOperation traceback as an error for a job
    that had done its work; the worker now says so in one line and goes on to the next job."""
    context.install(config.load(env, testing=True))
    try:
        connection = redisconn.connect(redis_url, socket_timeout=None)
        queue = jobs.queue("control", connection)
        first = queue.enqueue("tests.support.jobs.forget_itself", result_ttl=0)  # as the delivery jobs
        queue.enqueue("tests.support.jobs.slow", 0)
        with caplog.at_level(logging.INFO):
            InProcess([queue], connection=connection, serializer=jobs.SERIALIZER).work(burst=True)
    finally:
        context.install(None)
    beats = {row["name"] for row in heartbeats.every(conn)}
    assert {"forgot-itself", "slow-job-started", "slow-job-finished"} <= beats
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]
    assert any(f"job {first.id} finished after its record left Redis" in r.getMessage() for r in caplog.records)
    assert jobs.queue("control", connection).failed_job_registry.count == 0


def test_a_job_hash_a_heartbeat_left_after_redis_lost_the_job_does_not_block_its_id(redis_url):
    """Found by the chaos bench: after Redis restarted empty, a work horse's heartbeat wrote
    ``rq:job:deliver-0`` back with only ``last_heartbeat`` and no expiry, and every tick after that
    found delivery slot 0 'still queued': nothing was delivered again."""
    from rq.job import Job

    connection = redisconn.connect(redis_url)
    connection.hset(Job.key_for("deliver-0"), "last_heartbeat", "2026-12-02T14:34:55.365634Z")
    queued = jobs.enqueue_delivery(connection, 0, 5)
    assert queued is not None and queued.id == "deliver-0"
    assert jobs.queue("deliver", connection).job_ids == ["deliver-0"]
    # A real job with the id still blocks it, and is left alone.
    assert jobs.enqueue_delivery(connection, 0, 5) is None
    assert connection.hget(Job.key_for("deliver-0"), "status") == b"queued"
    assert jobs.queue("deliver", connection).job_ids == ["deliver-0"]


# --- Redis unreachable while a job runs ------------------------------------------------------------

class CuttableProxy:
    """A TCP proxy to Redis on a fixed loopback port that can be cut (listener closed, every connection
    reset) and restored, as a Redis restart or failover looks to its clients."""

    def __init__(self, host: str, port: int):
        self.target = (host, port)
        self.port = 0
        self.listener: socket.socket | None = None
        self.pipes: list[socket.socket] = []
        self.lock = threading.Lock()
        self.restore()

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self.listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target, timeout=5)
            upstream.settimeout(None)
            with self.lock:
                self.pipes += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        self.listener.close()
        with self.lock:
            pipes, self.pipes = self.pipes, []
        for s in pipes:
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # reset
                s.close()
            except OSError:
                pass


def wait_until_go() -> None:
    """Mark the start, then work until the test says go (a heartbeat row), mark the end."""
    from broker import db as broker_db
    from worker import context as worker_context

    with worker_context.connection() as conn:
        heartbeats.beat(conn, "redis-cut-job-started")
    deadline = time.monotonic() + 60
    with broker_db.connect(os.environ["DATABASE_URL"]) as conn:
        while time.monotonic() < deadline:
            if conn.execute("SELECT 1 FROM heartbeats WHERE name = 'redis-cut-go'").fetchone():
                break
            time.sleep(0.05)
    with worker_context.connection() as conn:
        heartbeats.beat(conn, "redis-cut-job-finished")


def mark_second() -> None:
    from worker import context as worker_context

    with worker_context.connection() as conn:
        heartbeats.beat(conn, "redis-cut-second-job")


def test_a_worker_rides_out_redis_going_away_while_a_job_runs(env, database_url, redis_url, conn):
    """Found by the chaos bench: Redis restarted while a delivery job ran, the horse finished, and RQ,
    reading the job's status from the unreachable Redis, quit the worker (exit 1): every busy worker
    dyno would crash on a Redis restart or failover. The worker now waits for Redis and goes on."""
    parts = urlsplit(redis_url)
    proxy = CuttableProxy(parts.hostname, parts.port)
    through_proxy = urlunsplit(parts._replace(netloc=f"127.0.0.1:{proxy.port}"))
    direct = redisconn.connect(redis_url)
    jobs.queue("control", direct).enqueue("tests.test_rq_worker.wait_until_go", job_timeout=120)
    lines: list[str] = []
    process = subprocess.Popen([sys.executable, "-m", "worker", "--burst"], cwd=ROOT,
                               env=dict(env, REDIS_URL=through_proxy, PYTHONUNBUFFERED="1",
                                        PATH=f"{Path(sys.executable).parent}:/usr/bin:/bin"),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    reader = threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True)
    reader.start()

    def wait_for(what, check, seconds=60):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if check():
                return
            if process.poll() is not None:
                reader.join(5)
                raise AssertionError(f"the worker exited ({process.returncode}) before {what}:\n" + "".join(lines))
            time.sleep(0.05)
        raise AssertionError(f"no {what} within {seconds} s:\n" + "".join(lines))

    def beat(name):
        return lambda: any(row["name"] == name for row in heartbeats.every(conn))

    try:
        wait_for("job start", beat("redis-cut-job-started"))
        proxy.cut()
        heartbeats.beat(conn, "redis-cut-go")
        wait_for("job end", beat("redis-cut-job-finished"))
        wait_for("the worker saying it waits for Redis", lambda: any("waiting for Redis" in line for line in lines))
        jobs.queue("control", direct).enqueue("tests.test_rq_worker.mark_second")
        proxy.restore()
        wait_for("the next job", beat("redis-cut-second-job"))
        process.wait(60)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)
        proxy.cut()
    reader.join(5)
    assert process.returncode == 0, "".join(lines)
    # The job that ended while Redis was away did its work: nothing calls it failed, nothing quit.
    # (RQ's own dequeue logs its reconnection tries as errors; those are not about the job.)
    output = "".join(lines)
    assert "exception raised while executing" not in output and "unhandled exception" not in output, output
    assert any("Redis answers again" in line for line in lines), output
