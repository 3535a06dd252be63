"""Alerts: what went wrong for an owner, raised once and recovered once (issue 16 item 2, SPEC §10).

An *alert* is one condition on one subject (a source or a drain) over its life
(migration 0020). Conditions:

- ``source_paused``: Atlassian refused the source's credentials or ids (the
  reason, in words, with what to do);
- ``source_over_capacity``: the app logs more than its App logs API budget can
  read (``sources.over_capacity_since``);
- ``drain_failing``: the drain's last attempt failed, records have waited more
  than :attr:`Thresholds.drain_failing_minutes` (``ALERT_DRAIN_FAILING_MINUTES``)
  and none was delivered in that time; or its URL can no longer be decrypted;
- ``drain_backlog``: the drain's oldest waiting record is older than half of
  the plan's backlog (past the whole, :func:`broker.outbox.prune` drops it);
- ``records_dropped`` and ``gap_recorded``, *events*: true while one happened
  within :attr:`Thresholds.quiet_seconds` (an hour) — records dropped by a drain
  (its ``dropped`` counter, per minute in ``activity``), a new ``source_gaps`` row.

:func:`evaluate` computes what is true now with one set-based query (each part
starts from a small partial index, migration 0021), compares it with the open
alerts, and writes the differences resource by resource, each in one short
transaction: the alert, its *notice* (the one line of words every channel
announces), an audit entry, and the notices as lines for the app's own log
stream (an outbox batch of origin ``alert`` that only the heroku drain
receives, in Heroku's logplex dialect as ``forgedrain[alert]: …``; drain
ingest drops them when Heroku sends them back).

No storm:

- *hysteresis*: an alert recovers only once its condition has stayed false for
  :attr:`Thresholds.clear_seconds` (``clear_since``; 5 minutes), so a condition
  that flaps within that keeps its one alert;
- *minimum interval*: a recovery is withheld until the alert has been open
  :attr:`Thresholds.min_open_seconds` (15 minutes), so a raise and its recovery
  are never announced closer together than that;
- a subject that was deleted recovers its open alerts at once ("deleted").

Concurrency and restarts: every write for a resource happens under a
transaction-level advisory lock on that resource, after re-reading its open
alerts, and the partial unique index (one open alert per condition and
subject) backs it; two evaluators at once therefore raise once. Everything is
in PostgreSQL and recomputed from the stores each run, so a run that crashed
is simply done again by the next: nothing is repeated, nothing forgotten. The
same lock keeps a resource's notice ids in commit order, so a channel reading
:func:`notices_after` with a cursor never passes one that commits late.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime

import psycopg

from broker import audit, outbox, plans
from broker.formats import logplex

log = logging.getLogger(__name__)

CONDITIONS = ("source_paused", "source_over_capacity", "drain_failing", "drain_backlog", "records_dropped",
              "gap_recorded")
SOURCE_CONDITIONS = frozenset({"source_paused", "source_over_capacity", "gap_recorded"})

# pg_advisory_xact_lock(ALERTS_LOCK, hashtext(resource id)): one resource's alert writes.
ALERTS_LOCK = 7_210_003
# The actor of the audit entries.
ACTOR = "broker"
# PROCID of the alert lines in the app's own log stream: `heroku logs` shows forgedrain[alert].
PROCID = "alert"
# Resources whose alerts change in one run; the rest are written by the next run (a minute later).
RESOURCES_PER_RUN = 500
# A notice is one line: a drain's or source's last error is cut to this many characters in it.
MAX_REASON_CHARS = 300
# Recovered alerts (and their notices) are kept this long for the owner's listing; their notices
# stay in the audit log (400 days).
KEEP_DAYS = 90


@dataclass(frozen=True)
class Thresholds:
    drain_failing_minutes: int = 15
    clear_seconds: int = 300
    min_open_seconds: int = 900
    quiet_seconds: int = 3600


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
    message: str  # the raise notice's words


@dataclass(frozen=True)
class Notice:
    id: int
    resource_id: object
    alert_id: int
    change: str  # raised | recovered
    condition: str
    message: str
    created_at: datetime


@dataclass(frozen=True)
class Condition:
    """A condition true now, as the stores say: the facts its words are made of."""

    resource_id: object
    condition: str
    subject_id: object
    subject_name: str
    reason: str | None = None
    figure: int | None = None
    limit: int | None = None

    @property
    def key(self) -> tuple:
        return (self.resource_id, self.condition, self.subject_id)


@dataclass
class Evaluated:
    raised: int = 0
    recovered: int = 0
    resources: int = 0
    pending: int = 0  # resources left for the next run (over RESOURCES_PER_RUN)
    notices: list[int] = field(default_factory=list)


# --- what is true now ------------------------------------------------------------------

SOURCE_NAME = "COALESCE(s.service_name, s.app_id) || ' (' || COALESCE(s.environment_label, s.environment_id) || ')'"
DRAIN_NAME = "COALESCE(d.name, d.kind || ' ' || left(d.id::text, 8))"
LIVE = "r.state = 'provisioned' AND (%(resource)s::uuid IS NULL OR r.id = %(resource)s::uuid)"

# Each part starts from a partial index (migration 0021) or from the outbox's age index, never from
# every source or drain of the fleet. ``cut``: the newest batch stored before a moment (ids follow
# creation, as in outbox.EXPIRE), so "a batch older than X waits for this drain" is an index range.
CURRENT = f"""
WITH horizon AS MATERIALIZED (
    SELECT h.plan, h.hours,
           (SELECT o.id FROM outbox o WHERE o.created_at < %(now)s - make_interval(secs => h.hours * 1800)
            ORDER BY o.created_at DESC, o.id DESC LIMIT 1) AS half_cut
    FROM unnest(%(plans)s::text[], %(hours)s::int[]) AS h(plan, hours)
), failing AS MATERIALIZED (
    SELECT (SELECT o.id FROM outbox o WHERE o.created_at < %(now)s - make_interval(secs => %(failing)s)
            ORDER BY o.created_at DESC, o.id DESC LIMIT 1) AS cut
)
SELECT s.resource_id, 'source_paused' AS condition, s.id AS subject_id, {SOURCE_NAME} AS subject_name,
       s.pause_reason AS reason, NULL::bigint AS figure, NULL::bigint AS "limit"
