"""The resources store: one function per query (SPEC §1)."""

from __future__ import annotations

import uuid
from datetime import datetime

import psycopg

from broker import alert_webhook

COLUMNS = """
id, partner_id, name, plan, region, callback_url, state, log_drain_token,
api_token_generation, ingest_token_generation, created_at, updated_at, provisioned_at, deprovisioned_at,
provision_attempts, provision_next_at, provision_error,
oauth_grant_code_enc, oauth_grant_expires_at, oauth_access_token_enc,
oauth_refresh_token_enc, oauth_expires_at, config_pushed_generation, config_push_error,
CASE WHEN config_push_next_at = 'infinity' THEN NULL ELSE config_push_next_at END AS config_push_next_at
"""


def insert(conn: psycopg.Connection, *, resource_id: uuid.UUID, partner_id: str, name: str | None,
           plan: str, region: str | None, callback_url: str | None, state: str,
           log_drain_token: str | None, api_token_digest: bytes,
           grant_code_enc: str | None = None, grant_expires_at: datetime | None = None) -> dict | None:
    """Insert a resource; the new row, or None when it conflicts with one that exists.

    ``ON CONFLICT DO NOTHING`` makes two identical requests racing each other
    safe: the second waits for the first to commit, then inserts nothing. It
    names no conflict target on purpose: the racing twin also collides on the
    drain token's unique index, and PostgreSQL may check that index first, so
    a target of ``(id)`` alone would turn the replay into a unique violation.
    The caller tells the cases apart by reading the row by id.
    """
    cur = conn.execute(
        f"""
        INSERT INTO resources (id, partner_id, name, plan, region, callback_url, state,
                               log_drain_token, api_token_hash, oauth_grant_code_enc,
                               oauth_grant_expires_at, provision_next_at, provisioned_at)
        VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s,
                CASE WHEN %s = 'provisioning' THEN now() END,
                CASE WHEN %s = 'provisioned' THEN now() END)
        ON CONFLICT DO NOTHING
        RETURNING {COLUMNS}
        """,
        (resource_id, partner_id, name, plan, region, callback_url, state, log_drain_token,
         api_token_digest, grant_code_enc, grant_expires_at, state, state),
    )
    return cur.fetchone()


def get(conn: psycopg.Connection, resource_id: uuid.UUID | str) -> dict | None:
    return conn.execute(f"SELECT {COLUMNS} FROM resources WHERE id = %s", (resource_id,)).fetchone()


def get_as_of_now(conn: psycopg.Connection, resource_id: uuid.UUID | str) -> dict | None:
    """The resource's row with the database's clock as ``now``: the dashboard measures lags and draws
    its charts on the clock that stamped checkpoints and activity, not the web dyno's."""
    return conn.execute(f"SELECT {COLUMNS}, now() AS now FROM resources WHERE id = %s", (resource_id,)).fetchone()


def get_for_update(conn: psycopg.Connection, resource_id: uuid.UUID | str) -> dict | None:
    return conn.execute(
        f"SELECT {COLUMNS} FROM resources WHERE id = %s FOR UPDATE", (resource_id,)
    ).fetchone()


def lock_shared(conn: psycopg.Connection, resource_id: uuid.UUID | str) -> dict | None:
    """The resource's row, locked ``FOR SHARE`` until the transaction ends (None when there is none).

    Changes of the resource's sources and drains run under this lock: they do not block each other,
    but deprovision (an UPDATE of the row) waits for them to end, and one that starts after
    deprovision committed reads the row as deprovisioned. Take it first in the transaction, and
    never in one that then takes the row ``FOR UPDATE`` (two such would deadlock).
    """
    return conn.execute(f"SELECT {COLUMNS} FROM resources WHERE id = %s FOR SHARE", (resource_id,)).fetchone()


