"""The job the clock enqueues every tick: find due work and enqueue it."""

from __future__ import annotations

import logging

from broker import jobs, redisconn, resources
from worker import context

log = logging.getLogger(__name__)

HEARTBEAT_SQL = """
INSERT INTO heartbeats (name, beat_at) VALUES ('tick', now())
ON CONFLICT (name) DO UPDATE SET beat_at = excluded.beat_at
"""

# Deprovisioned resources keep their rows (and audit trail) this long.
PURGE_AFTER_DAYS = 30
# Enough for any realistic burst of provisions; the rest wait one tick.
PROVISIONS_PER_TICK = 500


def run(slot: int) -> None:
    """Record the tick, re-enqueue due asynchronous provisions, purge old resources."""
    settings = context.settings()
    with context.connection() as conn:
        with conn.transaction():
            conn.execute(HEARTBEAT_SQL)
        due = resources.due_provisions(conn, PROVISIONS_PER_TICK)
        with conn.transaction():
            purged = resources.purge_deprovisioned(conn, PURGE_AFTER_DAYS)
    if due:
        connection = redisconn.connect(settings.redis_url)
        for resource_id in due:
            jobs.enqueue_provision(connection, str(resource_id))
    log.info("tick slot=%d provisions=%d purged=%d", slot, len(due), purged)

