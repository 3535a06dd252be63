"""Forge sources: validation of what an owner submits, and the store (SPEC §3)."""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import uuid
from dataclasses import dataclass
from datetime import datetime

import psycopg
import redis

from broker import audit, forge
from broker.ratelimit import RateLimiter
from broker.validation import InputError

log = logging.getLogger(__name__)

FIELDS = ("app_id", "environment_id", "email", "api_token", "levels", "installation_contexts",
          "service_name", "environment_label", "include_arguments")
# Changing any of these means the stored verification no longer holds.
VERIFIED_FIELDS = ("app_id", "environment_id", "email", "api_token")

APP_ARI_PREFIX = "ari:cloud:ecosystem::app/"
IDENTIFIER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}\Z")
# RFC 6531 addresses are allowed (they go out as UTF-8, forge.basic_authorization); a colon is not:
# HTTP Basic splits user and password at the first one (RFC 7617 §2).
EMAIL = re.compile(r"^[^@\s\x00:]{1,64}@[^@\s\x00:]{1,189}\Z")
CONTEXT = re.compile(r"^ari:cloud:[a-z0-9-]+::[a-z0-9-]+/[A-Za-z0-9._:/-]{1,150}\Z")
LABEL = re.compile(r"^[^\x00-\x1f\x7f]{1,100}\Z")




@dataclass
class SourceInput:
    """Validated fields; only those submitted are set (for partial updates)."""

    values: dict

    def credentials(self) -> forge.Credentials:
        return forge.Credentials(self.values["email"], self.values["api_token"])


def _text(field: str, value, pattern: re.Pattern, message: str) -> str:
    # isprintable(): no control character (C0, DEL, C1), invisible format character, line or
    # paragraph separator or lone surrogate, whatever the pattern lets through.
    if not isinstance(value, str) or not pattern.match(value) or not value.isprintable():
        raise InputError(field, f"{field} {message}")
    return value


def validate(payload: object, *, partial: bool = False) -> SourceInput:
    """Check a submitted source; raise :class:`~broker.validation.InputError` naming the first bad field."""
    if not isinstance(payload, dict):
        raise InputError("body", "request body must be a JSON object")
    unknown = sorted(set(payload) - set(FIELDS))
    if unknown:
        raise InputError(unknown[0], f"unknown field {unknown[0]!r}; fields are {', '.join(FIELDS)}")
    if not partial:
        for field in VERIFIED_FIELDS:
            if payload.get(field) in (None, ""):
                raise InputError(field, f"{field} is required")
    values: dict = {}
    if "app_id" in payload:
        app_id = payload["app_id"]
        if isinstance(app_id, str) and app_id.startswith(APP_ARI_PREFIX):
            app_id = app_id[len(APP_ARI_PREFIX):]  # the id as the developer console shows it
        values["app_id"] = _text("app_id", app_id, IDENTIFIER,
                                 "must be the Forge app id from the developer console")
    if "environment_id" in payload:
        values["environment_id"] = _text("environment_id", payload["environment_id"], IDENTIFIER,
                                         "must be the environment id from the developer console")
    if "email" in payload:
        values["email"] = _text("email", payload["email"], EMAIL,
                                "must be an email address (printable, without spaces or colons)")
    if "api_token" in payload:
        token = payload["api_token"]
        # Atlassian's API tokens are printable ASCII; anything else is a paste gone wrong.
        if not isinstance(token, str) or not 1 <= len(token) <= 1024 or not all("!" <= c <= "~" for c in token):
            raise InputError("api_token", "api_token must be an Atlassian API token: 1 to 1024 printable "
                                          "ASCII characters, no spaces")
        values["api_token"] = token
    if "levels" in payload:
        levels = payload["levels"]
        if levels is None:
            levels = []
        if not isinstance(levels, list) or any(level not in forge.LEVELS for level in levels):
            raise InputError("levels", f"levels must be a list of {', '.join(forge.LEVELS)}")
        values["levels"] = sorted(set(levels), key=forge.LEVELS.index)
    if "installation_contexts" in payload:
        contexts = payload["installation_contexts"] or []
        if (not isinstance(contexts, list) or len(contexts) > forge.MAX_CONTEXTS
                or not all(isinstance(c, str) and CONTEXT.match(c) for c in contexts)):
            raise InputError("installation_contexts",
                                   f"installation_contexts must be a list of at most {forge.MAX_CONTEXTS} "
                                   "site ARIs such as ari:cloud:jira::site/<uuid>")
        values["installation_contexts"] = list(dict.fromkeys(contexts))
    for field in ("service_name", "environment_label"):
        if field in payload:
            value = payload[field]
            values[field] = None if value in (None, "") else _text(
                field, value, LABEL, "must be 1 to 100 printable characters")
    if "include_arguments" in payload:
        if not isinstance(payload["include_arguments"], bool):
            raise InputError("include_arguments", "include_arguments must be true or false")
        values["include_arguments"] = payload["include_arguments"]
    return SourceInput(values)


