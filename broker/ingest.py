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
records happens in the delivery workers (:func:`records`): each message
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

import re
import zlib
from dataclasses import dataclass
from datetime import datetime

import psycopg

from broker import polling
# What the broker writes as APP-NAME into the app's own log stream (the heroku drain).
OWN_APP_NAME = "forgedrain"
MAX_FRAMES = 20_000
MAX_FRAME_BYTES = 64 * 1024
HEADER = re.compile(
    rb"<(\d{1,3})>1 (\S+) (\S+) (\S+) (\S+) (\S+)(?: (.*))?\Z", re.DOTALL)
TIME = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d{1,9})?(Z|[+-]\d\d:\d\d)$")
# syslog severity → (severityText as syslog names it, OTLP SeverityNumber)
SEVERITY = {0: ("EMERG", 24), 1: ("ALERT", 23), 2: ("CRIT", 22), 3: ("ERR", 17), 4: ("WARNING", 13),
            5: ("NOTICE", 10), 6: ("INFO", 9), 7: ("DEBUG", 5)}


class Malformed(Exception):
    """The body is not what its headers declare; the message says where."""


def frames(body: bytes, limit: int = MAX_FRAMES) -> list[bytes]:
    """Split octet-counted frames; raise :class:`Malformed` on any framing error."""
    out: list[bytes] = []
    position, size = 0, len(body)
    while position < size:
        space = body.find(b" ", position, position + 8)
        if space <= position or not body[position:space].isdigit():
            raise Malformed(f"frame {len(out) + 1}: expected a decimal length then a space at byte {position}")
        length = int(body[position:space])
        if length == 0 or length > MAX_FRAME_BYTES:
            raise Malformed(f"frame {len(out) + 1}: length {length} is outside 1..{MAX_FRAME_BYTES}")
        end = space + 1 + length
        if end > size:
            raise Malformed(f"frame {len(out) + 1}: declares {length} bytes but only {size - space - 1} follow")
        out.append(body[space + 1:end])
        if len(out) > limit:
            raise Malformed(f"more than {limit} frames in one request")
        position = end
    return out


def _nanos(text: str, fallback: int) -> int:
    match = TIME.match(text)
    if not match:
        return fallback
    try:
        moment = datetime.fromisoformat(match.group(1) + (match.group(3).replace("Z", "+00:00")))
    except ValueError:
        return fallback
    fraction = (match.group(2) or ".")[1:].ljust(9, "0")
    return int(moment.timestamp()) * 1_000_000_000 + int(fraction or 0)


def record(message: bytes, received_nanos: int) -> dict:
    """A record of the broker's model for one logplex message."""
    match = HEADER.match(message)
    if not match or int(match.group(1)) > 191:
        text = message.decode("utf-8", "replace").rstrip("\n")
        return {"timeUnixNano": str(received_nanos), "severityText": "INFO", "severityNumber": 9,
                "body": {"stringValue": text}, "heroku": {"pri": 190, "app": "-", "dyno": "-"}}
    pri = int(match.group(1))
    text, number = SEVERITY[pri % 8]
    body = (match.group(7) or b"").decode("utf-8", "replace")
    if body.endswith("\n"):
        body = body[:-1]
    return {
        "timeUnixNano": str(_nanos(match.group(2).decode("ascii", "replace"), received_nanos)),
        "severityText": text, "severityNumber": number, "body": {"stringValue": body},
        "heroku": {"pri": pri, "app": match.group(4).decode("ascii", "replace"),
                   "dyno": match.group(5).decode("ascii", "replace")},
    }


@dataclass
class Parsed:
    kept: list[bytes]  # what to store: octet-counted frames (the whole body when none was dropped)
    frames: int
    own: int  # frames the broker wrote itself (dropped)

    @property
    def stored(self) -> int:
        return self.frames - self.own


OWN = OWN_APP_NAME.encode()


def _app_name(message: bytes) -> bytes:
    parts = message.split(b" ", 4)
    return parts[3] if len(parts) > 4 else b""


def parse(body: bytes, declared_count: int) -> Parsed:
    """Check the framing against the headers and set the broker's own frames aside."""
    found = frames(body)
    if len(found) != declared_count:
        raise Malformed(f"Logplex-Msg-Count is {declared_count} but the body holds {len(found)} frames")
    own = [i for i, m in enumerate(found) if _app_name(m) == OWN]
    if not own:  # the usual case: the body is stored as it came
        return Parsed([body], len(found), 0)
    skip = set(own)
    kept = [b"%d %b" % (len(m), m) for i, m in enumerate(found) if i not in skip]
    return Parsed(kept, len(found), len(own))


def records(payload: bytes, received_nanos: int) -> list[dict]:
    """The records of a stored ingest batch (what :func:`store` wrote), for delivery."""
    return [record(m, received_nanos) for m in frames(zlib.decompress(payload), limit=10**9)]


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
            polling.lock_for_append(conn, resource_id)  # held to the commit: ids in commit order
            # min_ts/max_ts hold the time of receipt: the frames are read in the workers.
            conn.execute(
                "INSERT INTO outbox (resource_id, source_id, origin, record_count, min_ts, max_ts, payload) "
                "VALUES (%s, NULL, 'heroku', %s, now(), now(), %s)",
                (resource_id, parsed.stored, zlib.compress(b"".join(parsed.kept), 1)),
            )
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
