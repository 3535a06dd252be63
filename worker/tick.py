"""The job the clock enqueues every tick: find due work and enqueue it."""

from __future__ import annotations

import logging
from typing import Callable

from broker import (activity, alert_webhook, alerts, audit, delivery, heartbeats, ingest, jobs, outbox, polling,
                    redisconn, resources, sources)
from worker import context

log = logging.getLogger(__name__)

# Deprovisioned resources keep their rows (and audit trail) this long, failed ones this long after they failed.
PURGE_AFTER_DAYS = 30
# Old audit entries and gaps go this many rows per delete, each its own short transaction, and at most
# FORGET_CHUNKS deletes per table a minute: no delete holds locks or bloats the WAL for long, and a first
# run over years of history still forgets 600,000 rows a minute.
FORGET_CHUNK_ROWS = 10_000
FORGET_CHUNKS = 10
# Enough for any realistic burst of provisions; the rest wait one tick.
PROVISIONS_PER_TICK = 500
# The outbox is pruned about once a minute, not every tick.
PRUNE_EVERY_SECONDS = 60
# Alerts are evaluated (worker.alerts) about once a minute.
ALERTS_EVERY_SECONDS = 60


def run(slot: int) -> dict:
    """Record the tick, keep poll and delivery jobs queued while sources and drains are due, re-enqueue due
    asynchronous provisions, prune the outbox and forget old audit entries and gaps (about once a minute), queue
    the alert evaluation (about once a minute), purge old deprovisioned and failed resources.

    Cheap at any fleet size: one indexed, capped count of due sources decides how
    many poll jobs to keep queued (slot-unique ids: a job still queued or running
    is not queued twice); the jobs themselves claim the sources.
    """
    settings = context.settings()
    with context.connection() as conn:
        heartbeats.beat(conn, heartbeats.TICK)
        due_sources = polling.count_due(conn, settings.poll_threads * settings.poll_batches)
        due_drains = delivery.count_due(conn, settings.delivery_threads * settings.delivery_jobs)
        due = resources.due_provisions(conn, PROVISIONS_PER_TICK)
        with conn.transaction():
            purged = (resources.purge_deprovisioned(conn, PURGE_AFTER_DAYS)
                      + resources.purge_failed(conn, PURGE_AFTER_DAYS))
        pruned, forgotten = None, 0
        if slot % max(1, PRUNE_EVERY_SECONDS // settings.clock_tick_seconds) == 0:
            pruned = outbox.prune(conn, replay_hours=settings.outbox_replay_hours)
            ingest.forget(conn)
            activity.forget(conn)
            forgotten = (forget_in_chunks(lambda limit: audit.forget(conn, limit))
                         + forget_in_chunks(lambda limit: sources.forget_gaps(conn, limit))
                         + forget_in_chunks(lambda limit: alerts.forget(conn, limit)))
    connection = redisconn.connect(settings.redis_url)
    batches = 0
    if due_sources:
        wanted = min(settings.poll_batches, -(-due_sources // settings.poll_threads))
        for batch in range(wanted):
            if jobs.enqueue_poll_batch(connection, batch, settings.clock_tick_seconds):
                batches += 1
    deliveries = 0
    if due_drains:
        # One job per DELIVERY_THREADS due drains (a slot still queued or running is not queued twice).
        for job_slot in range(min(settings.delivery_jobs, -(-due_drains // settings.delivery_threads))):
            if jobs.enqueue_delivery(connection, job_slot, settings.clock_tick_seconds):
                deliveries += 1
    if slot % max(1, ALERTS_EVERY_SECONDS // settings.clock_tick_seconds) == 0:
        # Its own job: the evaluation reads the whole fleet's state, the tick stays cheap.
        jobs.enqueue_alerts(connection, settings.clock_tick_seconds)
    for resource_id in due:
        jobs.enqueue_provision(connection, str(resource_id))
    # Config pushes after token rotations live in PostgreSQL; a flushed Redis only delays them (issue 14, item 8).
    with context.connection() as conn:
        pushes = resources.due_config_pushes(conn, PROVISIONS_PER_TICK)
        webhooks_due = alert_webhook.count_due(conn, 1)
    for resource_id in pushes:
        jobs.enqueue_config_push(connection, str(resource_id))
    # Undelivered alert notices and each webhook's back-off live in PostgreSQL, like config pushes.
    if webhooks_due:
        jobs.enqueue_alert_webhooks(connection, settings.clock_tick_seconds)
    log.info("tick slot=%d due_sources=%d poll_jobs=%d due_drains=%d delivery_jobs=%d provisions=%d purged=%d",
             slot, due_sources, batches, due_drains, deliveries, len(due), purged)
    if pruned and (pruned.batches or pruned.dropped_records):
        log.info("outbox pruned batches=%d drains_behind=%d dropped_records=%d", pruned.batches,
                 pruned.drains_behind, pruned.dropped_records)
    if forgotten:
        log.info("forgot audit entries, gaps and recovered alerts past their retention rows=%d", forgotten)
    return {"due_sources": due_sources, "poll_jobs": batches, "due_drains": due_drains, "delivery_jobs": deliveries}


def forget_in_chunks(forget: Callable[[int], int], chunk_rows: int = FORGET_CHUNK_ROWS,
                     chunks: int = FORGET_CHUNKS) -> int:
    """Call a store's bounded delete (``forget(limit)``) until it comes back short or ``chunks`` calls are
    spent; the rest waits for the next minute. Returns how many rows went."""
    total = 0
    for _ in range(chunks):
        gone = forget(chunk_rows)
        total += gone
        if gone < chunk_rows:
            break
    return total