def by_api_token_digest(conn: psycopg.Connection, digest: bytes) -> dict | None:
    """The live resource this bearer token opens: the current token, or the previous one in its grace
    period (``current_token`` says which)."""
    return conn.execute(
        f"""
        SELECT {COLUMNS}, api_token_hash = %s AS current_token FROM resources
        WHERE state <> 'deprovisioned' AND (
            api_token_hash = %s
            OR (api_token_previous_hash = %s AND api_token_previous_until > now()))
        """,
        (digest, digest, digest),
    ).fetchone()


def rotate_api_token(conn: psycopg.Connection, resource_id: uuid.UUID | str, new_digest: bytes,
                     grace_seconds: int) -> datetime:
    """Make ``new_digest`` current; the old token stays valid for ``grace_seconds``, until the
    moment returned."""
    return conn.execute(
        """
        UPDATE resources SET api_token_generation = api_token_generation + 1,
            api_token_previous_hash = api_token_hash,
            api_token_previous_until = now() + make_interval(secs => %s),
            api_token_hash = %s, updated_at = now()
        WHERE id = %s
        RETURNING api_token_previous_until
        """,
        (grace_seconds, new_digest, resource_id),
    ).fetchone()["api_token_previous_until"]


def next_ingest_token_generation(conn: psycopg.Connection, resource_id: uuid.UUID | str) -> int:
    """Bump the resource's OTLP ingest token generation (the previous token stops at once); the new one."""
    return conn.execute(
        "UPDATE resources SET ingest_token_generation = ingest_token_generation + 1, updated_at = now() "
        "WHERE id = %s RETURNING ingest_token_generation", (resource_id,)).fetchone()["ingest_token_generation"]


def end_token_grace(conn: psycopg.Connection, resource_id: uuid.UUID | str) -> bool:
    """The previous token stops working now; False when none was in its grace period."""
    return conn.execute(
        "UPDATE resources SET api_token_previous_hash = NULL, api_token_previous_until = NULL, updated_at = now() "
        "WHERE id = %s AND api_token_previous_until > now()", (resource_id,)).rowcount == 1


def insert_heroku_drain(conn: psycopg.Connection, resource_id: uuid.UUID, url_enc: str,
                        token: str) -> None:
    conn.execute(
        "INSERT INTO drains (resource_id, kind, url_enc, token) VALUES (%s, 'heroku', %s, %s)",
        (resource_id, url_enc, token),
    )


def drains(conn: psycopg.Connection, resource_id: uuid.UUID | str) -> list[dict]:
    return conn.execute(
        "SELECT id, kind, token, enabled, created_at FROM drains WHERE resource_id = %s "
        "ORDER BY created_at, id",
        (resource_id,),
    ).fetchall()


def usage(conn: psycopg.Connection, resource_id: uuid.UUID | str) -> tuple[int, int]:
    """(sources, drains counted against the plan) for a resource.

    The built-in `heroku` drain is not counted.
    """
    row = conn.execute(
        """
        SELECT (SELECT count(*) FROM sources WHERE resource_id = %(id)s) AS sources,
               (SELECT count(*) FROM drains WHERE resource_id = %(id)s AND kind <> 'heroku') AS drains
        """,
        {"id": resource_id},
    ).fetchone()
    return row["sources"], row["drains"]


def set_plan(conn: psycopg.Connection, resource_id: uuid.UUID | str, plan: str) -> None:
    conn.execute("UPDATE resources SET plan = %s, updated_at = now() WHERE id = %s",
                 (plan, resource_id))


def deprovision(conn: psycopg.Connection, resource_id: uuid.UUID | str) -> None:
    """Mark deprovisioned and erase every secret; rows stay for the audit trail."""
    conn.execute(
        """
        UPDATE resources SET state = 'deprovisioned', deprovisioned_at = now(), updated_at = now(),
            log_drain_token = NULL, api_token_hash = NULL,
            api_token_previous_hash = NULL, api_token_previous_until = NULL,
            oauth_grant_code_enc = NULL, oauth_grant_expires_at = NULL,
            oauth_access_token_enc = NULL, oauth_refresh_token_enc = NULL, oauth_expires_at = NULL,
            provision_next_at = NULL
        WHERE id = %s
        """,
        (resource_id,),
    )
    retire_children(conn, resource_id)


