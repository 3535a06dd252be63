"""README promise (Processes, worker/clock.py): two clocks running at once for a while (a deploy's
overlap) do no harm: each tick slot's job is enqueued once (its id names the slot), so the tick runs
once per slot however many clocks ask.

The two clocks are two callers of ``worker.clock.tick`` on one Redis, given the moment they tick
(``now``, which the clock accepts); a real RQ worker runs what they enqueued.
"""

from __future__ import annotations

import logging
import re

import pytest
from rq import SimpleWorker

from broker import config, jobs, redisconn
from worker import clock, context

TICK_SECONDS = 5
SLOT = 360_000_000  # a slot far from now: no other test's tick shares it


@pytest.fixture
def redis(redis_url, env):
    context.install(config.load({**env, "CLOCK_TICK_SECONDS": str(TICK_SECONDS)}, testing=True))
    yield redisconn.connect(redis_url)
    context.install(None)


def run_queued(redis_url: str) -> None:
    """A real worker runs what is queued, then stops."""
    connection = redisconn.connect(redis_url, socket_timeout=None)
    queues = [jobs.queue(name, connection) for name in jobs.QUEUE_NAMES]
    SimpleWorker(queues, connection=connection, serializer=jobs.SERIALIZER).work(burst=True)


def ticks_run(caplog) -> list[int]:
    return [int(m.group(1)) for r in caplog.records if r.name == "worker.tick"
            for m in [re.match(r"tick slot=(\d+) ", r.getMessage())] if m]


def test_two_clocks_ticking_one_slot_while_its_job_waits_enqueue_it_once(redis, redis_url, caplog):
    caplog.set_level(logging.INFO, logger="worker.tick")
    start = SLOT * TICK_SECONDS
    assert clock.tick(redis, TICK_SECONDS, now=start + 0.001) is True  # the first clock
    assert clock.tick(redis, TICK_SECONDS, now=start + 0.004) is False  # the second, a moment later
    assert [j.id for j in jobs.queue("control", redis).jobs] == [f"tick-{SLOT}"]
    run_queued(redis_url)
    assert ticks_run(caplog) == [SLOT]
    # The next slot is the next slot's, whichever clock gets there first.
    assert clock.tick(redis, TICK_SECONDS, now=start + TICK_SECONDS + 0.002) is True
    assert clock.tick(redis, TICK_SECONDS, now=start + TICK_SECONDS + 0.001) is False
    run_queued(redis_url)
    assert ticks_run(caplog) == [SLOT, SLOT + 1]



def test_a_clock_that_ticks_a_slot_after_the_other_clocks_tick_of_it_ran_enqueues_nothing(redis, redis_url, caplog):
    """A new clock starting mid-slot (a deploy) ticks at once; the old one ticked that slot at its
    start and a worker has run it already: the slot's id is still taken, so it is not ticked again."""
    caplog.set_level(logging.INFO, logger="worker.tick")
    start = SLOT * TICK_SECONDS
    assert clock.tick(redis, TICK_SECONDS, now=start + 0.001) is True  # the old clock, at the slot's start
    run_queued(redis_url)
    assert ticks_run(caplog) == [SLOT]
    assert clock.tick(redis, TICK_SECONDS, now=start + 2.5) is False  # the new clock's first tick, same slot
    assert jobs.queue("control", redis).jobs == []
    run_queued(redis_url)
    assert ticks_run(caplog) == [SLOT]  # one tick per slot
    # The next slot is ticked as usual, by whichever clock asks first.
    assert clock.tick(redis, TICK_SECONDS, now=start + TICK_SECONDS + 0.001) is True
    run_queued(redis_url)
    assert ticks_run(caplog) == [SLOT, SLOT + 1]
