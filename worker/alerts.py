"""The alert evaluation job (broker.alerts), queued by the tick about once a minute."""

from __future__ import annotations

import logging

from broker import alerts
from worker import context

log = logging.getLogger(__name__)


def run() -> dict:
    """Raise and recover every provisioned resource's alerts. Idempotent: the state is all in PostgreSQL, so a
    run killed midway is finished by the next, and two at once raise each alert once."""
    settings = context.settings()
    thresholds = alerts.Thresholds(drain_failing_minutes=settings.alert_drain_failing_minutes)
    with context.connection() as conn:
        result = alerts.evaluate(conn, thresholds=thresholds)
    if result.raised or result.recovered or result.pending:
        log.info("alerts raised=%d recovered=%d resources=%d pending=%d", result.raised, result.recovered,
                 result.resources, result.pending)
    return {"raised": result.raised, "recovered": result.recovered, "resources": result.resources,
            "pending": result.pending}