def mask_secret(secret: str | None) -> str | None:
    """The last four characters of a secret, enough to tell two apart."""
    if not secret:
        return None
    return "…" + secret[-4:] if len(secret) > 8 else "…"


# --- store ---------------------------------------------------------------------

COLUMNS = """
id, resource_id, app_id, environment_id, email, api_token_enc, levels, installation_contexts,
service_name, environment_label, include_arguments, state, pause_reason, last_error,
verified_at, created_at, updated_at, checkpoint, next_poll_at, last_poll_at, last_success_at,
consecutive_failures, backfill_from, backfill_until, window_start IS NOT NULL AS window_open,
density_per_minute, page_records, over_capacity_since, capacity_per_minute,
COALESCE(settled_until, checkpoint) AS settled_until, lag_seconds,
unreadable, unreadable_sample, unreadable_at
"""


def count(conn: psycopg.Connection, resource_id: uuid.UUID | str) -> int:
    return conn.execute("SELECT count(*) AS n FROM sources WHERE resource_id = %s",
                        (resource_id,)).fetchone()["n"]


def list_for(conn: psycopg.Connection, resource_id: uuid.UUID | str) -> list[dict]:
    return conn.execute(f"SELECT {COLUMNS} FROM sources WHERE resource_id = %s ORDER BY created_at, id",
                        (resource_id,)).fetchall()


def get(conn: psycopg.Connection, resource_id: uuid.UUID | str, source_id: uuid.UUID | str,
        *, for_update: bool = False) -> dict | None:
    lock = " FOR UPDATE" if for_update else ""
    return conn.execute(f"SELECT {COLUMNS} FROM sources WHERE resource_id = %s AND id = %s{lock}",
                        (resource_id, source_id)).fetchone()


def insert(conn: psycopg.Connection, resource_id: uuid.UUID | str, values: dict,
           api_token_enc: str) -> dict:
    """Insert a verified source (raises UniqueViolation for a duplicate app environment)."""
    return conn.execute(
        f"""
        INSERT INTO sources (resource_id, app_id, environment_id, email, api_token_enc, levels,
                             installation_contexts, service_name, environment_label,
                             include_arguments, verified_at)
        VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, now())
        RETURNING {COLUMNS}
        """,
        (resource_id, values["app_id"], values["environment_id"], values["email"], api_token_enc,
         values.get("levels", []), values.get("installation_contexts", []),
         values.get("service_name"), values.get("environment_label"),
         values.get("include_arguments", False)),
    ).fetchone()


