"""The RQ worker class used by ``python -m worker``."""

from __future__ import annotations

import logging

from rq import Queue
from rq.exceptions import InvalidJobOperation
from rq.job import Job
from rq.registry import StartedJobRegistry
from rq.worker import HerokuWorker

from broker import logs

log = logging.getLogger(__name__)


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
