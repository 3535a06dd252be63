"""The worker class ``python -m worker`` runs, with a real Redis and PostgreSQL."""

from __future__ import annotations

import logging

from rq import SimpleWorker

from broker import config, heartbeats, jobs, redisconn
from worker import context
from worker.rq_worker import Worker


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
