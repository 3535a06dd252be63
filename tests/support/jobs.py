"""Jobs that real worker processes run in tests (imported by dotted name)."""

from __future__ import annotations

import time

from broker import heartbeats
from worker import context


def _mark(name: str) -> None:
    with context.connection() as conn:
        heartbeats.beat(conn, name)


def slow(seconds: float) -> None:
    """Mark the start, work for ``seconds``, mark the end."""
    _mark("slow-job-started")
    time.sleep(seconds)
    _mark("slow-job-finished")


def forget_itself() -> None:
    """Delete this job's own record from Redis (as a FLUSHALL would while it runs), then mark."""
    from rq import get_current_job

    job = get_current_job()
    job.connection.delete(job.key)
    _mark("forgot-itself")
