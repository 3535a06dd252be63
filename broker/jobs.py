"""Queues and the one way to put work on them.

Web and clock enqueue jobs by dotted name (``"worker.tick.run"``), never by
importing ``worker``: the floors stay one-way. Jobs take ids, never secrets or
records, and the JSON serializer keeps it that way (a pickle could smuggle any
object, and unpickling what an untrusted Redis holds is unsafe).
"""

from __future__ import annotations

import redis
from rq import Queue
from rq.exceptions import DuplicateJobError
from rq.job import Job
from rq.serializers import JSONSerializer

# Order is priority: a worker drains "control" (ticks, partner callbacks) before
# polling Forge, and polling before delivery so the outbox fills first.
QUEUE_NAMES = ("control", "poll", "deliver")

SERIALIZER = JSONSerializer


def queue(name: str, connection: redis.Redis) -> Queue:
    if name not in QUEUE_NAMES:
        raise ValueError(f"unknown queue {name!r}")
    return Queue(name, connection=connection, serializer=SERIALIZER)


def enqueue_unique(
    connection: redis.Redis,
    queue_name: str,
    func: str,
    *args: object,
    job_id: str,
    ttl: int,
    job_timeout: int = 60,
    failure_ttl: int | None = None,
    result_ttl: int = 0,
) -> Job | None:
    """Enqueue ``func`` under ``job_id`` unless a job with that id is still known.

    Returns the new job, or ``None`` when a job with that id is queued or running, or
    finished or failed and still kept: a finished job's id is freed after ``result_ttl``
    seconds (at once by default, so work due again is queued again at once), a failed
    one's after ``failure_ttl`` (``ttl`` by default). An id that names a period of time
    (a tick's slot) keeps a finished job for that period, so it runs once in it.
    """
    q = queue(queue_name, connection)
    for _ in range(2):
        try:
            return q.enqueue(
                func,
                *args,
                job_id=job_id,
                unique=True,
                ttl=ttl,
                result_ttl=result_ttl,
                failure_ttl=ttl if failure_ttl is None else failure_ttl,
                job_timeout=job_timeout,
            )
        except DuplicateJobError:
            # A job's hash without a status is no job: a work horse's heartbeat wrote it after Redis
            # lost the real one (FLUSHALL, a restart without persistence), and it never expires. Left
            # alone it would block its id, so a delivery slot would never be queued again.
            if not connection.register_script(FORGET_HUSK)(keys=[Job.key_for(job_id)]):
                return None
    return None


# Deletes KEYS[1] when it is a job hash with no status (atomically, so a real job enqueued at the
# same moment is never deleted); returns 1 when it did.
FORGET_HUSK = """
if redis.call('EXISTS', KEYS[1]) == 1 and redis.call('HEXISTS', KEYS[1], 'status') == 0 then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"""


def enqueue_provision(connection: redis.Redis, resource_id: str) -> Job | None:
    """Queue the completion of an asynchronous provision (at most one per resource at a time)."""
    return enqueue_unique(connection, "control", "worker.partner.complete_provision", resource_id,
                          job_id=f"provision-{resource_id}", ttl=600, job_timeout=60)


def enqueue_config_push(connection: redis.Redis, resource_id: str) -> Job | None:
    """Queue the push of a resource's config to Heroku (at most one per resource at a time).

    The pending push and its back-off live in PostgreSQL: the job retries nothing itself,
    the tick enqueues the push again when it is due."""
    return enqueue_unique(connection, "control", "worker.partner.push_config", resource_id,
                          job_id=f"config-push-{resource_id}", ttl=600, job_timeout=60)


def enqueue_poll_batch(connection: redis.Redis, batch: int, tick_seconds: int) -> Job | None:
    """Queue poll job number ``batch`` unless it is still queued or running."""
    return enqueue_unique(connection, "poll", "worker.poll.run_batch", batch,
                          job_id=f"poll-batch-{batch}", ttl=max(60, tick_seconds * 4),
                          job_timeout=150)


def enqueue_delivery(connection: redis.Redis, slot: int, tick_seconds: int) -> Job | None:
    """Queue delivery job number ``slot`` unless it is still queued or running.

    A failed delivery job (killed by its timeout, say) keeps its id only briefly, so the
    next tick or poll can queue that slot again at once."""
    return enqueue_unique(connection, "deliver", "worker.deliver.run", slot,
                          job_id=f"deliver-{slot}", ttl=max(60, tick_seconds * 4),
                          job_timeout=150, failure_ttl=5)


def enqueue_alerts(connection: redis.Redis, tick_seconds: int) -> Job | None:
    """Queue an alert evaluation (broker.alerts) unless one is still queued or running."""
    return enqueue_unique(connection, "control", "worker.alerts.run", job_id="alerts",
                          ttl=max(60, tick_seconds * 4), job_timeout=120, failure_ttl=5)


def enqueue_alert_webhooks(connection: redis.Redis, tick_seconds: int) -> Job | None:
    """Queue the alert webhook job unless it is still queued or running (one at a time: alerts are rare).

    Undelivered notices and each webhook's back-off live in PostgreSQL: the tick enqueues the job
    again whenever a webhook is due."""
    return enqueue_unique(connection, "deliver", "worker.alert_webhook.run",
                          job_id="alert-webhooks", ttl=max(60, tick_seconds * 4),
                          job_timeout=60, failure_ttl=5)
