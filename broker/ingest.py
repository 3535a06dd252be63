"""Drain ingest: the Heroku app's own logs, POSTed by logplex to ``log_drain_url`` (SPEC §5).

A request carries octet-counted frames (RFC 6587 §3.4.1) in Heroku's HTTPS
drain dialect, ``<PRI>1 TIMESTAMP HOST APP PROCID MSGID MSG\\n`` (research
heroku-addon-and-logplex.md §7.1). The framing is checked strictly: every
declared length must match the bytes that follow, the body must end on a frame
boundary, and the frame count must equal ``Logplex-Msg-Count`` — otherwise the
whole batch is refused and nothing is stored. The syslog header is read
leniently: a frame whose header is not RFC 5424 keeps its whole text as the
message, as Vector's ``heroku_logs`` keeps such lines raw.

The request is acknowledged once the batch is durably in the outbox, and the
work there is kept small: the framing check, a look at each frame's APP-NAME,
and the accepted frames stored as they came (zlib level 1). Turning them into
records happens in the delivery workers (:meth:`broker.outbox.Batch.records`): each message
becomes a record of the same model as a Forge record, plus a ``heroku`` part
the formats use to keep Heroku's own PRI, APP-NAME and PROCID
(``app``/``web.1``, ``heroku``/``router``)::

    {"timeUnixNano": "…", "severityText": "INFO", "severityNumber": 9,
     "body": {"stringValue": "…"}, "heroku": {"pri": 190, "app": "app", "dyno": "web.1"}}

Frames the broker itself wrote into the app's stream through ``log_input_url``
(APP-NAME :data:`OWN_APP_NAME`) are dropped and counted, so nothing loops.
A batch is stored once per ``Logplex-Frame-Id``: logplex retries a batch with
the same id, and a replay is acknowledged and counted without storing again.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

from broker import outbox
from broker.formats import logplex
from broker.formats.logplex import OWN_APP_NAME, Malformed  # noqa: F401 — the names web/ingest.py uses

MAX_FRAMES = 20_000


def frames(body: bytes, limit: int = MAX_FRAMES) -> list[bytes]:
    """Split octet-counted frames; raise :class:`Malformed` on any framing error."""
    return logplex.split(body, limit)


@dataclass
class Parsed:
    kept: list[bytes]  # what to store: octet-counted frames (the whole body when none was dropped)
    frames: int
    own: int  # frames the broker wrote itself (dropped)

    @property
    def stored(self) -> int:
        return self.frames - self.own


OWN = OWN_APP_NAME.encode()


def parse(body: bytes, declared_count: int) -> Parsed:
    """Check the framing against the headers and set the broker's own frames aside."""
    found = frames(body)
    if len(found) != declared_count:
        raise Malformed(f"Logplex-Msg-Count is {declared_count} but the body holds {len(found)} frames")
    own = [i for i, m in enumerate(found) if logplex.app_name(m) == OWN]
    if not own:  # the usual case: the body is stored as it came
        return Parsed([body], len(found), 0)
    skip = set(own)
    kept = [b"%d %b" % (len(m), m) for i, m in enumerate(found) if i not in skip]
    return Parsed(kept, len(found), len(own))


# --- store ---------------------------------------------------------------------------

def resource_for_token(conn: psycopg.Connection, token: str) -> dict | None:
    """The live resource a ``Logplex-Drain-Token`` belongs to (never a deprovisioned one)."""
    return conn.execute(
        "SELECT id, plan FROM resources WHERE log_drain_token = %s AND state <> 'deprovisioned'",
        (token,)).fetchone()


def store(conn: psycopg.Connection, resource_id, frame_id: str, parsed: Parsed) -> bool:
    """Store the batch once per Frame-Id; False when it is a replay (nothing stored)."""
    with conn.transaction():
        fresh = conn.execute(
            """
            INSERT INTO ingest_batches (resource_id, frame_id, frames, stored, own)
            VALUES (%s, %s, %s, %s, %s)
            ON CONFLICT (resource_id, frame_id) DO UPDATE SET replays = ingest_batches.replays + 1
            RETURNING xmax = 0 AS inserted
            """,
            (resource_id, frame_id, parsed.frames, parsed.stored, parsed.own),
        ).fetchone()["inserted"]
        if fresh and parsed.stored:
            # The batch's time is when it was received: the frames are read in the workers.
            outbox.append_frames(conn, resource_id, parsed.kept, parsed.stored)
    return fresh


def stats(conn: psycopg.Connection, resource_id, hours: int = 24) -> dict:
    """What drain ingest received for a resource over the last ``hours``."""
    row = conn.execute(
        """
        SELECT count(*) AS batches, COALESCE(sum(frames), 0) AS frames, COALESCE(sum(stored), 0) AS stored,
               COALESCE(sum(own), 0) AS own, COALESCE(sum(replays), 0) AS replays, max(received_at) AS last
        FROM ingest_batches WHERE resource_id = %s AND received_at > now() - make_interval(hours => %s)
        """, (resource_id, hours)).fetchone()
    return {"hours": hours, "batches": row["batches"], "frames": row["frames"], "stored": row["stored"],
            "own_dropped": row["own"], "replays": row["replays"],
            "last_received_at": row["last"].isoformat() if row["last"] else None}


# Logplex retries a batch within seconds; a day of Frame-Ids is plenty to recognise replays,
# and two days of rows keep the 24-hour counts whole.
KEEP_HOURS = 48


def forget(conn: psycopg.Connection, hours: int = KEEP_HOURS) -> int:
    """Delete ingest records older than ``hours``; returns how many."""
    return conn.execute("DELETE FROM ingest_batches WHERE received_at < now() - make_interval(hours => %s)",
                        (hours,)).rowcount
