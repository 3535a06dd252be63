"""Limits kept in Redis: the per-Forge-app call budget, shared by every worker and every resource
(SPEC §3), and per-resource bounds on calls out that owners start from the web (:class:`OwnerCalls`).

Atlassian allows 30 calls per minute per app id, whoever makes them. Several
resources may register the same app, and any worker may poll any of them, so
the budget lives in Redis: a sliding-window log per app id (a sorted set of
call times), checked and appended in one Lua script so two workers can never
both take the last slot. Times come from Redis's own clock (``TIME``), so
workers' clock skew does not matter.

A call stays in the log until ``period`` after it *completed*, not after it
was taken (:meth:`RateLimiter.done` moves its entry): Atlassian counts a call
when it arrives, somewhere between the two, so a log keyed on take time alone
lets a burst taken just after a slot freed land inside Atlassian's window
together with the slow tail of the previous burst.

A 429 that gets through anyway (Atlassian's budget is also spent by the
developer console and CLI) blocks the app for its Retry-After, for everyone.

Owner actions come first: a limiter made with ``reserve`` (the poll jobs'
uses :data:`OWNER_RESERVE`) leaves that many calls of every period to
limiters made without one, and the owner's checks (verifying credentials,
adding a source) may also use a little of the room FORGE_RATE_LIMIT leaves
below Atlassian's 30 (:func:`owner_limit`), so a source catching up never
makes the owner wait a minute.

Redis holds no data of record, but the log is what keeps the calls within
budget: after a FLUSHALL or a restart without persistence it starts empty,
and an app that had spent its budget just before could be sent a second one
in the same minute (the chaos bench saw 29 calls in 60 s against a limit of
25). So each app's log carries a marker (``HELD_KEY``) that Redis loses with
it; a take that finds no marker asks PostgreSQL, through ``called_recently``,
whether the app may have been called within the last period, and if so
treats the period as spent: the app is blocked for one period, as after a
429. An app idle for a period, and every app on a Redis that never held a
log, goes on at once.
"""

from __future__ import annotations

import threading
import uuid
from typing import Callable

import redis

KEY = "forgedrain:forge-budget:{app}"
BLOCK_KEY = "forgedrain:forge-block:{app}"
# Present (no expiry) while Redis holds the app's call log; gone when Redis lost it.
HELD_KEY = "forgedrain:forge-budget-held:{app}"
# Takes refused, by why (a hash: "budget" spent, "blocked" after a 429), for /metrics.
# Fleet-wide and monotonic; a Redis flush resets it, which Prometheus reads as a restart.
WAITS_KEY = "forgedrain:metrics:forge-budget-waits"

# Calls of each period the poll jobs leave to owner actions (verifying credentials).
OWNER_RESERVE = 2
# Atlassian's own limit per app and minute; FORGE_RATE_LIMIT stays below it to leave room for the
# developer's console and CLI. Owner checks may use up to OWNER_HEADROOM of that room.
ATLASSIAN_LIMIT = 30
OWNER_HEADROOM = 3


def owner_limit(limit: int) -> int:
    """The budget owner checks take from: FORGE_RATE_LIMIT plus a little of the room below
    Atlassian's own limit (never past it)."""
    return max(limit, min(limit + OWNER_HEADROOM, ATLASSIAN_LIMIT))

# KEYS[1] log, KEYS[2] block, KEYS[3] waits counter, KEYS[4] the log's marker (HELD_KEY);
# ARGV[1] limit (less any reserve), ARGV[2] period (µs), ARGV[3] member id, ARGV[4] 1 to require the marker.
# Returns 0 when a call may be made now (and records it), -1 when the marker is required and missing
# (nothing taken: PostgreSQL must be asked first), else µs to wait.
TAKE = """
if ARGV[4] == '1' and redis.call('EXISTS', KEYS[4]) == 0 then
  return -1
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local blocked = redis.call('PTTL', KEYS[2])
if blocked and blocked > 0 then
  redis.call('HINCRBY', KEYS[3], 'blocked', 1)
  return blocked * 1000
end
local period = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - period)
local used = redis.call('ZCARD', KEYS[1])
if used < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], math.ceil(period / 1000) + 1000)
  return 0
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local wait = tonumber(oldest[2]) + period - now
if wait < 1 then wait = 1 end
redis.call('HINCRBY', KEYS[3], 'budget', 1)
return wait
"""


