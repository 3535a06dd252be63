"""The alert webhook: a resource's alert notices, POSTed one by one to its owner's receiver (SPEC §10).

A resource may name one HTTPS receiver (``PUT /v1/resources/<id>/alert-webhook``). Every
notice of an alert raised or recovered (``alert_notices``, written by the alert engine) goes
to it in order, one request each, as Slack-compatible JSON — ``text`` is the notice's message,
so a Slack or Mattermost incoming webhook shows it as is — with the structured facts under
``forgedrain`` for generic receivers, and signed (:func:`signature`) in the manner of Stripe
and Slack: ``X-Forgedrain-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">`` with
the webhook's secret, ``X-Forgedrain-Timestamp`` the Unix time it was signed.

Delivery mirrors a drain's over the outbox:

- ``cursor`` is the last notice the receiver has; a new webhook starts at the resource's newest
  notice, so nothing old is replayed to it;
- a job (``worker.alert_webhook.run``) claims due webhooks with a lease (``SKIP LOCKED``) and,
  for each notice after the cursor, sends it and then moves the cursor past it in a write
  fenced by the lease. A crash between the two sends that one notice again: delivery is
  at-least-once, and the notice's ``id`` (body and ``X-Forgedrain-Notice-Id``) lets a receiver
  drop the repeat;
- answers are classed as a logplex drain's (:func:`broker.sinks.http.send_webhook`): 2xx
  delivered; 429, 5xx, network errors, redirects and destinations the SSRF guard refuses are
  retried with the drains' capped exponential back-off (``Retry-After`` honoured) and block the
  notices behind them, so order holds; any other 4xx drops that notice, counted, and moves on.

The URL and the secret are stored encrypted and never leave this module but on the wire: not
in logs, errors, job arguments or answers (the API shows the URL's host only).

Reading ``alerts`` for the resource API lives here too for now (:func:`open_alerts`,
:func:`recent_alerts`), with :func:`notices_after`: the alert engine's own store reads the same
rows the same way.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from typing import Callable, ContextManager
from urllib.parse import urlsplit

import orjson
import psycopg
import requests

from broker.delivery import backoff
from broker.sinks import Result, http
from broker.vault import Vault, VaultError

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Forgedrain-Signature"
TIMESTAMP_HEADER = "X-Forgedrain-Timestamp"
NOTICE_HEADER = "X-Forgedrain-Notice-Id"
SECRET_PREFIX = "fdwh_"
# Notices read at once; a turn reads again while it lasts.
NOTICES_PER_READ = 20
# A webhook's turn: after this long it is released (due again at once) and waits behind the others.
TURN_SECONDS = 5.0
# A lease outlives a turn plus one send's deadline with room to spare; a job killed outright
# frees its webhooks this long after.
LEASE_SECONDS = 90
# How long a webhook whose URL or secret cannot be decrypted waits before it is tried again.
SECRET_LOST_RETRY_SECONDS = 3600
SECRET_LOST_ERROR = ("the webhook's URL or signing secret can no longer be decrypted (the encryption key they "
                     "were saved with is not in FERNET_KEYS any more): set the webhook again (PUT); notices wait")
TEST_MESSAGE = "Forge Drain test notice: if you can read this, the alert webhook works."
ALERTS_RECENT = 50


# --- rows -------------------------------------------------------------------------

@dataclass(frozen=True)
class Webhook:
    """A resource's webhook as stored (its secrets still encrypted)."""

    resource_id: object
    url_enc: str
    secret_enc: str
    cursor: int
    next_attempt_at: datetime
    consecutive_failures: int
    last_error: str | None
    last_delivery_at: datetime | None
    delivered: int
    dropped: int
    retried: int
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class Claimed:
    """A webhook under this job's lease."""

    resource_id: object
    url_enc: str
    secret_enc: str
    cursor: int
    consecutive_failures: int
    lease_token: object


@dataclass(frozen=True)
class Notice:
    """One raise or recovery of an alert, with the subject it is about."""

    id: int
    resource_id: object
    alert_id: int
    change: str
    condition: str
    message: str
    created_at: datetime
    subject_id: object = None
    subject_name: str | None = None
    detail: str | None = None


@dataclass(frozen=True)
class Alert:
    id: int
    resource_id: object
    condition: str
    subject_id: object
    subject_name: str
    detail: str | None
    raised_at: datetime
    recovered_at: datetime | None
    message: str | None  # the words of its latest notice


def _of(cls, row: dict):
    return cls(**{f.name: row[f.name] for f in fields(cls)})