FROM sources s JOIN resources r ON r.id = s.resource_id
WHERE s.state = 'paused' AND {LIVE}
UNION ALL
SELECT s.resource_id, 'source_over_capacity', s.id, {SOURCE_NAME}, NULL,
       round(s.density_per_minute)::bigint, round(s.capacity_per_minute)::bigint
FROM sources s JOIN resources r ON r.id = s.resource_id
WHERE s.over_capacity_since IS NOT NULL AND s.state = 'active' AND {LIVE}
UNION ALL
SELECT d.resource_id, 'drain_failing', d.id, {DRAIN_NAME},
       CASE WHEN d.secret_lost_at IS NOT NULL THEN 'its URL or headers can no longer be decrypted'
            ELSE d.last_error END,
       %(failing_minutes)s::bigint, h.hours
FROM drains d JOIN resources r ON r.id = d.resource_id JOIN horizon h ON h.plan = r.plan, failing f
WHERE (d.consecutive_failures > 0 OR d.secret_lost_at IS NOT NULL) AND d.enabled AND {LIVE}
  AND (d.secret_lost_at < %(now)s - make_interval(secs => %(failing)s)
       OR (d.consecutive_failures > 0
           AND (d.last_delivery_at IS NULL OR d.last_delivery_at < %(now)s - make_interval(secs => %(failing)s))
           AND d.cursor < f.cut
           AND EXISTS (SELECT 1 FROM outbox o WHERE o.resource_id = d.resource_id AND o.id > d.cursor
                       AND o.id <= f.cut AND {outbox.RECEIVES})))
UNION ALL
SELECT d.resource_id, 'drain_backlog', d.id, {DRAIN_NAME}, NULL,
       floor(extract(epoch FROM %(now)s - oldest.created_at) / 3600)::bigint, h.hours
FROM drains d JOIN resources r ON r.id = d.resource_id JOIN horizon h ON h.plan = r.plan
CROSS JOIN LATERAL (
    SELECT o.created_at FROM outbox o
    WHERE o.resource_id = d.resource_id AND o.id > d.cursor AND o.id <= h.half_cut AND {outbox.RECEIVES}
    ORDER BY o.id LIMIT 1) oldest
