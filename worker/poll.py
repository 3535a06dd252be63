"""The poll job: one worker process keeps many Forge sources on schedule.

Polling is mostly waiting on Atlassian, so a job claims due sources in small
batches and polls them on a bounded thread pool, each poll fenced by its own
lease (:mod:`broker.polling`). It keeps claiming until nothing is due or its
time budget is spent, then exits; the clock's next tick enqueues it again.

Timeouts nest: a source's poll starts new windows for 20 s and reads an open
window's pages for 40 s at most, plus the call in flight (HTTP read 30 s);
this job's claiming budget (45 s) plus one such poll < ``job_timeout``
(150 s) < the lease (180 s). A job killed outright leaves leases that expire
and are claimed again by a later job, which resumes an open window with its
cursor or, if Atlassian refuses it, shrinks the window.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta

from broker import jobs, outbound, polling, ratelimit, redisconn, sources
from broker.forge import ForgeClient
from broker.polling import PollSettings, Poller
from broker.ratelimit import RateLimiter
from broker.vault import Vault
from worker import batch, context

log = logging.getLogger(__name__)

CLAIM_BUDGET_SECONDS = 45
# With nothing due, wait this long at most for a source about to fall due
# (one that yielded for budget, say) instead of leaving it to the next tick;
# longer would keep the worker from delivery jobs.
SOON_DUE_SECONDS = 5.0
MAX_CONNECTIONS = 6
JOB_TIMEOUT_SECONDS = 150


def poller_for(settings, connect, redis_connection) -> Poller:
    local = threading.local()

    def client() -> ForgeClient:
        forge_client = getattr(local, "client", None)
        if forge_client is None:
            forge_client = local.client = ForgeClient(settings.forge_api_url, outbound.session())
        return forge_client

    def called_recently(app_id: str, seconds: float) -> bool:
        with connect() as conn:
            return sources.called_recently(conn, app_id, seconds)

    return Poller(
        connect, client,
        RateLimiter(redis_connection, settings.forge_rate_limit, settings.forge_rate_period_seconds,
                    reserve=ratelimit.OWNER_RESERVE, called_recently=called_recently),
        Vault(settings.fernet_keys),
        PollSettings(lag=timedelta(seconds=settings.poll_lag_seconds),
                     overlap=timedelta(seconds=settings.poll_overlap_seconds)),
    )


def run_batch(slot: int, budget_seconds: float = CLAIM_BUDGET_SECONDS) -> dict:
    """Claim and poll due sources until none is due or the budget is spent."""
    settings = context.settings()
    threads = settings.poll_threads
    # Threads hold a connection only for a page's short transaction, so a few
    # connections serve many threads; Heroku's small plans allow 20 in all.
    pool = batch.job_pool(settings.database_url, f"forgedrain-poll-{slot}", min(threads, MAX_CONNECTIONS) + 1)
    poller = poller_for(settings, pool.connection, redisconn.connect(settings.redis_url))
    totals = {"polls": 0, "calls": 0, "stored": 0, "windows": 0, "shrunk": 0, "unreadable": 0, "errors": 0}

    def claim(free: int) -> list[dict]:
        with pool.connection() as conn:
            return polling.claim(conn, free, poller.settings.lease_seconds)

    redis_connection = redisconn.connect(settings.redis_url)

    def tally(outcome) -> None:
        if outcome is None:
            totals["errors"] += 1
            return
        if outcome.stored:
            # Fresh records go out now, not at the next tick (a no-op while a delivery job is queued).
            jobs.enqueue_delivery(redis_connection, 0, settings.clock_tick_seconds)
        totals["polls"] += 1
        totals["calls"] += outcome.calls
        totals["stored"] += outcome.stored
        totals["windows"] += outcome.windows
        totals["shrunk"] += outcome.shrunk
        totals["unreadable"] += outcome.unreadable
        totals["errors"] += len(outcome.errors)

    try:
        batch.run_leased(threads=threads, budget_seconds=budget_seconds, claim=claim, work=poller.poll,
                         tally=tally, idle_wait=lambda deadline: _soon_due(pool, deadline), name=f"poll-{slot}")
    finally:
        pool.close()
    log.info("poll batch slot=%d polls=%d calls=%d stored=%d windows=%d shrunk=%d unreadable=%d errors=%d",
             slot, totals["polls"], totals["calls"], totals["stored"], totals["windows"], totals["shrunk"],
             totals["unreadable"], totals["errors"])
    return totals


def _soon_due(pool, deadline: float) -> float | None:
    """Seconds until the next source falls due, if that is soon and within the budget."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        return None
    with pool.connection() as conn:
        wait = polling.seconds_until_due(conn)
    if wait is None:
        return None
    wait = max(wait, 0.05)
    return wait if wait <= min(SOON_DUE_SECONDS, remaining) else None
