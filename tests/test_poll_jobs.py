"""The poll job and the clock's tick with real RQ workers, the Forge fake and a shared budget."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from rq import SimpleWorker
from rq.job import Job

from broker import config, jobs, polling, redisconn
from broker.vault import Vault
from tests.fakes.forge import ForgeFake
from tests.fakes.server import LocalServer
from tests.support.polling import (APP, EMAIL, ENV, TOKEN, add_resource, add_source, identity,
                                   outbox_records, source_row)
from worker import context, poll, tick

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


@pytest.fixture
def vault(settings):
    return Vault(settings.fernet_keys)


def install(env: dict, **overrides) -> config.Settings:
    settings = config.load({**env, **{k: str(v) for k, v in overrides.items()}}, testing=True)
    context.install(settings)
    return settings


@pytest.fixture(autouse=True)
def _uninstall():
    yield
    context.install(None)


def burst(redis_url: str) -> None:
    connection = redisconn.connect(redis_url, socket_timeout=None)
    queues = [jobs.queue(name, connection) for name in jobs.QUEUE_NAMES]
    SimpleWorker(queues, connection=connection, serializer=jobs.SERIALIZER).work(burst=True)


def start_worker(env: dict, **overrides) -> subprocess.Popen:
    process_env = {**env, **{k: str(v) for k, v in overrides.items()},
                   "PATH": f"{BIN}:/usr/bin:/bin", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "worker", "--burst"], cwd=ROOT, env=process_env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def test_the_tick_queues_poll_jobs_only_while_sources_are_due(env, conn, redis_url, vault):
    install(env)
    assert tick.run(1) == {"due_sources": 0, "poll_jobs": 0, "due_drains": 0, "delivery_jobs": 0}
    resource_id = add_resource(conn)
    add_source(conn, vault, resource_id)
    assert tick.run(2) == {"due_sources": 1, "poll_jobs": 1, "due_drains": 0, "delivery_jobs": 0}
    assert tick.run(3)["poll_jobs"] == 0  # still queued: not queued twice
    queued = jobs.queue("poll", redisconn.connect(redis_url)).jobs
    assert [j.id for j in queued] == ["poll-batch-0"]


def test_the_tick_queues_one_poll_job_per_poll_threads_due_sources_up_to_poll_batches(env, conn, redis_url,
                                                                                      vault):
    """FORGE_POLL_THREADS due sources fill one job; the tick keeps as many jobs queued as the due
    sources fill, and never more than FORGE_POLL_BATCHES (the count of due sources stops there)."""
    install(env, FORGE_POLL_THREADS=2, FORGE_POLL_BATCHES=3)
    connection = redisconn.connect(redis_url)

    def queued() -> list[str]:
        return [j.id for j in jobs.queue("poll", connection).jobs]

    resource_id = add_resource(conn)
    apps = iter(f"app-{i:02d}" for i in range(20))
    add_source(conn, vault, resource_id, app_id=next(apps))
    assert tick.run(1) == {"due_sources": 1, "poll_jobs": 1, "due_drains": 0, "delivery_jobs": 0}
    assert queued() == ["poll-batch-0"]  # one source due: one job

    connection.flushdb()  # the same tick again, from an empty queue
    for _ in range(2):
        add_source(conn, vault, resource_id, app_id=next(apps))
    assert tick.run(2) == {"due_sources": 3, "poll_jobs": 2, "due_drains": 0, "delivery_jobs": 0}
    assert queued() == ["poll-batch-0", "poll-batch-1"]  # FORGE_POLL_THREADS + 1 due: two jobs

    for _ in range(8):
        add_source(conn, vault, resource_id, app_id=next(apps))
    # 11 due: the count stops at FORGE_POLL_THREADS × FORGE_POLL_BATCHES, and the two jobs still
    # queued are not queued twice: only the third is new.
    assert tick.run(3) == {"due_sources": 6, "poll_jobs": 1, "due_drains": 0, "delivery_jobs": 0}
    assert queued() == ["poll-batch-0", "poll-batch-1", "poll-batch-2"]
    assert tick.run(4)["poll_jobs"] == 0  # never a fourth job, and none queued twice
    assert queued() == ["poll-batch-0", "poll-batch-1", "poll-batch-2"]


def test_a_flushed_redis_loses_no_work(env, conn, redis_url, vault):
    # Records visible at once and none late: every record of the polled stretch is expected.
    fake = ForgeFake(seed=21, rate_limit=10_000, prompt_delay_seconds=0)
    fake.add_app(APP, [ENV], EMAIL, TOKEN, records_per_minute=5, late_fraction=0)
    with LocalServer(fake.wsgi()) as server:
        install(env, FORGE_API_URL=server.url)
        source_id = add_source(conn, vault, add_resource(conn))
        first = source_row(conn, source_id)["checkpoint"]
        tick.run(1)
        assert [j.id for j in jobs.queue("poll", redisconn.connect(redis_url)).jobs] == ["poll-batch-0"]
        redisconn.connect(redis_url).flushdb()  # the queued poll job is gone
        assert fake.calls == []  # nothing was polled before the flush
        tick.run(2)  # PostgreSQL still says the source is due
        burst(redis_url)
    row = source_row(conn, source_id)
    assert row["last_success_at"] is not None
    assert datetime.now(timezone.utc) - row["checkpoint"] < timedelta(minutes=3)
    expected = fake.records(APP, ENV, first, row["checkpoint"])
    assert len(expected) > 100  # an hour at 5 a minute
    counts = Counter(map(identity, outbox_records(conn, source_id)))
    assert set(counts) == set(map(identity, expected))
    assert max(counts.values()) == 1, "a record was stored twice"


class Gate:
    """WSGI middleware holding each request until ``parties`` are in flight at once (or a deadline
    passes), and noting the most ever in flight: a job that polls one source after another never
    opens it, and one that polls more at once than it has threads shows it."""

    def __init__(self, app, parties: int, deadline_seconds: float = 60.0):
        self.app, self.parties, self.deadline_seconds = app, parties, deadline_seconds
        self.in_flight = self.peak = 0
        self.opened = False
        self.condition = threading.Condition()

    def __call__(self, environ, start_response):
        with self.condition:
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
            if self.in_flight >= self.parties:
                self.opened = True
                self.condition.notify_all()
            self.condition.wait_for(lambda: self.opened, timeout=self.deadline_seconds)
        try:
            return self.app(environ, start_response)
        finally:
            with self.condition:
                self.in_flight -= 1


def test_one_poll_job_serves_many_sources_at_once(env, conn, redis_url, vault):
    """Judged by what the Forge fake saw, not by the clock: FORGE_POLL_THREADS requests in flight
    at once (the gate opens only then), never more, and every source polled. How many sources a
    worker keeps on schedule is measured by bench/capacity.py."""
    fake = ForgeFake(seed=22, rate_limit=10_000)
    apps = [f"app-{i:02d}" for i in range(40)]
    for app_id in apps:
        fake.add_app(app_id, [ENV], EMAIL, TOKEN, records_per_minute=2)
    gate = Gate(fake.wsgi(), parties=20)
    with LocalServer(gate) as server:
        install(env, FORGE_API_URL=server.url, FORGE_POLL_THREADS=20)
        resource_id = add_resource(conn)
        for app_id in apps:
            add_source(conn, vault, resource_id, app_id=app_id, checkpoint_ago=timedelta(minutes=10))
        totals = poll.run_batch(0, budget_seconds=120)  # ends when nothing is due, long before that
    assert gate.opened, f"at most {gate.peak} requests were ever in flight at once"
    assert gate.peak == 20  # the pool's bound
    assert totals["polls"] == 40 and totals["errors"] == 0
    waiting = conn.execute("SELECT count(*) AS n FROM sources WHERE last_success_at IS NULL").fetchone()["n"]
    assert waiting == 0
    assert {call.path.rsplit("/", 1)[1] for call in fake.calls} == set(apps)


@pytest.mark.parametrize("state", ["failed", "deprovisioned"])
def test_a_poll_job_does_not_wait_for_a_due_source_it_may_not_claim(env, conn, redis_url, vault, state):
    """A source left active and due on a dead resource is never claimed, so it is not "about to fall
    due" either: the job ends at once instead of waiting for it until its budget (here an hour) is
    spent."""
    install(env)
    dead = add_resource(conn)
    add_source(conn, vault, dead)
    conn.execute("UPDATE resources SET state = %s WHERE id = %s", (state, dead))
    assert polling.seconds_until_due(conn) is None  # what the job asks before it waits
    results = []
    job = threading.Thread(target=lambda: results.append(poll.run_batch(0, budget_seconds=3600)), daemon=True)
    job.start()
    job.join(120)
    assert not job.is_alive(), "the job is waiting for a source it may not claim"
    assert results[0]["polls"] == 0


def most_in_any_period(times: list[float], period: float) -> int:
    """The most of ``times`` that fall in any half-open window [t, t + period)."""
    times, most, start = sorted(times), 0, 0
    for end, moment in enumerate(times):
        while times[start] <= moment - period:
            start += 1
        most = max(most, end - start + 1)
    return most


def test_four_workers_in_parallel_never_exceed_the_apps_limit(env, conn, redis_url, vault):
    """The broker's own limit, FORGE_RATE_LIMIT (25 calls per period), shared by four worker
    processes, judged on when the calls reached the Forge fake; the fake's own limit (Atlassian's
    30) never answers 429. How much of the budget a catch-up uses is measured by bench/catchup.py."""
    # The period is compressed to 2 s; Atlassian's 30 calls per period are the fake's.
    fake = ForgeFake(seed=23, rate_limit=30, rate_period=2.0, page_size=200)
    environments = [f"env-{i}" for i in range(8)]
    fake.add_app(APP, environments, EMAIL, TOKEN, records_per_minute=3)
    with LocalServer(fake.wsgi()) as server:
        overrides = dict(FORGE_API_URL=server.url, FORGE_RATE_LIMIT=25, FORGE_RATE_PERIOD_SECONDS=2,
                         FORGE_POLL_THREADS=4)
        install(env, **overrides)
        resource_id = add_resource(conn)
        for environment in environments:
            add_source(conn, vault, resource_id, environment_id=environment, checkpoint_ago=timedelta(days=2))
        connection = redisconn.connect(redis_url)
        queued = [jobs.queue("poll", connection).enqueue("worker.poll.run_batch", slot, 8.0, job_timeout=120)
                  for slot in range(4)]
        workers = [start_worker(env, **overrides) for _ in range(4)]
        outputs = [w.communicate(timeout=120)[0] for w in workers]
    assert [w.returncode for w in workers] == [0] * 4, outputs
    ran = [Job.fetch(job.id, connection=connection, serializer=jobs.SERIALIZER) for job in queued]
    assert [job.get_status() for job in ran] == ["finished"] * 4, outputs
    # The workers polled at the same time, on RQ's own record of when each job ran.
    overlapping = max(sum(1 for other in ran if other.started_at <= job.started_at < other.ended_at)
                      for job in ran)
    assert overlapping >= 2, "the jobs ran one after another: the test proves nothing"
    statuses = Counter(call.status for call in fake.calls)
    assert statuses[429] == 0, outputs
    assert statuses[200] > 25, "the budget was never reached: the test proves nothing"
    assert most_in_any_period([call.time for call in fake.calls], 2.0) <= 25, statuses


def test_a_worker_killed_mid_poll_loses_nothing_and_stores_nothing_twice(env, conn, redis_url, vault):
    # Records visible at once: this test is about the kill, not about records the sweep picks up later.
    fake = ForgeFake(seed=24, rate_limit=10_000, page_size=50, latency=0.1, prompt_delay_seconds=0)
    fake.add_app(APP, [ENV], EMAIL, TOKEN, records_per_minute=20, late_fraction=0)
    with LocalServer(fake.wsgi()) as server:
        overrides = dict(FORGE_API_URL=server.url, FORGE_POLL_THREADS=1, FORGE_RATE_LIMIT=30,
                         FORGE_RATE_PERIOD_SECONDS=0.1)
        install(env, **overrides)
        source_id = add_source(conn, vault, add_resource(conn), checkpoint_ago=timedelta(hours=2))
        first = conn.execute("SELECT checkpoint FROM sources").fetchone()["checkpoint"]
        jobs.queue("poll", redisconn.connect(redis_url)).enqueue("worker.poll.run_batch", 0, 30.0,
                                                                 job_timeout=120)
        worker = start_worker(env, **overrides)
        deadline = time.monotonic() + 30
        while len(fake.calls) < 12 and time.monotonic() < deadline:
            time.sleep(0.05)
        # SIGKILL the whole worker: its parent and the work horse (in its own process group).
        horses = subprocess.run(["pgrep", "-P", str(worker.pid)], capture_output=True, text=True).stdout.split()
        for pid in horses:
            os.killpg(int(pid), signal.SIGKILL)
        os.killpg(worker.pid, signal.SIGKILL)
        worker.communicate(timeout=30)
        mid = conn.execute("SELECT count(*) AS n FROM outbox").fetchone()["n"]
        assert mid > 0, "killed before anything was stored: the test proves nothing"
        row = conn.execute("SELECT checkpoint, lease_token FROM sources").fetchone()
        assert row["lease_token"] is not None  # the dead poll still holds its lease
        # The lease expires; the next tick's job takes the source back and finishes (with no
        # latency now: it only served to land the kill mid-poll).
        fake.latency = 0
        conn.execute("UPDATE sources SET lease_expires_at = now() - interval '1 second'")
        tick.run(1)
        burst(redis_url)
    final = conn.execute("SELECT checkpoint FROM sources WHERE id = %s", (source_id,)).fetchone()["checkpoint"]
    assert datetime.now(timezone.utc) - final < timedelta(minutes=3)
    stored = outbox_records(conn, source_id)
    counts = Counter(map(identity, stored))
    assert max(counts.values()) == 1, "a record was stored twice"
    expected = fake.records(APP, ENV, first, final)
    in_range = {identity(r) for r in stored if first <= polling.record_time(r, first) < final}
    assert in_range == set(map(identity, expected))