WHERE d.cursor < h.half_cut AND d.enabled AND {LIVE}
UNION ALL
SELECT d.resource_id, 'records_dropped', d.id, {DRAIN_NAME}, d.last_error, x.records, NULL
FROM (SELECT a.subject, sum(a.records)::bigint AS records FROM activity a
      WHERE a.kind = 'dropped' AND a.minute > %(now)s - make_interval(secs => %(quiet)s) AND a.minute <= %(now)s
      GROUP BY a.subject) x
JOIN drains d ON d.id = x.subject JOIN resources r ON r.id = d.resource_id
WHERE x.records > 0 AND {LIVE}
UNION ALL
SELECT s.resource_id, 'gap_recorded', s.id, {SOURCE_NAME}, NULL, x.gaps, x.seconds
FROM (SELECT g.source_id, count(*) AS gaps,
             sum(extract(epoch FROM g.gap_until - g.gap_from))::bigint AS seconds
      FROM source_gaps g
      WHERE g.recorded_at > %(now)s - make_interval(secs => %(quiet)s) AND g.recorded_at <= %(now)s
      GROUP BY g.source_id) x
JOIN sources s ON s.id = x.source_id JOIN resources r ON r.id = s.resource_id
WHERE {LIVE}
"""


def current(conn: psycopg.Connection, resource_id=None, now: datetime | None = None,
            thresholds: Thresholds = Thresholds()) -> dict[tuple, Condition]:
    """The conditions true at ``now`` (of one resource, or of every provisioned one), by key."""
    every = list(plans.PLANS.values())
    with conn.transaction():
        # JIT compiling this plan cost more than running it (bench/alerts.py), as for outbox.prune.
        conn.execute("SET LOCAL jit = off")
        rows = conn.execute(CURRENT, {"now": now or _now(conn), "resource": resource_id,
                                      "failing": thresholds.drain_failing_minutes * 60,
                                      "failing_minutes": thresholds.drain_failing_minutes,
                                      "quiet": thresholds.quiet_seconds, "plans": [p.name for p in every],
                                      "hours": [p.backlog_hours for p in every]}).fetchall()
    found = {}
    for row in rows:
        condition = Condition(row["resource_id"], row["condition"], row["subject_id"], row["subject_name"],
                              row["reason"], row["figure"], row["limit"])
        found[condition.key] = condition
    return found


# --- open alerts -----------------------------------------------------------------------

# With whether the subject still exists: an alert about a deleted source or drain recovers at once.
OPEN = """
SELECT a.id, a.resource_id, a.condition, a.subject_id, a.subject_name, a.raised_at, a.clear_since,
       CASE WHEN a.condition IN ('source_paused', 'source_over_capacity', 'gap_recorded')
            THEN EXISTS (SELECT 1 FROM sources s WHERE s.id = a.subject_id)
            ELSE EXISTS (SELECT 1 FROM drains d WHERE d.id = a.subject_id) END AS subject_exists
FROM alerts a JOIN resources r ON r.id = a.resource_id
WHERE a.recovered_at IS NULL AND {LIVE}
"""

OPEN_ALL = OPEN.format(LIVE=LIVE)
OPEN_LOCKED = OPEN.format(LIVE="r.id = %(resource)s") + " FOR UPDATE OF a"


@dataclass(frozen=True)
class Changes:
    """What one resource's alerts need: raises, clear_since to set or reset, recoveries."""

    raise_: list[Condition]
    clearing: list[int]
    uncleared: list[int]
    recover: list[tuple[dict, bool]]  # (open alert row, its subject was deleted)

    def __bool__(self) -> bool:
        return bool(self.raise_ or self.clearing or self.uncleared or self.recover)


def changes(found: dict[tuple, Condition], open_rows: list[dict], now: datetime, thresholds: Thresholds) -> Changes:
    """Compare what is true with what is open (one resource, or all)."""
    open_keys = set()
    clearing, uncleared, recover = [], [], []
    for row in open_rows:
        key = (row["resource_id"], row["condition"], row["subject_id"])
        open_keys.add(key)
        if not row["subject_exists"]:
            recover.append((row, True))
        elif key in found:
            if row["clear_since"] is not None:
                uncleared.append(row["id"])
        elif row["clear_since"] is None:
            clearing.append(row["id"])
        elif ((now - row["clear_since"]).total_seconds() >= thresholds.clear_seconds
              and (now - row["raised_at"]).total_seconds() >= thresholds.min_open_seconds):
            recover.append((row, False))
    raise_ = [c for key, c in found.items() if key not in open_keys]
    return Changes(raise_, clearing, uncleared, recover)


