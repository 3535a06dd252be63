"""Replaying a drain: deliver again what the outbox holds since a given time (``python -m broker replay``).

A drain's cursor is the last outbox batch it has. Replay moves it back to just
before the first batch of the drain's resource stored at or after ``since``
(the highest id stored before then, when ids follow storage order), never
forward, and clears the drain's back-off and lease so the next delivery job
takes it at once and a delivery in flight cannot move the cursor forward
again. Receivers dedupe: logplex batches carry the same ``Logplex-Frame-Id``
(derived from drain, batch and part), OTLP/syslog records the same ids.

Only what the outbox still holds can be replayed: batches are pruned once
every drain of their resource has them, or when older than the plan's
backlog. The result says from when the replay actually starts.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import psycopg

from broker import audit, outbox
from broker.validation import InputError


@dataclass
class Replay:
    drain_id: uuid.UUID
    resource_id: uuid.UUID
    kind: str
    enabled: bool
    since: datetime
    old_cursor: int
    new_cursor: int
    batches: int            # batches the drain had that it will receive again
    records: int
    backlog_batches: int    # everything it will now receive (the re-queued included)
    backlog_records: int
    oldest_held: datetime | None   # the resource's oldest batch still in the outbox
    starts_at: datetime | None     # the first batch that will be delivered again

    @property
    def truncated(self) -> bool:
        """The outbox no longer holds batches as old as ``since``."""
        return self.oldest_held is None or self.oldest_held > self.since


def count(conn: psycopg.Connection, drain: dict, after: int, upto: int | None = None) -> tuple[int, int]:
    """Batches and records the drain receives of ``(after, upto]`` (the outbox's backlog definition)."""
    got = outbox.between(conn, drain["resource_id"], drain["kind"], after, upto)
    return got.batches, got.records


def replay(conn: psycopg.Connection, drain_id: uuid.UUID | str, since: datetime, *, actor: str,
           field: str = "since") -> Replay:
    """Move the drain's cursor back to ``since``, audited, in one transaction.

    :class:`InputError` (nothing changed) for an unknown drain, a drain of a
    deprovisioned resource, or a ``since`` in the future.
    """
    with conn.transaction():
        outbox.lock_against_prune(conn)  # no prune meanwhile
        drain = conn.execute(
            "SELECT d.id, d.resource_id, d.kind, d.enabled, d.cursor, r.state AS resource_state, now() AS now "
            "FROM drains d JOIN resources r ON r.id = d.resource_id WHERE d.id = %s FOR UPDATE OF d",
            (drain_id,),
        ).fetchone()
        if drain is None:
            raise InputError("drain", f"no drain {drain_id}")
        if drain["resource_state"] == "deprovisioned":
            raise InputError("drain", f"drain {drain_id} belongs to a deprovisioned resource: nothing is "
                                      "delivered for it any more")
        if since > drain["now"]:
            raise InputError(field, f"{field} is in the future")
        held = outbox.held_since(conn, drain["resource_id"], since)
        old_cursor = drain["cursor"]
        new_cursor = old_cursor if held["first"] is None else min(old_cursor, held["first"] - 1)
        batches, records = count(conn, drain, new_cursor, old_cursor)
        starts_at = None
        if held["first"] is not None:
            starts_at = outbox.first_after(conn, drain["resource_id"], new_cursor)
        conn.execute(
            "UPDATE drains SET cursor = %s, partial_batch = NULL, partial_records = 0, next_attempt_at = now(), "
            "consecutive_failures = 0, lease_token = NULL, lease_expires_at = NULL, updated_at = now() "
            "WHERE id = %s",
            (new_cursor, drain["id"]),
        )
        backlog_batches, backlog_records = count(conn, drain, new_cursor)
        audit.record(conn, drain["resource_id"], actor, "drain.replayed", {
            "drain_id": str(drain["id"]), "kind": drain["kind"], "since": since.isoformat(),
            "cursor_from": old_cursor, "cursor_to": new_cursor, "batches": batches, "records": records,
        })
    return Replay(drain_id=drain["id"], resource_id=drain["resource_id"], kind=drain["kind"],
                  enabled=drain["enabled"], since=since, old_cursor=old_cursor, new_cursor=new_cursor,
                  batches=batches, records=records, backlog_batches=backlog_batches,
                  backlog_records=backlog_records, oldest_held=held["oldest"], starts_at=starts_at)
