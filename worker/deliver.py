"""The delivery job: one worker process keeps many drains fed.

Like the poll job, it claims due drains (leases in PostgreSQL) and delivers
to them on a bounded thread pool until nothing is due or its budget is spent;
the clock's next tick enqueues it again. See :mod:`broker.delivery`.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

import requests
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from broker import db, delivery
from broker.vault import Vault
from worker import context

log = logging.getLogger(__name__)

CLAIM_BUDGET_SECONDS = 45
THREADS = 16
MAX_CONNECTIONS = 6


def run_batch(slot: int, budget_seconds: float = CLAIM_BUDGET_SECONDS) -> dict:
    settings = context.settings()
    pool = ConnectionPool(db.conninfo(settings.database_url, "forgedrain-deliver"), min_size=1,
                          max_size=MAX_CONNECTIONS, timeout=30, open=False, name=f"deliver-{slot}",
                          kwargs={"autocommit": True, "row_factory": dict_row})
    pool.open(wait=True, timeout=30)
    local = threading.local()

    def session() -> requests.Session:
        current = getattr(local, "session", None)
        if current is None:
            current = local.session = requests.Session()
        return current

    deliverer = delivery.Deliverer(pool.connection, session, Vault(settings.fernet_keys),
                                   allow_private=settings.allow_private_drains)
    totals = {"drains": 0, "delivered": 0, "dropped": 0, "errors": 0}
    deadline = time.monotonic() + budget_seconds
    in_flight: set = set()
    try:
        with ThreadPoolExecutor(THREADS, thread_name_prefix=f"deliver-{slot}") as executor:
            while True:
                claimed = []
                free = THREADS - len(in_flight)
                if free > 0 and time.monotonic() < deadline:
                    with pool.connection() as conn:
                        claimed = delivery.claim(conn, free)
                for drain in claimed:
                    in_flight.add(executor.submit(deliverer.deliver, drain))
                if not in_flight:
                    break
                done, in_flight = wait(in_flight, timeout=0.5, return_when=FIRST_COMPLETED)
                for future in done:
                    try:
                        outcome = future.result()
                    except Exception:  # noqa: BLE001 — one drain's bug must not stop the others
                        log.exception("delivery crashed")
                        totals["errors"] += 1
                        continue
                    totals["drains"] += 1
                    totals["delivered"] += outcome.delivered
                    totals["dropped"] += outcome.dropped
                    totals["errors"] += len(outcome.errors)
    finally:
        pool.close()
    log.info("delivery batch slot=%d drains=%d delivered=%d dropped=%d errors=%d", slot, totals["drains"],
             totals["delivered"], totals["dropped"], totals["errors"])
    return totals