def _by_resource(found: dict[tuple, Condition], open_rows: list[dict]) -> dict:
    grouped: dict = {}
    for key, condition in found.items():
        grouped.setdefault(key[0], ({}, []))[0][key] = condition
    for row in open_rows:
        grouped.setdefault(row["resource_id"], ({}, []))[1].append(row)
    return grouped


# --- evaluate ----------------------------------------------------------------------------

def _now(conn: psycopg.Connection) -> datetime:
    return conn.execute("SELECT now() AS now").fetchone()["now"]


def evaluate(conn: psycopg.Connection, resource_id=None, now: datetime | None = None, *,
             thresholds: Thresholds = Thresholds()) -> Evaluated:
    """Raise and recover alerts (of one resource, or of every provisioned one) as of ``now`` (the
    database's clock by default). ``conn`` is an autocommit connection: the reads run outside any
    transaction, and each resource whose alerts change is written in a short transaction of its own."""
    now = now or _now(conn)
    found = current(conn, resource_id, now, thresholds)
    open_rows = conn.execute(OPEN_ALL, {"resource": resource_id}).fetchall()
    result = Evaluated()
    grouped = _by_resource(found, open_rows)
    todo = sorted((rid for rid, (mine, rows) in grouped.items() if changes(mine, rows, now, thresholds)), key=str)
    result.pending = max(0, len(todo) - RESOURCES_PER_RUN)
    for rid in todo[:RESOURCES_PER_RUN]:
        raised, recovered, notices = _apply(conn, rid, grouped[rid][0], now, thresholds)
        result.raised += raised
        result.recovered += recovered
        result.notices += notices
        result.resources += 1
    return result


INSERT_ALERT = """
INSERT INTO alerts (resource_id, condition, subject_id, subject_name, detail, raised_at)
VALUES (%s, %s, %s, %s, %s, %s)
ON CONFLICT (resource_id, condition, subject_id) WHERE recovered_at IS NULL DO NOTHING
RETURNING id
"""
INSERT_NOTICE = """
INSERT INTO alert_notices (resource_id, alert_id, change, condition, message, created_at)
VALUES (%s, %s, %s, %s, %s, %s) RETURNING id
"""
SET_CLEAR_SINCE = "UPDATE alerts SET clear_since = %s WHERE id = ANY(%s) AND recovered_at IS NULL"
RECOVER = "UPDATE alerts SET recovered_at = %s, clear_since = COALESCE(clear_since, %s) WHERE id = %s"
HEROKU_DRAIN = "SELECT 1 FROM drains WHERE resource_id = %s AND kind = 'heroku' AND enabled"


def _apply(conn: psycopg.Connection, resource_id, found: dict[tuple, Condition], now: datetime,
           thresholds: Thresholds) -> tuple[int, int, list[int]]:
    """Write one resource's alert changes in one transaction; (raised, recovered, notice ids)."""
    lines: list[dict] = []
    notices: list[int] = []
    raised = recovered = 0
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s::text))", (ALERTS_LOCK, str(resource_id)))
        # Re-read under the lock: another evaluator may have written this resource since our read.
        open_rows = conn.execute(OPEN_LOCKED, {"resource": resource_id}).fetchall()
        todo = changes(found, open_rows, now, thresholds)
        if todo.clearing:
            conn.execute(SET_CLEAR_SINCE, (now, todo.clearing))
        if todo.uncleared:
            conn.execute(SET_CLEAR_SINCE, (None, todo.uncleared))
        for condition in todo.raise_:
            detail, message = raise_words(condition)
            row = conn.execute(INSERT_ALERT, (resource_id, condition.condition, condition.subject_id,
                                              condition.subject_name, detail, now)).fetchone()
            if row is None:
                continue  # raised by another evaluator meanwhile (the unique index decides)
            notices.append(_notice(conn, resource_id, row["id"], "raised", condition.condition, message, now))
            lines.append(line(message, "raised", now))
            raised += 1
        for row, deleted in todo.recover:
            message = recovery_words(row["condition"], row["subject_name"], deleted)
            conn.execute(RECOVER, (now, now, row["id"]))
            notices.append(_notice(conn, resource_id, row["id"], "recovered", row["condition"], message, now))
            lines.append(line(message, "recovered", now))
            recovered += 1
        if lines and conn.execute(HEROKU_DRAIN, (resource_id,)).fetchone():
            outbox.append_alerts(conn, resource_id, lines)
    if raised or recovered:
        log.info("alerts resource=%s raised=%d recovered=%d", resource_id, raised, recovered)
    return raised, recovered, notices


