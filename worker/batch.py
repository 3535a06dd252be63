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


def run_leased(*, threads: int, budget_seconds: float, claim: Callable[[int], list],
               work: Callable[[dict], object], tally: Callable[[object | None], None],
               idle_wait: Callable[[float], float | None] = lambda deadline: None, name: str) -> None:
    """Run ``work`` on every row ``claim`` leases; ``tally`` gets each outcome (None if it crashed).

    ``idle_wait(deadline)`` may return seconds to sleep when nothing is due but
    something is about to be, instead of ending the job.
    """
    deadline = time.monotonic() + budget_seconds
    in_flight: set[Future] = set()

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
            claimed = claim(free) if free > 0 and time.monotonic() < deadline else []
            for row in claimed:
                in_flight.add(executor.submit(work, row))
            if not in_flight:
                pause = idle_wait(deadline)
                if pause is None:
                    return
                time.sleep(pause)
                continue
            done, in_flight = wait(in_flight, timeout=0.5, return_when=FIRST_COMPLETED)
            for future in done:
                settle(future)
            if not claimed and time.monotonic() >= deadline:
                done, _ = wait(in_flight)
                for future in done:
                    settle(future)
                return
