"""The shape poll and delivery jobs share: claim leased work, run it on a bounded thread pool.

A job claims up to as many rows as it has free threads (the claim leases them
in PostgreSQL), runs each on the pool, and claims again as threads free up,
until nothing is due and nothing is in flight, or its claiming budget is
spent; then it waits for what is in flight and returns.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Callable

from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from broker import db

log = logging.getLogger(__name__)


def job_pool(database_url: str, application_name: str, max_size: int) -> ConnectionPool:
    """A connection pool for one job, opened in the work horse (never before a fork)."""
    pool = ConnectionPool(db.conninfo(database_url, application_name), min_size=1, max_size=max_size,
                          timeout=30, kwargs={"autocommit": True, "row_factory": dict_row}, open=False,
                          name=application_name)
    pool.open(wait=True, timeout=30)
    return pool


# With threads free, look for newly due rows this often (a row that falls due waits at most this).
CLAIM_EVERY_SECONDS = 0.1
BUSY_WAIT_SECONDS = 0.5


def run_leased(*, threads: int, budget_seconds: float, claim: Callable[[int], list],
               work: Callable[[dict], object], tally: Callable[[object | None], None],
               idle_wait: Callable[[float], float | None] = lambda deadline: None,
               closing_claim: Callable[[int], list] | None = None, name: str) -> None:
    """Run ``work`` on every row ``claim`` leases; ``tally`` gets each outcome (None if it crashed).

    ``idle_wait(deadline)`` may return seconds to sleep when nothing is due but
    something is about to be, instead of ending the job. Once the budget is
    spent the job stops claiming and waits for its rows in flight; meanwhile
    ``closing_claim`` (when given) may still lease quick rows on the free
    threads, so the threads that wait for slow rows are not all the job does
    in its last seconds — but only while rows claimed within the budget are
    still in flight, so the job ends in bounded time.
    """
    deadline = time.monotonic() + budget_seconds
    in_flight: set[Future] = set()
    budgeted: set[Future] = set()  # rows claimed within the budget, still in flight

    def settle(future: Future) -> None:
        """Tally a finished row. Only what the row's own work raised counts as its crash: an
        exception raised in this thread (RQ's job timeout) goes up, not into the tally."""
        error = future.exception()  # the future is done: this never waits
        if error is not None:  # one row's bug must not stop the others
            log.error("%s crashed", name, exc_info=error)
        tally(None if error is not None else future.result())

    with ThreadPoolExecutor(threads, thread_name_prefix=name) as executor:
        while True:
            free = threads - len(in_flight)
            claimed: list = []
            within = time.monotonic() < deadline
            if free > 0:
                if within:
                    claimed = claim(free)
                elif closing_claim is not None and budgeted:
                    claimed = closing_claim(free)
            for row in claimed:
                future = executor.submit(work, row)
                in_flight.add(future)
                if within:
                    budgeted.add(future)
            if not in_flight:
                pause = idle_wait(deadline)
                if pause is None:
                    return
                time.sleep(pause)
                continue
            looking = free - len(claimed) > 0 and (within or (closing_claim is not None and budgeted))
            done, in_flight = wait(in_flight, timeout=CLAIM_EVERY_SECONDS if looking else BUSY_WAIT_SECONDS,
                                   return_when=FIRST_COMPLETED)
            budgeted -= done
            for future in done:
                settle(future)