def update(conn: psycopg.Connection, source_id: uuid.UUID | str, values: dict,
           api_token_enc: str | None, verified: bool) -> dict:
    """Apply changed fields; a fresh verification resumes a paused source.

    ``values`` holds only the fields that changed. A change of app, environment,
    email or API token drops the lease in the same statement, so a poll still
    running with the old ones is fenced out (``LostLease``): it can neither
    write its window over the new checkpoint nor store the old app's records
    under this source.
    """
    columns = {k: v for k, v in values.items() if k != "api_token"}
    if api_token_enc is not None:
        columns["api_token_enc"] = api_token_enc
    assignments = [f"{name} = %({name})s" for name in columns]  # names come from FIELDS only
    if verified:
        assignments += ["verified_at = now()", "state = 'active'", "pause_reason = NULL",
                        "last_error = NULL", "next_poll_at = now()", "consecutive_failures = 0"]
    if any(field in values for field in VERIFIED_FIELDS):
        # Fence any poll in flight: it holds the old app's or credentials' lease,
        # and every poller write checks that lease, so it now changes nothing.
        assignments += ["lease_token = NULL", "lease_expires_at = NULL"]
    if "app_id" in values or "environment_id" in values:
        # Another app or environment is another stream: start it fresh, an hour
        # back, and forget what was measured of the old one. `unreadable` stays:
        # it is a counter (/metrics) and never goes down.
        assignments += ["checkpoint = now() - interval '1 hour'", "settled_until = NULL",
                        "window_start = NULL", "window_end = NULL", "window_cursor = NULL",
                        "window_opened_at = NULL", "window_pages = 0", "window_records = 0",
                        "backfill_from = NULL", "backfill_until = NULL",
                        "density_per_minute = NULL", "page_records = NULL",
                        "over_capacity_since = NULL", "capacity_per_minute = NULL", "lag_seconds = NULL",
                        "lag_changed_at = NULL"]
        conn.execute("DELETE FROM forge_seen WHERE source_id = %s", (source_id,))
    assignments.append("updated_at = now()")
    return conn.execute(
        f"UPDATE sources SET {', '.join(assignments)} WHERE id = %(id)s RETURNING {COLUMNS}",
        {**columns, "id": source_id},
    ).fetchone()


def record_verification(conn: psycopg.Connection, source_id: uuid.UUID | str,
                        pause_reason: str | None, error: str | None) -> dict:
    """Store the outcome of a "verify now": success resumes, a refusal pauses with its reason."""
    if pause_reason is None:
        sql = ("UPDATE sources SET verified_at = now(), state = 'active', pause_reason = NULL, "
               "last_error = NULL, next_poll_at = LEAST(next_poll_at, now()), consecutive_failures = 0, "
               "updated_at = now() WHERE id = %s RETURNING " + COLUMNS)
        return conn.execute(sql, (source_id,)).fetchone()
    sql = ("UPDATE sources SET state = 'paused', pause_reason = %s, last_error = %s, updated_at = now() "
           "WHERE id = %s RETURNING " + COLUMNS)
    return conn.execute(sql, (pause_reason, error, source_id)).fetchone()


def start_backfill(conn: psycopg.Connection, source_id: uuid.UUID | str, start: datetime) -> dict:
    """Re-poll from ``start``: the checkpoint moves back, progress runs up to where it was.

    A ``start`` after the checkpoint (not polled that far yet) leaves the
    checkpoint where it is: moving it forward would skip what lies between.
    The lease is dropped too: a poll in flight then finds itself fenced out
    (``LostLease``) instead of writing its window's end over the new checkpoint.
    """
    return conn.execute(
        f"""
        UPDATE sources SET backfill_from = LEAST(%(start)s, checkpoint),
            backfill_until = GREATEST(COALESCE(backfill_until, checkpoint), checkpoint),
            checkpoint = LEAST(%(start)s, checkpoint),
            settled_until = LEAST(%(start)s, COALESCE(settled_until, checkpoint)),
            window_start = NULL, window_end = NULL, window_cursor = NULL, window_opened_at = NULL,
            window_pages = 0, window_records = 0,
            lease_token = NULL, lease_expires_at = NULL,
            next_poll_at = now(), updated_at = now()
        WHERE id = %(id)s RETURNING {COLUMNS}
        """,
        {"start": start, "id": source_id},
    ).fetchone()


# Atlassian's App logs API keeps 14 days of logs.
BACKFILL_MAX_DAYS = 14
ZONED_EXAMPLE = "2026-11-20T08:00:00Z"


def parse_time(value: object, field: str = "from") -> datetime:
    """An ISO 8601 time with a zone (``Z`` or an offset); :class:`InputError` naming ``field`` otherwise."""
    start = None
    if isinstance(value, str):
        try:
            start = datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            start = None
    if start is None or start.tzinfo is None or start.utcoffset() is None:
        raise InputError(field, f"{field} must be an ISO 8601 time with a zone, such as {ZONED_EXAMPLE}")
    return start


