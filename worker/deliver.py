"""The delivery job: one worker process keeps many drains fed.

Like the poll job, it claims due drains (leases in PostgreSQL) and delivers
to them on a bounded thread pool until nothing is due or its budget is spent;
the clock's next tick enqueues it again. See :mod:`broker.delivery`.
"""

from __future__ import annotations

import gc
import logging
import threading

import requests

from broker import delivery
from broker.sinks import http, syslog
from broker.vault import Vault
from worker import batch, context

log = logging.getLogger(__name__)

CLAIM_BUDGET_SECONDS = 45
THREADS = 16
MAX_CONNECTIONS = 6


def run_batch(slot: int, budget_seconds: float = CLAIM_BUDGET_SECONDS) -> dict:
    # Delivery allocates millions of short-lived, acyclic dicts and bytes: the cyclic collector
    # found nothing to free yet cost 10–16 % of the time (bench/forwarding.py). What is imported
    # stays out of collections and young collections come less often.
    thresholds = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    try:
        return _run_batch(slot, budget_seconds)
    finally:  # a job run in-process (SimpleWorker, tests) leaves the collector as it found it
        gc.set_threshold(*thresholds)
        gc.unfreeze()


def _run_batch(slot: int, budget_seconds: float) -> dict:
    settings = context.settings()
    pool = batch.job_pool(settings.database_url, f"forgedrain-deliver-{slot}", MAX_CONNECTIONS)
    local = threading.local()

    def session() -> requests.Session:
        current = getattr(local, "session", None)
        if current is None:
            current = local.session = http.new_session(settings.allow_private_drains)
        return current

    deliverer = delivery.Deliverer(pool.connection, session, Vault(settings.fernet_keys),
                                   allow_private=settings.allow_private_drains,
                                   tls_context=syslog.default_context())
    totals = {"drains": 0, "delivered": 0, "dropped": 0, "errors": 0}

    def claim(free: int) -> list[dict]:
        with pool.connection() as conn:
            return delivery.claim(conn, free)

    def tally(outcome) -> None:
        if outcome is None:
            totals["errors"] += 1
            return
        totals["drains"] += 1
        totals["delivered"] += outcome.delivered
        totals["dropped"] += outcome.dropped
        totals["errors"] += len(outcome.errors)

    try:
        batch.run_leased(threads=THREADS, budget_seconds=budget_seconds, claim=claim, work=deliverer.deliver,
                         tally=tally, name=f"deliver-{slot}")
    finally:
        pool.close()
    log.info("delivery batch slot=%d drains=%d delivered=%d dropped=%d errors=%d", slot, totals["drains"],
             totals["delivered"], totals["dropped"], totals["errors"])
    return totals
