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

Each resource may send so many frames and bytes a minute, by plan
(:class:`VolumeLimit`); a batch over that is refused with 429 before anything
is stored, and counted for the owner (:func:`stats`).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass

import psycopg
import redis

from broker import outbox, plans
from broker.formats import logplex
from broker.formats.logplex import OWN_APP_NAME, Malformed  # noqa: F401 — the names web/ingest.py uses

MAX_FRAMES = 20_000

log = logging.getLogger(__name__)


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
    """The live resource a ``Logplex-Drain-Token`` belongs to (never a failed or deprovisioned one)."""
    return conn.execute(
        "SELECT id, plan FROM resources WHERE log_drain_token = %s AND state IN ('provisioning', 'provisioned')",
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


def resource_for_ingest_token(conn: psycopg.Connection, resource_id) -> dict | None:
    """The live resource an OTLP ingest token names, with its ingest token's generation (the token
    itself is checked by the caller: :func:`broker.tokens.ingest_token_valid`)."""
    return conn.execute(
        "SELECT id, plan, ingest_token_generation FROM resources "
        "WHERE id = %s AND state IN ('provisioning', 'provisioned')", (resource_id,)).fetchone()


def store_otlp(conn: psycopg.Connection, resource_id, parsed) -> None:
    """Store an OTLP request's records (``otlp_ingest.Parsed``) and count it. OTLP has no batch id, so
    the row's is fresh: a request the client retries is stored again (delivery is at least once)."""
    with conn.transaction():
        conn.execute(
            "INSERT INTO ingest_batches (resource_id, frame_id, frames, stored, own, origin) "
            "VALUES (%s, %s, %s, %s, %s, 'otlp')",
            (resource_id, f"otlp:{uuid.uuid4()}", parsed.records, parsed.stored, parsed.own))
        if parsed.stored:
            outbox.append_otlp(conn, resource_id, parsed.payload, parsed.stored)


def stats(conn: psycopg.Connection, resource_id, hours: int = 24, origin: str = "heroku") -> dict:
    """What drain ingest (``origin`` heroku: logplex; otlp: OTLP) received for a resource over the
    last ``hours``, and what the volume limit refused of either (the limit is one per resource)."""
    row = conn.execute(
        """
        SELECT count(*) AS batches, COALESCE(sum(frames), 0) AS frames, COALESCE(sum(stored), 0) AS stored,
               COALESCE(sum(own), 0) AS own, COALESCE(sum(replays), 0) AS replays, max(received_at) AS last
        FROM ingest_batches
        WHERE resource_id = %s AND received_at > now() - make_interval(hours => %s) AND origin = %s
        """, (resource_id, hours, origin)).fetchone()
    refused = conn.execute(
        """
        SELECT COALESCE(sum(answers), 0) AS answers, COALESCE(sum(batches), 0) AS batches,
               COALESCE(sum(frames), 0)::bigint AS frames, COALESCE(sum(bytes), 0)::bigint AS bytes,
               max(minute) AS last
        FROM ingest_refusals WHERE resource_id = %s AND minute > now() - make_interval(hours => %s)
        """, (resource_id, hours)).fetchone()
    return {"hours": hours, "batches": row["batches"], "frames": row["frames"], "stored": row["stored"],
            "own_dropped": row["own"], "replays": row["replays"],
            "last_received_at": row["last"].isoformat() if row["last"] else None,
            "throttled": refused["answers"], "refused_batches": refused["batches"],
            "refused_frames": refused["frames"], "refused_bytes": refused["bytes"],
            "last_throttled_at": refused["last"].isoformat() if refused["last"] else None}


# Logplex retries a batch within seconds; a day of Frame-Ids is plenty to recognise replays,
# and two days of rows keep the 24-hour counts whole.
KEEP_HOURS = 48


def forget(conn: psycopg.Connection, hours: int = KEEP_HOURS) -> int:
    """Delete ingest records (batches and refusals) older than ``hours``; returns how many."""
    batches = conn.execute("DELETE FROM ingest_batches WHERE received_at < now() - make_interval(hours => %s)",
                           (hours,)).rowcount
    refusals = conn.execute("DELETE FROM ingest_refusals WHERE minute < now() - make_interval(hours => %s)",
                            (hours,)).rowcount
    return batches + refusals


# --- volume limit --------------------------------------------------------------------
#
# Anyone holding a resource's drain token (`heroku drains` shows it) can POST batches, and every
# stored batch may stay in PostgreSQL for the plan's backlog. The limit caps what one resource can
# make the broker store: frames and bytes (as inflated) per minute, by plan (broker/plans.py), scaled
# by INGEST_LIMIT_SCALE and counted over INGEST_LIMIT_PERIOD_SECONDS. It is counted in Redis, so a
# refusal costs no database work: a sliding window estimated from two fixed ones (this window's count
# plus the previous window's, weighted by how much of it the sliding window still covers), on Redis's
# own clock, checked and added in one Lua script so two web processes never both take the last room.
# Forge's per-app call budget (broker/ratelimit.py) counts calls one by one in a sorted set; here a
# batch weighs up to 20,000 frames and a megabyte, so the windows hold sums instead.
#
# Logplex treats 429 (like 5xx) as a temporary failure: it retries the batch with the same
# Logplex-Frame-Id, three tries in all within seconds, ignoring Retry-After, then drops it and reports
# an L10 line in the app's stream (research heroku-addon-and-logplex.md §7.3). A refused batch is not
# recorded under its Frame-Id, so a retry that finds room is stored. Any other 4xx would make logplex
# drop the batch at once.
#
# Refusals are counted in Redis as they happen and written to PostgreSQL (``ingest_refusals``, shown
# by :func:`stats`) with the first refusal of each minute and with the next batch stored; the same
# first refusal is the one logged, so a flood makes one log line a minute per resource.
#
# Redis down or slow: ingest goes on without the limit — an app's logs are worth more than the cap —
# and says so at most once a minute per process.

VOLUME_KEY = "forgedrain:ingest-volume:{resource}"
REFUSED_KEY = "forgedrain:ingest-refused:{resource}"
REFUSED_BATCH_KEY = "forgedrain:ingest-refused-batches:{resource}"
THROTTLED_KEY = "forgedrain:ingest-throttled:{resource}"

# A refused Frame-Id is counted once within this (logplex's retries come within seconds), among the
# resource's latest REFUSED_BATCHES_KEPT refused ids: one bounded sorted set per resource, so a flood
# of refused batches with fresh ids cannot fill Redis.
REFUSED_BATCH_MS = 3_600_000
REFUSED_BATCHES_KEPT = 1000
# Refusals not yet written to PostgreSQL are kept this long (the next stored batch writes them).
REFUSED_KEEP_MS = KEEP_HOURS * 3_600_000
# One log line (and one write of the refusal counts) per resource and minute while refusing.
THROTTLE_NOTICE_MS = 60_000

# KEYS[1] volume (hash), KEYS[2] refusals not yet written (hash), KEYS[3] refused Frame-Ids (sorted
# set), KEYS[4] notice; ARGV[1] frames, ARGV[2] bytes, ARGV[3] frames allowed, ARGV[4] bytes allowed,
# ARGV[5] period (µs), ARGV[6..8] how long (ms) a refused Frame-Id, the unwritten refusals and the
# notice are kept, ARGV[9] the Frame-Id, ARGV[10] how many refused Frame-Ids are kept. Returns {1, 0, 0, refusals pending} when the batch is admitted (and counted), else
# {0, µs until it would fit, 1 for the resource's first refusal of the minute, 0}.
ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local period = tonumber(ARGV[5])
local window = math.floor(now / period)
local elapsed = now - window * period
local weight = 1 - elapsed / period
local v = redis.call('HMGET', KEYS[1], 'window', 'frames', 'bytes', 'prev_frames', 'prev_bytes')
local cur, prev = {0, 0}, {0, 0}
local seen = tonumber(v[1])
if seen == window then
  cur = {tonumber(v[2]) or 0, tonumber(v[3]) or 0}
  prev = {tonumber(v[4]) or 0, tonumber(v[5]) or 0}
elseif seen == window - 1 then
  prev = {tonumber(v[2]) or 0, tonumber(v[3]) or 0}
end
local size = {tonumber(ARGV[1]), tonumber(ARGV[2])}
local allowed = {tonumber(ARGV[3]), tonumber(ARGV[4])}
local wait = 0
for i = 1, 2 do
  -- A batch larger than the whole allowance fits only an empty window.
  local room = math.max(allowed[i] - size[i], 0)
  if prev[i] * weight + cur[i] > room then
    local w
    if cur[i] <= room then  -- the previous window's share fades enough during this one
      w = (1 - (room - cur[i]) / prev[i]) * period - elapsed
    else  -- this window's count fades during the next one
      w = (period - elapsed) + (1 - room / cur[i]) * period
    end
    wait = math.max(wait, w, 1)
  end
end
if wait == 0 then
  redis.call('HSET', KEYS[1], 'window', window, 'frames', cur[1] + size[1], 'bytes', cur[2] + size[2],
             'prev_frames', prev[1], 'prev_bytes', prev[2])
  redis.call('PEXPIRE', KEYS[1], math.ceil(2 * period / 1000) + 1000)
  return {1, 0, 0, redis.call('EXISTS', KEYS[2])}
end
redis.call('HINCRBY', KEYS[2], 'answers', 1)
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - tonumber(ARGV[6]) * 1000)
if redis.call('ZADD', KEYS[3], 'NX', now, ARGV[9]) == 1 then
  redis.call('HINCRBY', KEYS[2], 'batches', 1)
  redis.call('HINCRBY', KEYS[2], 'frames', size[1])
  redis.call('HINCRBY', KEYS[2], 'bytes', size[2])
  redis.call('ZREMRANGEBYRANK', KEYS[3], 0, -(tonumber(ARGV[10]) + 1))