def backfill(conn: psycopg.Connection, source_id: uuid.UUID | str, start: datetime, *, actor: str,
             resource_id: uuid.UUID | str | None = None, field: str = "from") -> dict | None:
    """Start a backfill of one source from ``start``, audited, in one transaction.

    ``start`` must lie within the last 14 days (by the database's clock) and in
    the past, else :class:`InputError` naming ``field`` and nothing changes.
    With ``resource_id`` the source must belong to that resource. Returns the
    updated source, or None when there is no such source (of a live resource).
    """
    with conn.transaction():
        bounds = conn.execute(
            "SELECT now() - make_interval(days => %s) AS oldest, now() AS now", (BACKFILL_MAX_DAYS,)
        ).fetchone()
        if start < bounds["oldest"]:
            raise InputError(field, f"{field} is more than {BACKFILL_MAX_DAYS} days ago: Atlassian keeps "
                                    f"app logs for {BACKFILL_MAX_DAYS} days")
        if start >= bounds["now"]:
            raise InputError(field, f"{field} must be in the past")
        row = conn.execute(
            "SELECT s.id, s.resource_id, s.app_id, s.environment_id FROM sources s "
            "JOIN resources r ON r.id = s.resource_id "
            "WHERE s.id = %(id)s AND r.state <> 'deprovisioned' "
            "AND (%(rid)s::uuid IS NULL OR s.resource_id = %(rid)s::uuid) FOR UPDATE OF s",
            {"id": source_id, "rid": resource_id},
        ).fetchone()
        if row is None:
            return None
        updated = start_backfill(conn, row["id"], start)
        audit.record(conn, row["resource_id"], actor, "source.backfill_started",
                     {"source_id": str(row["id"]), "app_id": row["app_id"],
                      "environment_id": row["environment_id"], "from": start.isoformat()})
    return updated


def gaps(conn: psycopg.Connection, source_id: uuid.UUID | str, limit: int = 20) -> list[dict]:
    return conn.execute(
        "SELECT gap_from, gap_until, reason, recorded_at FROM source_gaps WHERE source_id = %s "
        "ORDER BY recorded_at DESC, id DESC LIMIT %s",
        (source_id, limit),
    ).fetchall()


# A gap is a range already past the App logs API's 14 days when it is recorded (or one no poll can
# read), so it can never be refilled; its owner still sees it on the dashboard for this long.
GAPS_KEEP_DAYS = 30


def forget_gaps(conn: psycopg.Connection, limit: int, days: int = GAPS_KEEP_DAYS) -> int:
    """Delete at most ``limit`` gaps recorded more than ``days`` ago, oldest first; returns how many.

    Found on source_gaps_recorded_at_idx, deleted by a TID scan (as :data:`broker.audit.FORGET`).
    """
    return conn.execute(
        "DELETE FROM source_gaps WHERE ctid = ANY(ARRAY(SELECT ctid FROM source_gaps "
        "WHERE recorded_at < now() - make_interval(days => %s) ORDER BY recorded_at LIMIT %s))",
        (days, limit),
    ).rowcount


# A poll's claim (last_poll_at) comes before its calls, so it cannot tell calls made before Redis
# lost the log from a claim made just after; what can is the time of the last page stored
# (last_success_at: a window completed; window_opened_at: a window left open), a verification, and
# for a poll that failed, its claim once it has been released.
CALLED_RECENTLY = """
SELECT EXISTS (
    SELECT 1 FROM sources
    WHERE app_id = %(app)s
      AND (last_success_at > now() - make_interval(secs => %(seconds)s)
           OR window_opened_at > now() - make_interval(secs => %(seconds)s)
           OR verified_at > now() - make_interval(secs => %(seconds)s)
           OR (consecutive_failures > 0 AND lease_token IS NULL
               AND last_poll_at > now() - make_interval(secs => %(seconds)s + %(longest)s)))
) AS called
"""


def called_recently(conn: psycopg.Connection, app_id: str, seconds: float, longest_poll: float = 120.0) -> bool:
    """Whether a call for ``app_id`` may have reached Atlassian within ``seconds`` (a poll's page
    stored, a verification, a failed poll that may have run up to ``longest_poll`` after its claim):
    the rate limiter asks this when Redis has lost the app's call log."""
    return bool(conn.execute(CALLED_RECENTLY, {"app": app_id, "seconds": seconds,
                                               "longest": longest_poll}).fetchone()["called"])


