"""The per-Forge-app call budget, shared by every worker and every resource (SPEC §3).

Atlassian allows 30 calls per minute per app id, whoever makes them. Several
resources may register the same app, and any worker may poll any of them, so
the budget lives in Redis: a sliding-window log per app id (a sorted set of
call times), checked and appended in one Lua script so two workers can never
both take the last slot. Times come from Redis's own clock (``TIME``), so
workers' clock skew does not matter.

A 429 that gets through anyway (Atlassian's budget is also spent by the
developer console and CLI) blocks the app for its Retry-After, for everyone.

Redis holds no data of record: if it is flushed, the log restarts empty and
the worst case is one period in which the app may see a burst of calls
Atlassian answers with 429 — which the block above then absorbs.
"""

from __future__ import annotations

import uuid

import redis

KEY = "forgedrain:forge-budget:{app}"
BLOCK_KEY = "forgedrain:forge-block:{app}"

# KEYS[1] log, KEYS[2] block; ARGV[1] limit, ARGV[2] period (µs), ARGV[3] member id.
# Returns 0 when a call may be made now (and records it), else µs to wait.
TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local blocked = redis.call('PTTL', KEYS[2])
if blocked and blocked > 0 then
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
return wait
"""


class RateLimiter:
    def __init__(self, connection: redis.Redis, limit: int, period_seconds: float):
        self.connection = connection
        self.limit = limit
        self.period_us = int(period_seconds * 1_000_000)
        self._take = connection.register_script(TAKE)

    def try_take(self, app_id: str) -> float:
        """Spend one call of ``app_id``'s budget if there is one: 0.0, else seconds to wait."""
        waited = self._take(
            keys=[KEY.format(app=app_id), BLOCK_KEY.format(app=app_id)],
            args=[self.limit, self.period_us, uuid.uuid4().hex],
        )
        return int(waited) / 1_000_000

    def block(self, app_id: str, seconds: float) -> None:
        """Hold every worker off ``app_id`` for ``seconds`` (after a 429 from Atlassian)."""
        if seconds > 0:
            self.connection.set(BLOCK_KEY.format(app=app_id), b"1", px=max(1, int(seconds * 1000)))

    def used(self, app_id: str) -> int:
        """Calls recorded in the current period (for metrics and tests)."""
        key = KEY.format(app=app_id)
        now_s, now_us = self.connection.time()
        now = now_s * 1_000_000 + now_us
        return self.connection.zcount(key, now - self.period_us, "+inf")