# KEYS[1] log; ARGV[1] member id. Re-stamps a call at its completion time.
DONE = """
local t = redis.call('TIME')
redis.call('ZADD', KEYS[1], 'XX', tonumber(t[1]) * 1000000 + tonumber(t[2]), ARGV[1])
return 0
"""


class RateLimiter:
    def __init__(self, connection: redis.Redis, limit: int, period_seconds: float, reserve: int = 0,
                 called_recently: Callable[[str, float], bool] | None = None):
        self.connection = connection
        # (app id, seconds) → whether the app may have been called that recently, from what
        # PostgreSQL knows; None trusts an empty log (tests of the limiter alone).
        self.called_recently = called_recently
        self.limit = limit
        # Calls this limiter leaves untouched in every period (never all of them).
        self.reserve = min(max(reserve, 0), limit - 1)
        self.period_us = int(period_seconds * 1_000_000)
        self._take = connection.register_script(TAKE)
        self._done = connection.register_script(DONE)

    def try_take(self, app_id: str) -> float:
        """Spend one call of ``app_id``'s budget if there is one: 0.0, else seconds to wait."""
        return self.take(app_id)[0]

    def take(self, app_id: str) -> tuple[float, str | None]:
        """(0.0, call id) when a call may be made now, else (seconds to wait, None)."""
        member = uuid.uuid4().hex
        keys = [KEY.format(app=app_id), BLOCK_KEY.format(app=app_id), WAITS_KEY, HELD_KEY.format(app=app_id)]
        args = [self.limit - self.reserve, self.period_us, member, 1 if self.called_recently is not None else 0]
        waited = int(self._take(keys=keys, args=args))
        if waited == -1:
            # The marker is checked in the take itself (one round trip a call); only when it is
            # missing is PostgreSQL asked, then the take is made again.
            self._mark_held(app_id)
            waited = int(self._take(keys=keys, args=args))
        return (0.0, member) if waited == 0 else (max(waited, 1) / 1_000_000, None)

    def _mark_held(self, app_id: str) -> None:
        """After Redis lost ``app_id``'s log, a period counts as spent if the app may have been
        called within it (see the module's doc); then the log is marked as held."""
        period = self.period_us / 1_000_000
        if self.called_recently(app_id, period):
            self.block(app_id, period)
        self.connection.set(HELD_KEY.format(app=app_id), b"1")

    def done(self, app_id: str, call_id: str) -> None:
        """The call ``call_id`` has completed: it counts for a period from now."""
        self._done(keys=[KEY.format(app=app_id)], args=[call_id])

    def block(self, app_id: str, seconds: float) -> None:
        """Hold every worker off ``app_id`` for ``seconds`` (after a 429 from Atlassian)."""
        if seconds > 0:
            self.connection.set(BLOCK_KEY.format(app=app_id), b"1", px=max(1, int(seconds * 1000)))

    def free(self, app_id: str) -> int:
        """Calls ``app_id`` may make now (0 while blocked); a reading, not a reservation."""
        if self.connection.pttl(BLOCK_KEY.format(app=app_id)) > 0:
            return 0
        return max(0, self.limit - self.reserve - self.used(app_id))

    def used(self, app_id: str) -> int:
        """Calls recorded in the current period (for metrics and tests)."""
        key = KEY.format(app=app_id)
        now_s, now_us = self.connection.time()
        now = now_s * 1_000_000 + now_us
        return self.connection.zcount(key, now - self.period_us, "+inf")


# --- calls out that owners start from the web ------------------------------------
#
# "Send a test record" and "verify" call a stranger (a drain's receiver, Atlassian) from a gunicorn
# thread while the owner waits. A web process has only WEB_CONCURRENCY × WEB_THREADS threads (10 by
# default) for every face — partner API, SSO, ingest — so a slow receiver tested ten times at once
# would hold them all. :class:`OwnerCalls` bounds each resource: at most ``in_flight`` such calls at a
# time (a lease per call, with a TTL longer than the call's own deadline so a thread that dies
# mid-call frees its slot anyway) and at most ``limit`` calls started per ``period``. Both are checked
# and taken in one Lua script, on Redis's clock, so two web processes cannot both take the last slot.

OWNER_LEASES_KEY = "forgedrain:owner-calls:{resource}:leases"
OWNER_LOG_KEY = "forgedrain:owner-calls:{resource}:log"

# One call out at a time per resource, ten a minute: an owner clicking "test" or "verify", or a script
# adding a few sources, never meets these; a loop or a page reloaded in many tabs does.
OWNER_IN_FLIGHT = 1
OWNER_CALLS_PER_PERIOD = 10
OWNER_PERIOD_SECONDS = 60.0
# When a process's own slots for calls out are all taken (other resources' tests and
# verifications), come back this soon.
PROCESS_RETRY_SECONDS = 2.0

