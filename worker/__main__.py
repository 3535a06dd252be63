"""``python -m worker``: one RQ worker on every Forge Drain queue, in priority order.

``--burst`` drains the queues and exits (tests, one-off catch-up runs).
"""

from __future__ import annotations

import argparse
import sys

from broker import config, jobs, logs, redisconn
from worker import context
from worker.rq_worker import Worker


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker")
    parser.add_argument("--burst", action="store_true", help="exit once the queues are empty")
    args = parser.parse_args(argv)
    settings = config.load_or_exit()
    logs.configure(settings.log_level)
    context.install(settings)
    connection = redisconn.connect(settings.redis_url, socket_timeout=None)
    worker = Worker(
        [jobs.queue(name, connection) for name in jobs.QUEUE_NAMES],
        connection=connection,
        serializer=jobs.SERIALIZER,
    )
    # The scheduler component moves delayed retries back onto their queue;
    # RQ lets only one worker at a time act as scheduler (Redis lock).
    worker.work(burst=args.burst, with_scheduler=True, logging_level=settings.log_level)
    return 0


if __name__ == "__main__":
    sys.exit(main())
