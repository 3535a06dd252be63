"""The per-Forge-app call budget, shared by every worker and every resource (SPEC §3).

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

Redis holds no data of record: if it is flushed, the log restarts empty and
the worst case is one period in which the app may see a burst of calls
Atlassian answers with 429 — which the block above then absorbs.
"""

from __future__ import annotations

import uuid

import redis

KEY = "forgedrain:forge-budget:{app}"
BLOCK_KEY = "forgedrain:forge-block:{app}"
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

# KEYS[1] log, KEYS[2] block, KEYS[3] waits counter; ARGV[1] limit (less any reserve), ARGV[2] period (µs),
# ARGV[3] member id.
# Returns 0 when a call may be made now (and records it), else µs to wait.
TAKE = """
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
    def __init__(self, connection: redis.Redis, limit: int, period_seconds: float, reserve: int = 0):
        self.connection = connection
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
        waited = self._take(
            keys=[KEY.format(app=app_id), BLOCK_KEY.format(app=app_id), WAITS_KEY],
            args=[self.limit - self.reserve, self.period_us, member],
        )
        return (0.0, member) if int(waited) == 0 else (int(waited) / 1_000_000, None)

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