def purge_deprovisioned(conn: psycopg.Connection, older_than_days: int) -> int:
    """Delete resources deprovisioned long ago (their audit entries go with them)."""
    return conn.execute(
        "DELETE FROM resources WHERE state = 'deprovisioned' "
        "AND deprovisioned_at < now() - make_interval(days => %s)",
        (older_than_days,),
    ).rowcount


# --- asynchronous provisioning -------------------------------------------------

def due_provisions(conn: psycopg.Connection, limit: int) -> list[uuid.UUID]:
    rows = conn.execute(
        "SELECT id FROM resources WHERE state = 'provisioning' AND provision_next_at <= now() "
        "ORDER BY provision_next_at LIMIT %s",
        (limit,),
    ).fetchall()
    return [r["id"] for r in rows]


def store_oauth_tokens(conn: psycopg.Connection, resource_id: uuid.UUID | str, access_enc: str,
                       refresh_enc: str | None, expires_in: int) -> None:
    conn.execute(
        """
        UPDATE resources SET oauth_access_token_enc = %s,
            oauth_refresh_token_enc = COALESCE(%s, oauth_refresh_token_enc),
            oauth_expires_at = now() + make_interval(secs => %s),
            oauth_grant_code_enc = NULL, updated_at = now()
        WHERE id = %s AND state IN ('provisioning', 'provisioned')
        """,
        (access_enc, refresh_enc, expires_in, resource_id),
    )


def provision_retry_later(conn: psycopg.Connection, resource_id: uuid.UUID | str, delay_seconds: float,
                          error: str) -> None:
    conn.execute(
        """
        UPDATE resources SET provision_attempts = provision_attempts + 1,
            provision_next_at = now() + make_interval(secs => %s),
            provision_error = %s, updated_at = now()
        WHERE id = %s AND state = 'provisioning'
        """,
        (delay_seconds, error, resource_id),
    )


def provision_done(conn: psycopg.Connection, resource_id: uuid.UUID | str) -> bool:
    return conn.execute(
        """
        UPDATE resources SET state = 'provisioned', provisioned_at = now(), provision_next_at = NULL,
            provision_error = NULL, updated_at = now()
        WHERE id = %s AND state = 'provisioning'
        """,
        (resource_id,),
    ).rowcount == 1


def provision_failed(conn: psycopg.Connection, resource_id: uuid.UUID | str, error: str) -> bool:
    """Mark a provisioning resource failed and erase every secret it holds: a failed resource never
    comes back (a replayed provision is refused), so nothing it stored will be used again.

    The API token's digest stays (it is no secret) so the owner can still read why it failed; the
    drain token goes, so Heroku's log drain is refused. ``failed_at`` starts its purge clock.
    """
    if conn.execute(
        """
        UPDATE resources SET state = 'failed', failed_at = now(), provision_next_at = NULL,
            provision_error = %s, log_drain_token = NULL,
            oauth_grant_code_enc = NULL, oauth_grant_expires_at = NULL,
            oauth_access_token_enc = NULL, oauth_refresh_token_enc = NULL, oauth_expires_at = NULL,
            updated_at = now()
        WHERE id = %s AND state = 'provisioning'
        """,
        (error, resource_id),
    ).rowcount != 1:
        return False
    retire_children(conn, resource_id)
    return True