end
redis.call('PEXPIRE', KEYS[3], tonumber(ARGV[6]))
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[7]))
local notice = 0
if redis.call('SET', KEYS[4], 1, 'NX', 'PX', tonumber(ARGV[8])) then notice = 1 end
return {0, math.ceil(wait), notice, 0}
"""

REFUSAL_FIELDS = ("answers", "batches", "frames", "bytes")


@dataclass(frozen=True)
class Allowance:
    """What a resource may send per minute (scaled), and per counting window."""
    frames_per_minute: int
    bytes_per_minute: int
    frames: int
    bytes: int


@dataclass(frozen=True)
class Verdict:
    admitted: bool
    retry_after: float = 0.0  # seconds until the batch would fit, when refused
    notice: bool = False  # the resource's first refusal this minute: log it, write the counts
    pending: bool = False  # refusals counted in Redis wait to be written to PostgreSQL
    allowance: Allowance | None = None


class VolumeLimit:
    """Per-resource drain ingest volume, counted in Redis (see the notes above)."""

    # After Redis failed, ingest goes on uncounted this long before asking it again, so a Redis that
    # does not answer costs one request its socket timeout, not every request.
    RETRY_REDIS_SECONDS = 10.0
    WARN_EVERY_SECONDS = 60.0

    def __init__(self, connection: redis.Redis, scale: float = 1.0, period_seconds: float = 60.0):
        self.connection = connection
        self.scale = scale
        self.period_seconds = period_seconds
        self._admit = connection.register_script(ADMIT)
        self._lock = threading.Lock()
        self._redis_down_until = 0.0
        self._warned_at: float | None = None

    def allowance(self, plan: plans.Plan) -> Allowance | None:
        """The plan's allowance as scaled; None when the limit is off (INGEST_LIMIT_SCALE=0)."""
        if self.scale <= 0:
            return None
        share = self.period_seconds / 60
        frames, size = plan.ingest_frames_per_minute * self.scale, plan.ingest_bytes_per_minute * self.scale
        return Allowance(max(1, round(frames)), max(1, round(size)),
                         max(1, round(frames * share)), max(1, round(size * share)))

    def check(self, resource_id, plan_name: str, frame_id: str, frames: int, size: int) -> Verdict:
        """Admit (and count) a batch of ``frames`` frames and ``size`` bytes, or refuse it."""
        allowance = self.allowance(plans.get(plan_name) or plans.PLANS["test"])
        if allowance is None or time.monotonic() < self._redis_down_until:
            return Verdict(True)
        resource = str(resource_id)
        try:
            admitted, wait, notice, pending = self._admit(
                keys=[VOLUME_KEY.format(resource=resource), REFUSED_KEY.format(resource=resource),
                      REFUSED_BATCH_KEY.format(resource=resource),
                      THROTTLED_KEY.format(resource=resource)],
                args=[frames, size, allowance.frames, allowance.bytes, int(self.period_seconds * 1_000_000),
                      REFUSED_BATCH_MS, REFUSED_KEEP_MS, THROTTLE_NOTICE_MS, frame_id, REFUSED_BATCHES_KEPT])
        except redis.RedisError as exc:
            self._redis_failed(exc)
            return Verdict(True)
        return Verdict(bool(admitted), int(wait) / 1_000_000, bool(notice), bool(pending), allowance)

    def take_refusals(self, resource_id) -> dict[str, int] | None:
        """The refusal counts not yet written, removed from Redis (None when there are none)."""
        key = REFUSED_KEY.format(resource=resource_id)
        try:
            with self.connection.pipeline(transaction=True) as pipe:
                counts, _ = pipe.hgetall(key).delete(key).execute()
        except redis.RedisError as exc:
            self._redis_failed(exc)
            return None
        counts = {k.decode(): int(v) for k, v in counts.items()}
        return {name: counts.get(name, 0) for name in REFUSAL_FIELDS} if counts else None

    def give_back(self, resource_id, counts: dict[str, int]) -> None:
        """Return counts taken by :meth:`take_refusals` that could not be written."""
        key = REFUSED_KEY.format(resource=resource_id)
        try:
            with self.connection.pipeline(transaction=True) as pipe:
                for name, value in counts.items():
                    pipe.hincrby(key, name, value)
                pipe.pexpire(key, REFUSED_KEEP_MS).execute()
        except redis.RedisError as exc:
            self._redis_failed(exc)

    def _redis_failed(self, exc: Exception) -> None:
        now = time.monotonic()
        with self._lock:
            self._redis_down_until = now + self.RETRY_REDIS_SECONDS
            if self._warned_at is not None and now - self._warned_at < self.WARN_EVERY_SECONDS:
                return
            self._warned_at = now
        log.warning("ingest volume limit unavailable (Redis: %s): batches are stored, not counted",
                    type(exc).__name__)


def record_refusals(conn: psycopg.Connection, limit: VolumeLimit, resource_id) -> None:
    """Write the refusal counts waiting in Redis into ``ingest_refusals`` (this minute's row)."""
    counts = limit.take_refusals(resource_id)
    if counts is None:
        return
    try:
        conn.execute(
            """
            INSERT INTO ingest_refusals (resource_id, minute, answers, batches, frames, bytes)
            VALUES (%(resource)s, date_trunc('minute', now()), %(answers)s, %(batches)s, %(frames)s, %(bytes)s)
            ON CONFLICT (resource_id, minute) DO UPDATE SET
                answers = ingest_refusals.answers + excluded.answers,
                batches = ingest_refusals.batches + excluded.batches,
                frames = ingest_refusals.frames + excluded.frames,
                bytes = ingest_refusals.bytes + excluded.bytes
            """, {"resource": resource_id, **counts})
    except BaseException:
        limit.give_back(resource_id, counts)
        raise
