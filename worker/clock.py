"""``python -m worker.clock``: the scheduler process (Procfile ``clock``, one dyno).

Every ``CLOCK_TICK_SECONDS`` it enqueues one ``worker.tick.run`` job on the
``control`` queue. The job id names the tick's time slot and is enqueued with
``unique=True``, and a finished tick keeps its id for a slot's length, so two
clocks running at once for a while (a deploy overlap) enqueue and run each slot
once, whether the second asks while the slot's job waits or after it ran. The
clock itself does no work and holds no state: a restart, early or late, costs
at most one tick.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time

import redis

from broker import config, jobs, logs, redisconn

log = logging.getLogger("worker.clock")


def tick(connection: redis.Redis, tick_seconds: int, now: float | None = None) -> bool:
    """Enqueue the tick job for the slot ``now`` falls in; False if it already was."""
    slot = int((time.time() if now is None else now) // tick_seconds)
    job = jobs.enqueue_unique(
        connection,
        "control",
        "worker.tick.run",
        slot,
        job_id=f"tick-{slot}",
        # A tick that waited longer than its period is stale: the next one covers it.
        ttl=tick_seconds,
        # A finished tick keeps its id for a slot's length, past the end of its slot: a clock asking
        # later in the slot (a second one starting mid-slot during a deploy) finds the slot done.
        result_ttl=tick_seconds,
        job_timeout=max(tick_seconds, 30),
    )
    return job is not None


def run_forever(connection: redis.Redis, tick_seconds: int, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            if tick(connection, tick_seconds):
                log.debug("tick enqueued")
        except redis.RedisError as exc:
            # Redis is down or failing over: say so and try again next tick.
            log.warning("tick not enqueued: redis %s", type(exc).__name__)
        now = time.time()
        stop.wait(tick_seconds - (now % tick_seconds))


def main() -> int:
    settings = config.load_or_exit()
    logs.configure(settings.log_level)
    stop = threading.Event()

    def request_stop(signum, frame):
        log.info("clock stopping signal=%s", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    log.info("clock started tick_seconds=%d", settings.clock_tick_seconds)
    run_forever(redisconn.connect(settings.redis_url), settings.clock_tick_seconds, stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