def retire_children(conn: psycopg.Connection, resource_id: uuid.UUID | str) -> None:
    """Disable an ended resource's drains and pause its sources, erasing their secrets; remove its
    alert webhook (URL and signing secret)."""
    alert_webhook.delete(conn, resource_id)
    conn.execute(
        "UPDATE drains SET enabled = false, url_enc = NULL, headers_enc = NULL, updated_at = now() "
        "WHERE resource_id = %s",
        (resource_id,),
    )
    conn.execute(
        "UPDATE sources SET api_token_enc = NULL, state = 'paused', updated_at = now() "
        "WHERE resource_id = %s",
        (resource_id,),
    )


def purge_failed(conn: psycopg.Connection, older_than_days: int) -> int:
    """Delete resources whose provisioning failed long ago, with everything they hold."""
    return conn.execute(
        "DELETE FROM resources WHERE state = 'failed' AND failed_at < now() - make_interval(days => %s)",
        (older_than_days,),
    ).rowcount


def provision_timing(conn: psycopg.Connection, resource_id: uuid.UUID | str, deadline_hours: int,
                     refresh_margin_seconds: int) -> dict | None:
    """Clock facts for provisioning and config pushes, read from the database's clock: ``overdue``
    (older than the deadline), ``grant_expired``, ``token_stale`` (expires within the margin)."""
    return conn.execute(
        """
        SELECT created_at < now() - make_interval(hours => %s) AS overdue,
               oauth_grant_expires_at IS NOT NULL AND oauth_grant_expires_at < now() AS grant_expired,
               oauth_expires_at IS NULL OR oauth_expires_at < now() + make_interval(secs => %s) AS token_stale
        FROM resources WHERE id = %s
        """,
        (deadline_hours, refresh_margin_seconds, resource_id),
    ).fetchone()


# --- config pushes (issue 14, item 8) ------------------------------------------------
# Heroku holds the config of generation ``config_pushed_generation``; a resource whose
# ``api_token_generation`` is ahead of it (a token rotation) has a push pending. The pending
# push is this difference in PostgreSQL, not an RQ job: a flushed Redis loses only the job,
# and the tick enqueues it again. ``config_push_next_at`` NULL means "as soon as possible",
# 'infinity' that Heroku refused and only a new rotation tries again.

CONFIG_PUSH_DUE = """
api_token_generation > config_pushed_generation AND state = 'provisioned'
AND oauth_access_token_enc IS NOT NULL
AND (config_push_next_at IS NULL OR config_push_next_at <= now())
"""


def request_config_push(conn: psycopg.Connection, resource_id: uuid.UUID | str) -> bool:
    """After a token rotation, in its transaction: make the push of the resource's current config due
    now (forgetting an earlier push's back-off or refusal). True when Heroku is behind and the
    resource has an OAuth access token or grant to push with; idempotent.

    Call it after :func:`rotate_api_token`: the rotation itself is what puts Heroku behind.
    """
    return conn.execute(
        """
        UPDATE resources SET config_push_attempts = 0, config_push_next_at = NULL, config_push_error = NULL
        WHERE id = %s AND api_token_generation > config_pushed_generation
          AND state IN ('provisioning', 'provisioned')
          AND (oauth_access_token_enc IS NOT NULL OR oauth_grant_code_enc IS NOT NULL)
        """,
        (resource_id,),
    ).rowcount == 1


def due_config_pushes(conn: psycopg.Connection, limit: int) -> list[uuid.UUID]:
    """Resources whose config push is due (provisioned ones only: a provision in progress pushes the
    config itself), oldest back-off first."""
    rows = conn.execute(
        f"SELECT id FROM resources WHERE {CONFIG_PUSH_DUE} "
        "ORDER BY config_push_next_at NULLS FIRST LIMIT %s",
        (limit,),
    ).fetchall()
    return [r["id"] for r in rows]


def due_config_push(conn: psycopg.Connection, resource_id: uuid.UUID | str) -> dict | None:
    """The resource's due config push (``generation`` to push, ``attempts`` so far), or None."""
    return conn.execute(
        f"SELECT api_token_generation AS generation, config_push_attempts AS attempts FROM resources "
        f"WHERE id = %s AND {CONFIG_PUSH_DUE}",
        (resource_id,),
    ).fetchone()


