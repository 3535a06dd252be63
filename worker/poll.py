"""The poll job: one worker process keeps many Forge sources on schedule.

Polling is mostly waiting on Atlassian, so a job claims due sources in small
batches and polls them on a bounded thread pool, each poll fenced by its own
lease (:mod:`broker.polling`). It keeps claiming until nothing is due or its
time budget is spent, then exits; the clock's next tick enqueues it again.

Timeouts nest: HTTP read (30 s) < a source's time box (20 s of starting
calls, plus the call in flight) < this job's claiming budget (45 s) plus one
time box < ``job_timeout`` (150 s) < the lease (180 s). A job killed outright
leaves leases that expire and are claimed again by a later job.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from datetime import timedelta

import requests
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from broker import db, polling, redisconn
from broker.forge import ForgeClient
from broker.polling import PollSettings, Poller
from broker.ratelimit import RateLimiter
from broker.vault import Vault
from worker import context

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
            forge_client = local.client = ForgeClient(settings.forge_api_url, requests.Session())
        return forge_client

    return Poller(
        connect, client,
        RateLimiter(redis_connection, settings.forge_rate_limit, settings.forge_rate_period_seconds),
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
    pool = ConnectionPool(
        db.conninfo(settings.database_url, "forgedrain-poll"), min_size=1,
        max_size=min(threads, MAX_CONNECTIONS) + 1, timeout=30,
        kwargs={"autocommit": True, "row_factory": dict_row}, open=False, name=f"poll-{slot}",
    )
    pool.open(wait=True, timeout=30)
    poller = poller_for(settings, pool.connection, redisconn.connect(settings.redis_url))
    totals = {"polls": 0, "calls": 0, "stored": 0, "errors": 0}
    deadline = time.monotonic() + budget_seconds
    in_flight: set[Future] = set()
    try:
        with ThreadPoolExecutor(threads, thread_name_prefix=f"poll-{slot}") as executor:
            while True:
                free = threads - len(in_flight)
                claimed = []
                if free > 0 and time.monotonic() < deadline:
                    with pool.connection() as conn:
                        claimed = polling.claim(conn, free, poller.settings.lease_seconds)
                for source in claimed:
                    in_flight.add(executor.submit(poller.poll, source))
                if not in_flight:
                    wait_for = _soon_due(pool, deadline)
                    if wait_for is None:
                        break
                    time.sleep(wait_for)
                    continue
                done, in_flight = wait(in_flight, timeout=0.5, return_when=FIRST_COMPLETED)
                for future in done:
                    _count(future, totals)
                if not claimed and time.monotonic() >= deadline:
                    for future in in_flight:
                        _count_blocking(future, totals)
                    in_flight = set()
                    break
    finally:
        pool.close()
    log.info("poll batch slot=%d polls=%d calls=%d stored=%d errors=%d", slot, totals["polls"],
             totals["calls"], totals["stored"], totals["errors"])
    return totals


def _soon_due(pool: ConnectionPool, deadline: float) -> float | None:
    """Seconds until the next source falls due, if that is soon and within the budget."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        return None
    with pool.connection() as conn:
        row = conn.execute(
            "SELECT EXTRACT(EPOCH FROM next_poll_at - now()) AS wait FROM sources "
            "WHERE state = 'active' AND (lease_expires_at IS NULL OR lease_expires_at < now()) "
            "ORDER BY next_poll_at LIMIT 1"
        ).fetchone()
    if row is None or row["wait"] is None:
        return None
    wait = row["wait"]
    wait = max(float(wait), 0.05)
    return wait if wait <= min(SOON_DUE_SECONDS, remaining) else None


def _count(future: Future, totals: dict) -> None:
    try:
        outcome = future.result()
    except Exception:  # noqa: BLE001 — one source's bug must not stop the others
        log.exception("poll crashed")
        totals["errors"] += 1
        return
    totals["polls"] += 1
    totals["calls"] += outcome.calls
    totals["stored"] += outcome.stored
    totals["errors"] += len(outcome.errors)


def _count_blocking(future: Future, totals: dict) -> None:
    future.exception()  # waits
    _count(future, totals)
