"""The RQ worker class used by ``python -m worker``."""

from __future__ import annotations

import logging
import time

import redis
from rq import Queue
from rq.exceptions import InvalidJobOperation
from rq.job import Job
from rq.registry import StartedJobRegistry
from rq.worker import HerokuWorker

from broker import logs

log = logging.getLogger(__name__)

# Redis unreachable: a restart, a failover, a network blip.
REDIS_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
# Longest pause between tries while waiting for Redis (below Heroku's 30 s shutdown grace).
REDIS_RETRY_MAX_SECONDS = 10.0


class Worker(HerokuWorker):
    """A :class:`HerokuWorker` that gives a running job most of Heroku's 30 s.

    Heroku sends SIGTERM to every process of a dyno at once and SIGKILL 30 s
    later. RQ's default horse dies on that SIGTERM; HerokuWorker's horse ignores
    it and is told to stop ``imminent_shutdown_delay`` seconds after the parent
    hears it (6 s by default). 20 s lets a job finish its batch and commit,
    while leaving time to exit before the SIGKILL. Jobs are idempotent anyway:
    whatever a kill interrupts, the next tick redoes.
    """

    imminent_shutdown_delay = 20

    def perform_job(self, job: Job, queue: Queue) -> bool:
        token = logs.job_id.set(job.id)
        try:
            return super().perform_job(job, queue)
        finally:
            logs.job_id.reset(token)

    def handle_job_success(self, job: Job, queue: Queue, started_job_registry: StartedJobRegistry) -> None:
        try:
            super().handle_job_success(job, queue, started_job_registry)
        except InvalidJobOperation:
            # The job's own record left Redis while it ran (a FLUSHALL, a restart without persistence):
            # its work is done and committed in PostgreSQL, and there is nothing left to clean up. RQ
            # would log it as a failure of a job that succeeded.
            log.warning("job %s finished after its record left Redis; nothing to clean up", job.id)
        except REDIS_DOWN as exc:
            # Redis went away as the job ended: its work is committed all the same (see below).
            log.warning("job %s finished but Redis was unreachable to record it (%s)", job.id, type(exc).__name__)

    # --- Redis going away -----------------------------------------------------------------------
    # RQ quits its worker on any Redis error outside its dequeue (which retries by itself): a job
    # ending while Redis restarts (its status is read from Redis once the work horse exits) made
    # every busy worker dyno crash, and Heroku restarts crashed dynos with a growing delay. The work
    # is in PostgreSQL and every job is idempotent, so the worker waits for Redis and goes on; what
    # the job's own record in Redis missed, the registries' cleanup and the next tick settle.

    def execute_job(self, job: Job, queue: Queue) -> None:
        try:
            super().execute_job(job, queue)
        except REDIS_DOWN as exc:
            log.warning("Redis was unreachable when job %s ended (%s); its work is committed in PostgreSQL",
                        job.id, type(exc).__name__)
            self.wait_for_redis()

    def handle_execution_ended(self, job: Job, queue: Queue, heartbeat_ttl: int) -> None:
        try:
            super().handle_execution_ended(job, queue, heartbeat_ttl)
        except REDIS_DOWN:  # the job's last heartbeat only; its outcome is recorded next, if Redis is back
            pass

    def check_for_suspension(self, burst: bool) -> None:
        try:
            super().check_for_suspension(burst)
        except REDIS_DOWN:
            self.wait_for_redis()

    def heartbeat(self, timeout: int | None = None, pipeline=None) -> None:
        try:
            super().heartbeat(timeout, pipeline)
        except REDIS_DOWN as exc:
            log.warning("worker heartbeat not recorded: Redis unreachable (%s)", type(exc).__name__)

    def maintain_heartbeats(self, job: Job) -> None:
        try:
            super().maintain_heartbeats(job)
        except REDIS_DOWN as exc:  # the work horse goes on; its job's record is only bookkeeping
            log.warning("heartbeat of job %s not recorded: Redis unreachable (%s)", job.id, type(exc).__name__)

    def set_current_job_working_time(self, current_job_working_time: float, pipeline=None) -> None:
        try:
            super().set_current_job_working_time(current_job_working_time, pipeline)
        except REDIS_DOWN:
            self.current_job_working_time = current_job_working_time  # shown in RQ's dashboards only

    def wait_for_redis(self) -> None:
        """Returns once Redis answers, or when the worker is asked to stop; says so at every try."""
        delay = 1.0
        while not self._stop_requested:
            try:
                self.connection.ping()
                log.info("Redis answers again")
                return
            except REDIS_DOWN as exc:
                log.warning("waiting for Redis (%s); next try in %.0f s", type(exc).__name__, delay)
                time.sleep(delay)
                delay = min(delay * 2, REDIS_RETRY_MAX_SECONDS)
