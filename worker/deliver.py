"""The delivery job: one worker process keeps many drains fed, in two lanes.

Like the poll job, it claims due drains (leases in PostgreSQL, ``SKIP
LOCKED``) and delivers to them on a bounded thread pool until nothing is due
or its claiming budget is spent; the clock's tick keeps up to
``DELIVERY_JOBS`` of them queued (ids ``deliver-0``, ``deliver-1``, …) while
drains are due, so delivery grows with worker processes. See
:mod:`broker.delivery`.

The pool is split in two lanes. A quarter of the threads deliver to drains
whose receivers answer slowly (``send_seconds`` above
:data:`broker.delivery.SLOW_SEND_SECONDS`); the rest deliver to every other
drain. A slow or hostile receiver therefore holds at most a slow-lane thread,
and only until its send's deadline; it can never hold the threads healthy
drains are delivered by. A receiver that turns slow holds a fast thread for
one send (at most the send deadline) and is in the slow lane from then on.
In each lane a resource holds at most a few threads at once, so one tenant's
drains cannot take a whole lane from the others.

When the claiming budget is spent the job stops claiming and waits for its
drains in flight; while slow-lane sends finish, its free threads still take
fast-lane drains, so healthy drains are not left waiting for the job's end.
A job with nothing due lingers 2 s before it ends.

Timeouts nest: a drain's turn (5 s) plus one send's deadline (10 s) < the
lease (90 s); the claiming budget (20 s) plus two turns and sends (the tail)
< ``job_timeout`` (150 s).
"""

from __future__ import annotations

import gc
import logging
import threading
import time

import requests

from broker import delivery
from broker.senders import Wire
from broker.sinks import http, syslog
from broker.vault import Vault
from worker import batch, context

log = logging.getLogger(__name__)

# Short enough that a worker running one delivery job after another still takes ticks and polls
# between them (a worker runs one job at a time).
CLAIM_BUDGET_SECONDS = 20
# With nothing due, a job waits this long for a drain to fall due before it ends.
IDLE_LINGER_SECONDS = 2.0
MAX_CONNECTIONS = 6
# A resource's drains under lease at once, per lane (counted across every job).
FAST_PER_RESOURCE = 4
SLOW_PER_RESOURCE = 2


def slow_threads(threads: int) -> int:
    """The slow lane's share of a job's threads: a quarter, at least one."""
    return max(1, threads // 4)


def run(slot: int, budget_seconds: float = CLAIM_BUDGET_SECONDS) -> dict:
    # Delivery allocates millions of short-lived, acyclic dicts and bytes: the cyclic collector
    # found nothing to free yet cost 10–16 % of the time (bench/forwarding.py). What is imported
    # stays out of collections and young collections come less often.
    thresholds = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    try:
        return _run(slot, budget_seconds)
    finally:  # a job run in-process (SimpleWorker, tests) leaves the collector as it found it
        gc.set_threshold(*thresholds)
        gc.unfreeze()


class Lanes:
    """How many threads each lane may still take; claims a lane's drains within its share."""

    def __init__(self, threads: int):
        self.capacity = {True: slow_threads(threads), False: threads - slow_threads(threads)}
        self.busy = {True: 0, False: 0}
        self.slow_done = 0  # slow-lane drains delivered to, for the job's log line
        self.lock = threading.Lock()

    def claim(self, conn, free: int, *, lanes: tuple[bool, ...] = (False, True)) -> list[tuple[bool, delivery.Claimed]]:
        claimed: list[tuple[bool, delivery.Claimed]] = []
        for slow, per_resource in ((False, FAST_PER_RESOURCE), (True, SLOW_PER_RESOURCE)):
            if slow not in lanes:
                continue
            with self.lock:
                room = min(free - len(claimed), self.capacity[slow] - self.busy[slow])
            rows = delivery.claim(conn, room, slow=slow, per_resource=per_resource)
            with self.lock:
                self.busy[slow] += len(rows)
            claimed += [(slow, row) for row in rows]
        return claimed

    def done(self, slow: bool) -> None:
        with self.lock:
            self.busy[slow] -= 1
            self.slow_done += slow


def _run(slot: int, budget_seconds: float) -> dict:
    settings = context.settings()
    pool = batch.job_pool(settings.database_url, f"forgedrain-deliver-{slot}", MAX_CONNECTIONS)
    local = threading.local()

    def session() -> requests.Session:
        current = getattr(local, "session", None)
        if current is None:
            current = local.session = http.new_session(settings.allow_private_drains)
        return current

    wire = Wire(session, settings.allow_private_drains, syslog.default_context())
    deliverer = delivery.Deliverer(pool.connection, wire, Vault(settings.fernet_keys))
    lanes = Lanes(settings.delivery_threads)
    totals = {"drains": 0, "delivered": 0, "dropped": 0, "errors": 0}

    def claim(free: int) -> list:
        with pool.connection() as conn:
            return lanes.claim(conn, free)

    def closing_claim(free: int) -> list:
        """After the budget, while slow sends finish: healthy drains still get the free threads."""
        with pool.connection() as conn:
            return lanes.claim(conn, free, lanes=(False,))

    idle_since: list[float | None] = [None]

    def idle_wait(deadline: float) -> float | None:
        """Linger a moment when nothing is due: records arriving every second or so then go out
        from this job rather than from a new one (a fork, imports, a pool) each time."""
        now = time.monotonic()
        if now >= deadline:
            return None
        if idle_since[0] is None:
            idle_since[0] = now
        if now - idle_since[0] >= IDLE_LINGER_SECONDS:
            return None
        return batch.CLAIM_EVERY_SECONDS

    def work(item) -> delivery.Outcome:
        idle_since[0] = None
        slow, drain = item
        try:
            return deliverer.deliver(drain)
        finally:
            lanes.done(slow)

    def tally(outcome) -> None:
        if outcome is None:
            totals["errors"] += 1
            return
        totals["drains"] += 1
        totals["delivered"] += outcome.delivered
        totals["dropped"] += outcome.dropped
        totals["errors"] += len(outcome.errors)

    try:
        batch.run_leased(threads=settings.delivery_threads, budget_seconds=budget_seconds, claim=claim,
                         work=work, tally=tally, idle_wait=idle_wait, closing_claim=closing_claim,
                         name=f"deliver-{slot}")
    finally:
        pool.close()
    totals["slow"] = lanes.slow_done
    log.info("delivery job slot=%d drains=%d slow=%d delivered=%d dropped=%d errors=%d", slot, totals["drains"],
             totals["slow"], totals["delivered"], totals["dropped"], totals["errors"])
    return totals
