"""The job the clock enqueues every tick."""

from __future__ import annotations

import logging

from worker import context

log = logging.getLogger(__name__)

HEARTBEAT_SQL = """
INSERT INTO heartbeats (name, beat_at) VALUES ('tick', now())
ON CONFLICT (name) DO UPDATE SET beat_at = excluded.beat_at
"""


def run(slot: int) -> None:
    """Record that a tick reached a worker: the clock, Redis and a worker all work."""
    with context.connection() as conn:
        with conn.transaction():
            conn.execute(HEARTBEAT_SQL)
    log.info("tick slot=%d", slot)