def _names(cls, prefix: str = "") -> str:
    return ", ".join(f"{prefix}{f.name}" for f in fields(cls))


# --- store ------------------------------------------------------------------------

def get(conn: psycopg.Connection, resource_id, *, for_update: bool = False) -> Webhook | None:
    lock = " FOR UPDATE" if for_update else ""
    row = conn.execute(f"SELECT {_names(Webhook)} FROM alert_webhooks WHERE resource_id = %s{lock}",
                       (resource_id,)).fetchone()
    return _of(Webhook, row) if row else None


def insert(conn: psycopg.Connection, resource_id, url_enc: str, secret_enc: str) -> Webhook:
    """A new webhook starts after the resource's newest notice: old ones are not replayed to it."""
    return _of(Webhook, conn.execute(
        f"""
        INSERT INTO alert_webhooks (resource_id, url_enc, secret_enc, cursor)
        VALUES (%(rid)s, %(url)s, %(secret)s,
                (SELECT COALESCE(max(id), 0) FROM alert_notices WHERE resource_id = %(rid)s))
        RETURNING {_names(Webhook)}
        """, {"rid": resource_id, "url": url_enc, "secret": secret_enc}).fetchone())


def replace(conn: psycopg.Connection, resource_id, url_enc: str, secret_enc: str) -> Webhook:
    """A new URL and secret for an existing webhook: what it has not delivered yet goes to the new one,
    with no inherited back-off; a send in flight under the old ones loses its lease (it is sent again)."""
    return _of(Webhook, conn.execute(
        f"""
        UPDATE alert_webhooks SET url_enc = %s, secret_enc = %s, consecutive_failures = 0,
            next_attempt_at = now(), last_error = NULL, lease_token = NULL, lease_expires_at = NULL,
            updated_at = now()
        WHERE resource_id = %s
        RETURNING {_names(Webhook)}
        """, (url_enc, secret_enc, resource_id)).fetchone())


def delete(conn: psycopg.Connection, resource_id) -> bool:
    """Remove the resource's webhook (its secrets with it); whether there was one."""
    return conn.execute("DELETE FROM alert_webhooks WHERE resource_id = %s", (resource_id,)).rowcount == 1


def pending(conn: psycopg.Connection, resource_id, cursor: int) -> int:
    """Notices the webhook has not had yet."""
    return conn.execute("SELECT count(*) AS n FROM alert_notices WHERE resource_id = %s AND id > %s",
                        (resource_id, cursor)).fetchone()["n"]


NOTICES_AFTER = """
SELECT n.id, n.resource_id, n.alert_id, n.change, n.condition, n.message, n.created_at,
       a.subject_id, a.subject_name, a.detail
FROM alert_notices n JOIN alerts a ON a.id = n.alert_id
WHERE n.resource_id = %s AND n.id > %s
ORDER BY n.id
LIMIT %s
"""


def notices_after(conn: psycopg.Connection, resource_id, after_id: int, limit: int) -> list[Notice]:
    """The resource's notices after ``after_id``, oldest first."""
    return [_of(Notice, row) for row in conn.execute(NOTICES_AFTER, (resource_id, after_id, limit))]


# An alert with the words of its latest notice (its raise, or its recovery).
ALERTS = """
SELECT a.id, a.resource_id, a.condition, a.subject_id, a.subject_name, a.detail, a.raised_at, a.recovered_at,
       (SELECT n.message FROM alert_notices n WHERE n.alert_id = a.id ORDER BY n.id DESC LIMIT 1) AS message
FROM alerts a
WHERE a.resource_id = %(rid)s AND (NOT %(open)s OR a.recovered_at IS NULL)
ORDER BY a.raised_at DESC, a.id DESC
LIMIT %(limit)s
"""


def open_alerts(conn: psycopg.Connection, resource_id, limit: int = 1000) -> list[Alert]:
    """The resource's alerts not recovered yet, newest first."""
    return [_of(Alert, r) for r in conn.execute(ALERTS, {"rid": resource_id, "open": True, "limit": limit})]


def recent_alerts(conn: psycopg.Connection, resource_id, limit: int = ALERTS_RECENT) -> list[Alert]:
    """The resource's latest alerts, open or recovered, newest first."""
    return [_of(Alert, r) for r in conn.execute(ALERTS, {"rid": resource_id, "open": False, "limit": limit})]