def config_push_done(conn: psycopg.Connection, resource_id: uuid.UUID | str, generation: int) -> bool:
    """Heroku accepted ``generation``'s config; True when a newer rotation is still pending (it is
    due at once, with a fresh count of attempts)."""
    row = conn.execute(
        """
        UPDATE resources SET config_pushed_generation = GREATEST(config_pushed_generation, %s),
            config_push_attempts = 0, config_push_next_at = NULL, config_push_error = NULL
        WHERE id = %s
        RETURNING api_token_generation > config_pushed_generation AS pending
        """,
        (generation, resource_id),
    ).fetchone()
    return bool(row and row["pending"])


def config_push_retry_later(conn: psycopg.Connection, resource_id: uuid.UUID | str, generation: int,
                            delay_seconds: float, error: str) -> None:
    """A push of ``generation`` failed but may succeed later; a newer rotation since stays due now."""
    conn.execute(
        """
        UPDATE resources SET config_push_attempts = config_push_attempts + 1,
            config_push_next_at = now() + make_interval(secs => %s), config_push_error = %s
        WHERE id = %s AND api_token_generation = %s
        """,
        (delay_seconds, error, resource_id, generation),
    )


def config_push_refused(conn: psycopg.Connection, resource_id: uuid.UUID | str, generation: int,
                        error: str) -> bool:
    """Heroku refused the push of ``generation``: stop until the next rotation; False when a newer
    rotation came meanwhile (it stays due)."""
    return conn.execute(
        """
        UPDATE resources SET config_push_attempts = config_push_attempts + 1,
            config_push_next_at = 'infinity', config_push_error = %s
        WHERE id = %s AND api_token_generation = %s
        """,
        (error, resource_id, generation),
    ).rowcount == 1


# --- the add-on's log drain at Heroku (issue 17 item 1) ----------------------------------
# Heroku makes an add-on's drain from the provision answer's log_drain_url; the broker can move it
# later with the add-on's OAuth token. ``log_drain_url`` is what Heroku was last seen to hold.

DRAIN_TO_SYNC = """
partner_id = %(partner)s AND state = 'provisioned' AND log_drain_token IS NOT NULL
AND log_drain_url IS DISTINCT FROM %(url)s
"""


def count_log_drains_to_sync(conn: psycopg.Connection, partner_id: str, url: str) -> int:
    """How many of the partner's provisioned resources with a drain token are not known to be at ``url``."""
    return conn.execute(f"SELECT count(*) AS n FROM resources WHERE {DRAIN_TO_SYNC}",
                        {"partner": partner_id, "url": url}).fetchone()["n"]


def log_drains_to_sync(conn: psycopg.Connection, partner_id: str, url: str, after: uuid.UUID | None,
                       limit: int) -> list[dict]:
    """The next ``limit`` of them by id after ``after`` (keyset pages: a long run holds no snapshot)."""
    return conn.execute(
        f"""
        SELECT id, log_drain_token, log_drain_url,
               oauth_access_token_enc IS NOT NULL OR oauth_refresh_token_enc IS NOT NULL AS has_oauth
        FROM resources WHERE {DRAIN_TO_SYNC} AND (%(after)s::uuid IS NULL OR id > %(after)s::uuid)
        ORDER BY id LIMIT %(limit)s
        """,
        {"partner": partner_id, "url": url, "after": after, "limit": limit},
    ).fetchall()


def log_drain_seen(conn: psycopg.Connection, resource_id: uuid.UUID | str, url: str) -> None:
    """Record that Heroku holds ``url`` as the add-on's drain now."""
    conn.execute("UPDATE resources SET log_drain_url = %s, log_drain_checked_at = now() WHERE id = %s",
                 (url, resource_id))
