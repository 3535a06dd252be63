"""What the fleet, or one resource, looks like right now (``python -m broker status``).

Plain aligned text tables. Nothing here prints a secret: drain URLs are
decrypted only to be masked (password and query values hidden), tokens are
never read.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Iterable, Sequence

import psycopg

from broker import drains, heartbeats, jobs, outbox, rules
from broker.vault import Vault, VaultError


# --- rendering ---------------------------------------------------------------------

def table(headers: Sequence[str], rows: Iterable[Sequence[object]], *, right: Iterable[int] = ()) -> str:
    """Columns padded to their widest cell; ``right`` aligns those column indexes right (numbers)."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    right = set(right)

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if i in right else v.ljust(w)
                         for i, (v, w) in enumerate(zip(values, widths))).rstrip()

    out = [line(list(headers)), line(["-" * w for w in widths])]
    out += [line(r) for r in cells] if cells else ["(none)"]
    return "\n".join(out)


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
    if isinstance(value, timedelta):
        return duration(value)
    if isinstance(value, Decimal) and value == value.to_integral_value():
        value = int(value)  # sums of bigint columns come back as numeric
    if isinstance(value, int):
        return f"{value:,}"
    text = str(value)
    return " ".join(text.split())  # one line per row, whatever an error message holds


def duration(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    sign = "-" if seconds < 0 else ""
    seconds = abs(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    if days:
        return f"{sign}{days}d{hours:02d}h"
    if hours:
        return f"{sign}{hours}h{minutes:02d}m"
    if minutes:
        return f"{sign}{minutes}m{seconds:02d}s"
    return f"{sign}{seconds}s"


def clip(text: str | None, width: int = 60) -> str | None:
    if text is None:
        return None
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def safe_url(vault: Vault, url_enc: str | None) -> str:
    """The drain's destination for display: password and query values masked."""
    if not url_enc:
        return "-"
    try:
        url = vault.decrypt(url_enc)
    except VaultError:
        return "(cannot decrypt)"
    return drains.masked_url(url) or "-"


# --- fleet -------------------------------------------------------------------------

DRAINS_BY_KIND = """
SELECT d.kind, count(*) AS drains, count(*) FILTER (WHERE d.enabled) AS enabled,
       COALESCE(sum(d.delivered), 0) AS delivered, COALESCE(sum(d.dropped), 0) AS dropped,
       COALESCE(sum(d.rejected), 0) AS rejected
FROM drains d
JOIN resources r ON r.id = d.resource_id AND r.state <> 'deprovisioned'
GROUP BY d.kind ORDER BY d.kind
"""


def fleet(conn: psycopg.Connection, redis_client) -> tuple[str, bool]:
    """The fleet report, and whether everything it asked answered (Redis may not)."""
    now = conn.execute("SELECT now() AS now").fetchone()["now"]
    sections = []
    rows = conn.execute("SELECT state, plan, count(*) AS n FROM resources GROUP BY 1, 2 ORDER BY 1, 2").fetchall()
    sections.append("Resources\n" + table(["state", "plan", "count"],
                                          [(r["state"], r["plan"], r["n"]) for r in rows], right=[2]))
    rows = conn.execute("SELECT state, pause_reason, count(*) AS n, "
                        "max(now() - checkpoint) FILTER (WHERE state = 'active') AS max_lag, "
                        "count(*) FILTER (WHERE over_capacity_since IS NOT NULL) AS over_capacity, "
                        "COALESCE(sum(unreadable), 0) AS unreadable "
                        "FROM sources GROUP BY 1, 2 ORDER BY 1, 2").fetchall()
    sections.append("Sources\n" + table(["state", "pause reason", "count", "max lag", "over capacity", "unreadable"],
                                        [(r["state"], r["pause_reason"], r["n"], r["max_lag"], r["over_capacity"],
                                          r["unreadable"]) for r in rows],
                                        right=[2, 3, 4, 5]))
    rows = conn.execute(DRAINS_BY_KIND).fetchall()
    backlog = outbox.backlog_by_kind(conn)
    sections.append("Drains (live resources)\n" + table(
        ["kind", "drains", "enabled", "delivered", "dropped", "rejected", "backlog"],
        [(r["kind"], r["drains"], r["enabled"], r["delivered"], r["dropped"], r["rejected"],
          backlog.get(r["kind"], outbox.Backlog()).records) for r in rows], right=range(1, 7)))
    row = outbox.held(conn)
    sections.append("Outbox\n" + table(["batches", "records", "oldest batch"],
                                       [(row["batches"], row["records"], row["oldest"])], right=[0, 1]))
    ok = True
    queue_rows = []
    try:
        for name in jobs.QUEUE_NAMES:
            q = jobs.queue(name, redis_client)
            queue_rows.append((name, q.count, q.started_job_registry.count, q.failed_job_registry.count))
        queues = table(["queue", "queued", "started", "failed"], queue_rows, right=[1, 2, 3])
    except Exception as exc:  # redis errors: the class says enough, the message may hold the URL
        ok = False
        queues = f"Redis unreachable ({type(exc).__name__})"
    sections.append("Queues\n" + queues)
    beats = heartbeats.every(conn)
    sections.append("Heartbeats\n" + table(["name", "last beat", "ago"],
                                           [(b["name"], b["beat_at"], now - b["beat_at"]) for b in beats],
                                           right=[2]))
    if not any(b["name"] == heartbeats.TICK for b in beats):
        sections.append("warning: the clock has never ticked (no 'tick' heartbeat): is a clock process running?")
    return "\n\n".join(sections), ok


# --- one resource ------------------------------------------------------------------

def resource(conn: psycopg.Connection, vault: Vault, resource_id: uuid.UUID | str) -> str | None:
    """The report of one resource, or None when there is no such resource."""
    row = conn.execute(
        "SELECT id, partner_id, name, plan, state, region, created_at, provisioned_at, deprovisioned_at, "
        "provision_error, now() AS now FROM resources WHERE id = %s", (resource_id,),
    ).fetchone()
    if row is None:
        return None
    now = row["now"]
    head = [("resource", row["id"]), ("name", row["name"]), ("partner", row["partner_id"]),
            ("plan", row["plan"]), ("state", row["state"]), ("region", row["region"]),
            ("created", row["created_at"]), ("provisioned", row["provisioned_at"])]
    if row["deprovisioned_at"]:
        head.append(("deprovisioned", row["deprovisioned_at"]))
    if row["provision_error"]:
        head.append(("provision error", clip(row["provision_error"], 200)))
    width = max(len(k) for k, _ in head)
    sections = ["\n".join(f"{k.ljust(width)}  {_cell(v)}" for k, v in head)]

    sources = conn.execute(
        "SELECT id, app_id, environment_id, state, pause_reason, last_poll_at, checkpoint, last_error, "
        "backfill_from, backfill_until, over_capacity_since, density_per_minute, capacity_per_minute, "
        "unreadable FROM sources WHERE resource_id = %s ORDER BY created_at, id",
        (resource_id,),
    ).fetchall()
    sections.append("Sources\n" + table(
        ["id", "app / environment", "state", "pause reason", "last poll", "lag", "backfill", "capacity",
         "unreadable", "last error"],
        [(s["id"], f"{s['app_id']} / {s['environment_id']}", s["state"], s["pause_reason"], s["last_poll_at"],
          now - s["checkpoint"], _backfill(s), capacity(s), s["unreadable"], clip(s["last_error"]))
         for s in sources],
        right=[5, 8]))

    rows = conn.execute(
        "SELECT id, kind, name, url_enc, enabled, cursor, delivered, retried, dropped, rejected, filtered, "
        "redacted, consecutive_failures, next_attempt_at, last_delivery_at, last_error, rules FROM drains "
        "WHERE resource_id = %s ORDER BY created_at, id", (resource_id,),
    ).fetchall()
    backlog = {drain_id: b.records for drain_id, b in outbox.backlogs(conn, resource_id).items()}
    # The backlog counts records the drain's rules will filter out: they are only known once decoded.
    sections.append("Drains\n" + table(
        ["id", "kind", "name", "url", "enabled", "delivered", "retried", "dropped", "rejected", "backlog",
         "filtered", "redacted", "next attempt", "rules", "last error"],
        [(d["id"], d["kind"], d["name"], safe_url(vault, d["url_enc"]), d["enabled"], d["delivered"],
          d["retried"], d["dropped"], d["rejected"], backlog.get(d["id"], 0), d["filtered"], d["redacted"],
          None if d["next_attempt_at"] <= now else d["next_attempt_at"] - now, clip(rules.summary(d["rules"])),
          clip(d["last_error"]))
         for d in rows], right=range(5, 13)))
    held = outbox.held(conn, resource_id)
    sections.append("Outbox\n" + table(["batches", "records", "oldest batch"],
                                       [(held["batches"], held["records"], held["oldest"])], right=[0, 1]))
    return "\n\n".join(sections)


def _per_minute(value: float | None) -> str:
    return "?" if value is None else f"{value:,.0f}/min"


def capacity(source: dict) -> str | None:
    """``OVER 900/min > 750/min``: the app logs more than its share of the API can export (records a minute)."""
    if source["over_capacity_since"] is None:
        return None
    return f"OVER {_per_minute(source['density_per_minute'])} > {_per_minute(source['capacity_per_minute'])}"


def _backfill(source: dict) -> str | None:
    start, until = source["backfill_from"], source["backfill_until"]
    if start is None or until is None:
        return None
    total = (until - start).total_seconds()
    done = (source["checkpoint"] - start).total_seconds()
    return f"{min(100.0, max(0.0, 100 * done / total)):.0f}%" if total > 0 else "100%"