# Due webhooks with notices after their cursor, oldest due first, leased.
CLAIM = f"""
WITH due AS (
    SELECT w.resource_id FROM alert_webhooks w
    WHERE w.next_attempt_at <= now() AND (w.lease_expires_at IS NULL OR w.lease_expires_at < now())
      AND EXISTS (SELECT 1 FROM alert_notices n WHERE n.resource_id = w.resource_id AND n.id > w.cursor)
    ORDER BY w.next_attempt_at
    LIMIT %(limit)s
    FOR UPDATE OF w SKIP LOCKED
)
UPDATE alert_webhooks w
SET lease_token = gen_random_uuid(), lease_expires_at = now() + make_interval(secs => %(lease)s)
FROM due, resources r
WHERE w.resource_id = due.resource_id AND r.id = w.resource_id AND r.state <> 'deprovisioned'
RETURNING {_names(Claimed, "w.")}
"""

DUE = """
SELECT count(*) AS n FROM (
    SELECT 1 FROM alert_webhooks w
    WHERE w.next_attempt_at <= now() AND (w.lease_expires_at IS NULL OR w.lease_expires_at < now())
      AND EXISTS (SELECT 1 FROM alert_notices n WHERE n.resource_id = w.resource_id AND n.id > w.cursor)
    LIMIT %s) due
"""


def claim(conn: psycopg.Connection, limit: int, lease_seconds: int = LEASE_SECONDS) -> list[Claimed]:
    """Lease up to ``limit`` due webhooks."""
    if limit <= 0:
        return []
    with conn.transaction():
        rows = conn.execute(CLAIM, {"limit": limit, "lease": lease_seconds}).fetchall()
    return [_of(Claimed, r) for r in rows]


def count_due(conn: psycopg.Connection, cap: int) -> int:
    """How many webhooks have notices to send now (at most ``cap``): the tick's question."""
    return conn.execute(DUE, (cap,)).fetchone()["n"]


def advance(conn: psycopg.Connection, webhook: Claimed, notice_id: int, result: Result) -> bool:
    """Move the cursor past ``notice_id`` once it was delivered or dropped; False when the lease is lost."""
    delivered = int(result.outcome == "delivered")
    return conn.execute(
        """
        UPDATE alert_webhooks SET cursor = GREATEST(cursor, %(notice)s),
            delivered = delivered + %(delivered)s, dropped = dropped + %(dropped)s,
            last_delivery_at = CASE WHEN %(delivered)s > 0 THEN now() ELSE last_delivery_at END,
            consecutive_failures = 0, last_error = COALESCE(%(error)s, last_error)
        WHERE resource_id = %(rid)s AND lease_token = %(lease)s
        """,
        {"notice": notice_id, "delivered": delivered, "dropped": 1 - delivered,
         "error": None if delivered else result.detail, "rid": webhook.resource_id,
         "lease": webhook.lease_token}).rowcount == 1


def release(conn: psycopg.Connection, webhook: Claimed, delay: float, *, error: str | None = None,
            retried: bool = False) -> None:
    """End the lease; due again after ``delay`` seconds (with the failure counted when ``retried``)."""
    sets = ["lease_token = NULL", "lease_expires_at = NULL",
            "next_attempt_at = now() + make_interval(secs => %(delay)s)"]
    if retried:
        sets += ["consecutive_failures = consecutive_failures + 1", "retried = retried + 1"]
    if error is not None:
        sets.append("last_error = %(error)s")
    conn.execute(f"UPDATE alert_webhooks SET {', '.join(sets)} WHERE resource_id = %(rid)s AND lease_token = %(lease)s",
                 {"delay": delay, "error": error, "rid": webhook.resource_id, "lease": webhook.lease_token})


# --- the notice on the wire ---------------------------------------------------------

def new_secret() -> str:
    """A signing secret: 256 random bits, prefixed so that it is recognisable where it leaks."""
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def host(url: str) -> str:
    """Where the webhook points, without user name, password, path or query (safe to show)."""
    parts = urlsplit(url)
    name = parts.hostname or ""
    if ":" in name:
        name = f"[{name}]"
    return f"{name}:{parts.port}" if parts.port else name


