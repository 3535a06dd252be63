"""The audit log: who changed what on a resource, and when (SPEC §7)."""

from __future__ import annotations

import json
import uuid

import psycopg

# Entries are kept 400 days: a year, the usual horizon of an audit (a yearly review looks back
# twelve months), plus a margin for a review that comes late. A purged resource takes its own with it.
AUDIT_KEEP_DAYS = 400

INSERT = """
INSERT INTO audit_log (resource_id, actor, action, detail) VALUES (%s, %s, %s, %s)
"""

RECENT = """
SELECT actor, action, detail, at FROM audit_log
WHERE resource_id = %s ORDER BY at DESC, id DESC LIMIT %s
"""

# One bounded chunk, oldest first, found on audit_log_at_idx (migration 0016). ``ctid = ANY(ARRAY(...))``
# deletes by a TID scan of exactly those rows; ``id IN (SELECT ...)`` was planned as a hash join over a
# sequential scan of the whole table (1.2 s per chunk at 2 M entries, against 0.05 s).
FORGET = """
DELETE FROM audit_log WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM audit_log WHERE at < now() - make_interval(days => %s) ORDER BY at LIMIT %s))
"""


def record(conn: psycopg.Connection, resource_id: uuid.UUID | str, actor: str, action: str,
           detail: dict | None = None) -> None:
    """Append one entry; call it inside the transaction that makes the change."""
    conn.execute(INSERT, (resource_id, actor, action, json.dumps(detail or {})))


def recent(conn: psycopg.Connection, resource_id: uuid.UUID | str, limit: int = 50) -> list[dict]:
    return conn.execute(RECENT, (resource_id, limit)).fetchall()


def forget(conn: psycopg.Connection, limit: int, days: int = AUDIT_KEEP_DAYS) -> int:
    """Delete at most ``limit`` entries older than ``days``; returns how many (fewer than ``limit``: done)."""
    return conn.execute(FORGET, (days, limit)).rowcount