# KEYS[1] leases (member -> expiry, µs), KEYS[2] log (member -> start, µs);
# ARGV[1] in flight, ARGV[2] limit, ARGV[3] period (µs), ARGV[4] lease (µs), ARGV[5] member id.
# Returns {0, 0} when the call may start (its lease and log entry are taken), {1, µs until the
# earliest lease ends} when too many are in flight, {2, µs until a call of the period ages out}.
OWNER_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return {1, math.max(1, tonumber(first[2]) - now)}
end
local period = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - period)
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[2]) then
  local oldest = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
  return {2, math.max(1, tonumber(oldest[2]) + period - now)}
end
local lease = tonumber(ARGV[4])
redis.call('ZADD', KEYS[2], now, ARGV[5])
redis.call('PEXPIRE', KEYS[2], math.ceil(period / 1000) + 1000)
redis.call('ZADD', KEYS[1], now + lease, ARGV[5])
local keep = math.ceil(lease / 1000) + 1000
if redis.call('PTTL', KEYS[1]) < keep then
  redis.call('PEXPIRE', KEYS[1], keep)
end
return {0, 0}
"""


class OwnerCalls:
    """Per-resource bounds on calls out started from web threads (test a drain, verify a source).

    :meth:`take` answers at once and never waits; the caller must :meth:`release` a taken call in a
    ``finally``. Redis errors propagate: the caller refuses the call rather than make it unbounded.
    """

    IN_FLIGHT = "in_flight"
    RATE = "rate"
    PROCESS = "process"

    def __init__(self, connection: redis.Redis, *, in_flight: int = OWNER_IN_FLIGHT,
                 limit: int = OWNER_CALLS_PER_PERIOD, period_seconds: float = OWNER_PERIOD_SECONDS,
                 process_slots: int | None = None):
        """``process_slots``: at most this many calls out at once in this process, whatever the
        resource, so many resources testing slow receivers at once cannot take every web thread."""
        self.connection = connection
        self.in_flight = max(1, in_flight)
        self.limit = max(1, limit)
        self.period_us = int(period_seconds * 1_000_000)
        self._take = connection.register_script(OWNER_TAKE)
        self._process = threading.BoundedSemaphore(process_slots) if process_slots else None

    def take(self, resource_id, lease_seconds: float) -> tuple[str | None, float, str | None]:
        """(call id, 0.0, None) when a call may start now; else (None, seconds to wait, why):
        :attr:`IN_FLIGHT` (the resource's slots are busy) or :attr:`RATE` (its calls of the period
        are spent). The lease lasts ``lease_seconds`` unless released sooner."""
        member = uuid.uuid4().hex
        leases, log = OWNER_LEASES_KEY.format(resource=resource_id), OWNER_LOG_KEY.format(resource=resource_id)
        refused, wait = self._take(
            keys=[leases, log],
            args=[self.in_flight, self.limit, self.period_us, int(lease_seconds * 1_000_000), member],
        )
        if int(refused) != 0:
            return None, int(wait) / 1_000_000, self.IN_FLIGHT if int(refused) == 1 else self.RATE
        # The resource's own bounds first: a call its resource refuses never holds a process slot,
        # so it cannot make another resource's call look busy.
        if self._process is not None and not self._process.acquire(blocking=False):
            pipe = self.connection.pipeline(transaction=False)
            pipe.zrem(leases, member)
            pipe.zrem(log, member)  # it did not start: it does not count in the resource's rate
            pipe.execute()
            return None, PROCESS_RETRY_SECONDS, self.PROCESS
        return member, 0.0, None

    def release(self, resource_id, call_id: str) -> None:
        """The call ``call_id`` has ended: its slot is free (it still counts in the period's rate)."""
        try:
            self.connection.zrem(OWNER_LEASES_KEY.format(resource=resource_id), call_id)
        finally:
            self._release_process_slot()

    def _release_process_slot(self) -> None:
        if self._process is not None:
            self._process.release()

    def busy(self, resource_id) -> int:
        """Calls in flight for the resource now (for tests and metrics)."""
        now_s, now_us = self.connection.time()
        return self.connection.zcount(OWNER_LEASES_KEY.format(resource=resource_id),
                                      now_s * 1_000_000 + now_us + 1, "+inf")