def delete(conn: psycopg.Connection, source_id: uuid.UUID | str) -> None:
    conn.execute("DELETE FROM sources WHERE id = %s", (source_id,))


# --- verification outcomes -----------------------------------------------------

@dataclass(frozen=True)
class Refusal:
    """Why verification failed, said for the owner, and what it means for the source."""

    http_status: int  # for the API: 422 = fix your input, 502/503 = try again later
    code: str
    message: str
    pause_reason: str | None  # when the failure says the source cannot work as saved
    retry_after: float | None = None


# A 429 without a usable Retry-After blocks the app this long: Atlassian's
# budget is per minute.
RATE_LIMITED_BLOCK_SECONDS = 60.0


@dataclass(frozen=True)
class Verifier:
    """What checking credentials needs: an App logs API client and the per-app call budget.

    Owner actions (create, update, verify now, provisioning options) spend the
    same budget as polling (:class:`broker.ratelimit.RateLimiter`): Atlassian
    counts 30 calls a minute per app whoever makes them, so a check that
    bypassed the budget could push a busy app's polls into 429s.
    """

    client: forge.ForgeClient
    limiter: RateLimiter


def verify(verifier: Verifier, values: dict) -> Refusal | None:
    """One small App logs API query with these credentials and ids; None when Atlassian accepts them.

    Without budget for the app nothing is sent: a 503 refusal carrying the
    seconds until a call is free (``retry_after``). A 429 that still comes
    back blocks the app in the limiter for everyone, as a poll's would.
    """
    app_id = values["app_id"]
    try:
        wait, call_id = verifier.limiter.take(app_id)
    except redis.RedisError as exc:
        log.warning("verify app=%s: budget unavailable (%s)", app_id, type(exc).__name__)
        return Refusal(503, "unavailable", "Forge Drain cannot check this app's call budget right now; "
                       "nothing was saved, try again shortly", None, 5.0)
    if call_id is None:
        seconds = max(1, math.ceil(wait))
        return Refusal(503, "forge_budget_spent",
                       f"app {app_id} has no App logs API calls left for the moment (Atlassian allows 30 a "
                       "minute per app, shared by polling and by checks like this one); nothing was saved, "
                       f"try again in {seconds} second{'s' if seconds != 1 else ''}", None, float(seconds))
    try:
        verifier.client.verify(forge.Credentials(values["email"], values["api_token"]),
                               app_id, values["environment_id"])
    except forge.RateLimited as exc:
        blocked = exc.retry_after if exc.retry_after is not None else RATE_LIMITED_BLOCK_SECONDS
        verifier.limiter.block(app_id, blocked)
        refusal = explain(exc, app_id, values["environment_id"])
        return dataclasses.replace(refusal, retry_after=blocked)
    except forge.ForgeError as exc:
        return explain(exc, app_id, values["environment_id"])
    finally:
        verifier.limiter.done(app_id, call_id)
    return None


def explain(exc: forge.ForgeError, app_id: str, environment_id: str) -> Refusal:
    if isinstance(exc, forge.AuthError):
        return Refusal(422, "verification_failed",
                       f"Atlassian refused the email and API token ({exc}): check that the token is "
                       "current and belongs to the app's owner or a contributor with log access",
                       "auth_failed")
    if isinstance(exc, forge.NotFound):
        return Refusal(422, "verification_failed",
                       f"Atlassian has no app {app_id} with environment {environment_id} (HTTP 404): "
                       "check the app id and the environment id in the developer console",
                       "not_found")
    if isinstance(exc, forge.BadWindow):
        return Refusal(422, "verification_failed", f"Atlassian refused the query ({exc})", "bad_request")
    if isinstance(exc, forge.RateLimited):
        return Refusal(503, "rate_limited",
                       "Atlassian is rate limiting this app right now; nothing was saved, try again shortly",
                       None, exc.retry_after)
    return Refusal(502, "forge_unavailable",
                   f"could not reach Atlassian's App logs API ({exc}); nothing was saved, try again",
                   None)
