"""The audit log: who changed what on a resource, and when (SPEC §7)."""

from __future__ import annotations

import json
import uuid

import psycopg

INSERT = """
INSERT INTO audit_log (resource_id, actor, action, detail) VALUES (%s, %s, %s, %s)
"""

RECENT = """
SELECT actor, action, detail, at FROM audit_log
WHERE resource_id = %s ORDER BY at DESC, id DESC LIMIT %s
"""


def record(conn: psycopg.Connection, resource_id: uuid.UUID | str, actor: str, action: str,
           detail: dict | None = None) -> None:
    """Append one entry; call it inside the transaction that makes the change."""
    conn.execute(INSERT, (resource_id, actor, action, json.dumps(detail or {})))


def recent(conn: psycopg.Connection, resource_id: uuid.UUID | str, limit: int = 50) -> list[dict]:
    return conn.execute(RECENT, (resource_id, limit)).fetchall()