def _time(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def body(notice: Notice) -> bytes:
    """The JSON a receiver gets: Slack's ``text``, and the facts under ``forgedrain``."""
    return orjson.dumps({
        "text": notice.message,
        "forgedrain": {
            "notice_id": notice.id or None,  # None: a test notice
            "resource_id": str(notice.resource_id),
            "alert_id": notice.alert_id or None,
            "change": notice.change,
            "condition": notice.condition,
            "subject": {"id": str(notice.subject_id) if notice.subject_id else None, "name": notice.subject_name},
            "detail": notice.detail,
            "time": _time(notice.created_at),
        },
    })


def test_notice(resource_id, message: str = TEST_MESSAGE) -> Notice:
    """What "send a test notice" sends: no alert behind it, ``change`` and ``condition`` are ``test``."""
    return Notice(id=0, resource_id=resource_id, alert_id=0, change="test", condition="test", message=message,
                  created_at=datetime.now(timezone.utc))


def signature(secret: str, timestamp: str, payload: bytes) -> str:
    """``sha256=`` and the hex HMAC-SHA256 of ``<timestamp>.<body>`` under the secret (UTF-8)."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + payload, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


def send(session: requests.Session, url: str, secret: str, notice: Notice, *, allow_private: bool,
         deadline: float = http.DEADLINE_SECONDS, clock=time.time) -> Result:
    """Sign and POST one notice; what the receiver's answer means (never carries a secret)."""
    payload = body(notice)
    timestamp = str(int(clock()))
    headers = {TIMESTAMP_HEADER: timestamp, SIGNATURE_HEADER: signature(secret, timestamp, payload)}
    if notice.id:
        headers[NOTICE_HEADER] = str(notice.id)
    return http.send_webhook(session, url, payload, headers, allow_private=allow_private, deadline=deadline)


class SecretLost(Exception):
    """The webhook's URL or secret cannot be decrypted with the keys configured now."""


def secrets_of(row: Webhook | Claimed, vault: Vault) -> tuple[str, str]:
    """(URL, signing secret), decrypted; :class:`SecretLost` when they cannot be."""
    try:
        return vault.decrypt(row.url_enc), vault.decrypt(row.secret_enc)
    except VaultError as exc:
        raise SecretLost(str(exc)) from None


# --- a webhook's turn -----------------------------------------------------------------

Connect = Callable[[], ContextManager[psycopg.Connection]]


@dataclass
class Turn:
    """What one turn of a webhook did (for the job's log line)."""

    resource_id: object
    delivered: int = 0
    dropped: int = 0
    result: str = "idle"  # caught-up | turn-over | retry | lost-lease | secret-lost
    errors: list[str] = field(default_factory=list)


def deliver(connect: Connect, webhook: Claimed, session: requests.Session, vault: Vault, *, allow_private: bool,
            deadline: float = http.DEADLINE_SECONDS, turn_seconds: float = TURN_SECONDS,
            clock: Callable[[], float] = time.monotonic) -> Turn:
    """Send the notices the webhook lacks, in order, until it is caught up, must wait, or its turn is over.

    Each notice is sent, then the cursor moves past it (fenced by the lease): a crash in between
    sends that one notice again. A refusal to retry ends the turn with the webhook's back-off, the
    notice and those after it kept for the next try.
    """
    turn = Turn(webhook.resource_id)
    try:
        url, secret = secrets_of(webhook, vault)
    except SecretLost:
        log.warning("alert webhook resource=%s: its URL or secret cannot be decrypted with FERNET_KEYS",
                    webhook.resource_id)
        with connect() as conn:
            release(conn, webhook, SECRET_LOST_RETRY_SECONDS, error=SECRET_LOST_ERROR)
        turn.result = "secret-lost"
        turn.errors.append("secret lost")
        return turn
    began, cursor = clock(), webhook.cursor
    while clock() - began < turn_seconds:
        with connect() as conn:
            notices = notices_after(conn, webhook.resource_id, cursor, NOTICES_PER_READ)
        if not notices:
            turn.result = "caught-up"
            break
        for notice in notices:
            result = send(session, url, secret, notice, allow_private=allow_private, deadline=deadline)
            log.info("alert webhook resource=%s notice=%d outcome=%s status=%s", webhook.resource_id, notice.id,
                     result.outcome, result.status)
            if result.outcome not in ("delivered", "drop"):  # wait; this notice stays first in line
                with connect() as conn:
                    release(conn, webhook, backoff(webhook.consecutive_failures, result.retry_after),
                            error=result.detail, retried=True)
                turn.result = "retry"
                turn.errors.append(result.detail)
                return turn
            with connect() as conn:
                if not advance(conn, webhook, notice.id, result):
                    log.warning("alert webhook resource=%s lost its lease", webhook.resource_id)
                    turn.result = "lost-lease"
                    return turn
            cursor = notice.id
            if result.outcome == "delivered":
                turn.delivered += 1
            else:
                turn.dropped += 1
                turn.errors.append(result.detail)
            if clock() - began >= turn_seconds:
                break
    else:  # the turn is over: due again at once, behind the webhooks that waited
        turn.result = "turn-over"
    with connect() as conn:
        release(conn, webhook, 0)
    return turn