def _notice(conn: psycopg.Connection, resource_id, alert_id: int, change: str, condition: str, message: str,
            now: datetime) -> int:
    notice_id = conn.execute(INSERT_NOTICE, (resource_id, alert_id, change, condition, message, now)).fetchone()["id"]
    audit.record(conn, resource_id, ACTOR, f"alert.{change}",
                 {"alert_id": alert_id, "notice_id": notice_id, "condition": condition, "message": message})
    return notice_id


# --- words --------------------------------------------------------------------------------

def _one_line(text: str | None, limit: int = MAX_REASON_CHARS) -> str:
    words = " ".join((text or "").split())
    return words if len(words) <= limit else words[:limit - 1] + "…"


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def _duration(seconds: int) -> str:
    if seconds >= 2 * 86400:
        return _plural(seconds // 86400, "day")
    if seconds >= 2 * 3600:
        return _plural(seconds // 3600, "hour")
    return _plural(max(1, seconds // 60), "minute")


PAUSES = {
    "auth_failed": ("Atlassian refused the email and API token (HTTP 401 or 403)",
                    "Update the API token in the dashboard or with PUT {source}; polling resumes at once."),
    "not_found": ("Atlassian knows no such app id or environment id (HTTP 404)",
                  "Correct the ids in the dashboard or with PUT {source}; polling resumes at once."),
    "bad_request": ("Atlassian refused the query Forge Drain sent (HTTP 400)",
                    "Check the source's levels and installation contexts, then verify it in the dashboard or "
                    "with POST {source}/verify."),
}


def raise_words(c: Condition) -> tuple[str, str]:
    """(detail, message) for raising ``c``: the particulars, and the whole line with what to do."""
    source = f"/v1/resources/{c.resource_id}/sources/{c.subject_id}"
    if c.condition == "source_paused":
        what, todo = PAUSES.get(c.reason or "", ("polling stopped", "Verify the source in the dashboard or "
                                                                    "with POST {source}/verify."))
        return (what, f"alert: source {c.subject_name} paused: {what}. {todo.format(source=source)}")
    if c.condition == "source_over_capacity":
        detail = (f"the app logs about {c.figure:,} records a minute, more than the {c.limit:,} a minute Forge "
                  "Drain can read within Atlassian's 30 calls a minute" if c.figure is not None and c.limit
                  else "the app logs more records than Forge Drain can read within Atlassian's 30 calls a minute")
        return (detail, f"alert: source {c.subject_name} is over capacity: {detail}. It falls behind, and what "
                        "passes the App logs API's 14 days is lost: lower the app's log volume or narrow the "
                        "source's levels.")
    if c.condition == "drain_failing":
        detail = _one_line(c.reason) or "no reason recorded"
        return (detail, f"alert: drain {c.subject_name} has failed to deliver for more than "
                        f"{_plural(c.figure, 'minute')}: {detail}. Check its URL and receiver in the dashboard or "
                        f"with GET /v1/resources/{c.resource_id}/drains/{c.subject_id}; records wait within the "
                        f"plan's {c.limit}-hour backlog.")
    if c.condition == "drain_backlog":
        detail = f"its oldest waiting record arrived {_plural(c.figure, 'hour')} ago"
        return (detail, f"alert: drain {c.subject_name} is behind: {detail}, and records older than the plan's "
                        f"{c.limit} hours are dropped. Check the drain's receiver and errors in the dashboard, or "
                        "move to a plan with a longer backlog.")
    if c.condition == "records_dropped":
        detail = f"{_plural(c.figure, 'record')} dropped in the last hour"
        reason = _one_line(c.reason)
        return (detail, f"alert: drain {c.subject_name} dropped records: {detail}"
                        + (f" (last error: {reason})" if reason else "")
                        + ". They will not be sent again: make sure the receiver keeps up and accepts them "
                          "(the dashboard shows the drain's errors).")
    if c.condition == "gap_recorded":
        detail = (f"{_plural(c.figure, 'time range')} ({_duration(c.limit or 0)} of logs) passed the App logs API's "
                  "14 days before they could be read")
        return (detail, f"alert: source {c.subject_name} has a gap: {detail}, and are lost. Keep the source "
                        "verified and within capacity so it does not fall that far behind.")
    raise ValueError(f"unknown condition {c.condition!r}")


RECOVERIES = {
    "source_paused": "source {name} is polling again.",
    "source_over_capacity": "source {name} is no longer over capacity.",
    "drain_failing": "drain {name} delivers again.",
    "drain_backlog": "drain {name} has caught up to within half of the plan's backlog.",
    "records_dropped": "drain {name} has dropped no records for an hour.",
    "gap_recorded": "source {name} has recorded no new gap for an hour.",
}


def recovery_words(condition: str, subject_name: str, deleted: bool) -> str:
    if deleted:
        kind = "source" if condition in SOURCE_CONDITIONS else "drain"
        return f"recovered: {kind} {subject_name} was deleted; its {condition.replace('_', ' ')} alert is closed."
    return "recovered: " + RECOVERIES[condition].format(name=subject_name)


def line(message: str, change: str, now: datetime) -> dict:
    """A notice as a record for the app's own log stream: Heroku's logplex header kept in a ``heroku``
    part, so the heroku drain writes ``<PRI>1 TS forgedrain forgedrain alert - <message>``."""
    severity = ("WARN", 13, 4) if change == "raised" else ("INFO", 9, 6)  # syslog warning / informational
    return {"timeUnixNano": str(int(now.timestamp() * 1_000_000) * 1000), "severityText": severity[0],
            "severityNumber": severity[1], "body": {"stringValue": message},
            "heroku": {"pri": logplex.FACILITY * 8 + severity[2], "app": logplex.OWN_APP_NAME, "dyno": PROCID}}


# --- read API (dashboard, resource API, webhook) -----------------------------------------

ALERTS = """
SELECT a.id, a.resource_id, a.condition, a.subject_id, a.subject_name, a.detail, a.raised_at, a.recovered_at,
       n.message
FROM alerts a JOIN alert_notices n ON n.alert_id = a.id AND n.change = 'raised'
WHERE a.resource_id = %(resource)s AND (NOT %(open)s OR a.recovered_at IS NULL)
ORDER BY a.raised_at DESC, a.id DESC LIMIT %(limit)s
"""


def _alerts(conn: psycopg.Connection, resource_id, *, open_only: bool, limit: int | None) -> list[Alert]:
    return [Alert(**row) for row in conn.execute(ALERTS, {"resource": resource_id, "open": open_only,
                                                          "limit": limit})]


def open_for(conn: psycopg.Connection, resource_id) -> list[Alert]:
    """The resource's open alerts, newest first."""
    return _alerts(conn, resource_id, open_only=True, limit=None)


def recent(conn: psycopg.Connection, resource_id, limit: int = 50) -> list[Alert]:
    """The resource's latest alerts, open and recovered, newest first."""
    return _alerts(conn, resource_id, open_only=False, limit=limit)


NOTICES_AFTER = """
SELECT id, resource_id, alert_id, change, condition, message, created_at FROM alert_notices
WHERE resource_id = %s AND id > %s ORDER BY id LIMIT %s
"""


def notices_after(conn: psycopg.Connection, resource_id, after_id: int, limit: int) -> list[Notice]:
    """The resource's notices after ``after_id``, oldest first (a channel's cursor: ids appear in commit
    order per resource)."""
    return [Notice(**row) for row in conn.execute(NOTICES_AFTER, (resource_id, after_id, limit))]


# One bounded chunk, oldest first, on alerts_recovered_idx (migration 0021), deleted by a TID scan as
# broker.audit.FORGET; notices go with their alert (ON DELETE CASCADE).
FORGET = """
DELETE FROM alerts WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM alerts WHERE recovered_at < now() - make_interval(days => %s) ORDER BY recovered_at LIMIT %s))
"""


def forget(conn: psycopg.Connection, limit: int, days: int = KEEP_DAYS) -> int:
    """Delete at most ``limit`` alerts recovered more than ``days`` ago; returns how many."""
    return conn.execute(FORGET, (days, limit)).rowcount
