"""The alert webhook job: send every due webhook the notices it lacks (see :mod:`broker.alert_webhook`).

The tick keeps one such job queued (id ``alert-webhooks``) while a webhook has notices due. It
claims webhooks one at a time (a lease in PostgreSQL) and gives each a turn, until none is due or
its budget is spent; what is left is the next job's. Alerts are rare, so one thread does: a
receiver that stalls costs one send's deadline per turn, then waits out its back-off.

Timeouts nest: a turn (5 s) plus one send's deadline (10 s) < the lease (90 s); the budget (20 s)
plus one turn and send < ``job_timeout`` (60 s).
"""

from __future__ import annotations

import contextlib
import logging
import time

from broker import alert_webhook
from broker.sinks import http
from broker.vault import Vault
from worker import context

log = logging.getLogger(__name__)

BUDGET_SECONDS = 20.0


def run(budget_seconds: float = BUDGET_SECONDS) -> dict:
    settings = context.settings()
    vault = Vault(settings.fernet_keys)
    totals = {"webhooks": 0, "delivered": 0, "dropped": 0, "retries": 0}
    began = time.monotonic()
    with context.connection() as conn, http.new_session(settings.allow_private_drains) as session:

        @contextlib.contextmanager
        def connect():
            yield conn  # autocommit: no transaction stays open while a receiver is called

        while time.monotonic() - began < budget_seconds:
            claimed = alert_webhook.claim(conn, 1)
            if not claimed:
                break
            turn = alert_webhook.deliver(connect, claimed[0], session, vault,
                                         allow_private=settings.allow_private_drains)
            totals["webhooks"] += 1
            totals["delivered"] += turn.delivered
            totals["dropped"] += turn.dropped
            totals["retries"] += turn.result == "retry"
    log.info("alert webhook job webhooks=%d delivered=%d dropped=%d retries=%d", totals["webhooks"],
             totals["delivered"], totals["dropped"], totals["retries"])
    return totals
