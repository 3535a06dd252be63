"""Tables that shrink: old audit entries and source gaps are forgotten in bounded chunks by the tick,
and failed resources hold no secrets and are purged like deprovisioned ones."""

from __future__ import annotations

import contextlib
import uuid

import pytest
import requests

from broker import audit, db, provisioning, sources, tokens
from broker.vault import Vault
from tests.support.polling import add_resource, add_source
from worker import context, tick


@pytest.fixture
def vault(settings):
    return Vault(settings.fernet_keys)


@pytest.fixture(autouse=True)
def _installed(settings):
    context.install(settings)
    yield
    context.install(None)


def add_audit(conn, resource_id, n: int, days_ago: float) -> None:
    conn.execute(
        "INSERT INTO audit_log (resource_id, actor, action, at) "
        "SELECT %s, 'test', 'test.old', now() - make_interval(days => %s) FROM generate_series(1, %s)",
        (resource_id, days_ago, n))


def add_gaps(conn, source_id, n: int, days_ago: float) -> None:
    conn.execute(
        "INSERT INTO source_gaps (source_id, gap_from, gap_until, reason, recorded_at) "
        "SELECT %(id)s, now() - interval '20 days', now() - interval '15 days', 'test', "
        "now() - make_interval(days => %(days)s) FROM generate_series(1, %(n)s)",
        {"id": source_id, "n": n, "days": days_ago})


def count(conn, sql: str, *params) -> int:
    return conn.execute(f"SELECT count(*) AS n FROM {sql}", params).fetchone()["n"]


def test_old_audit_entries_and_gaps_are_forgotten_in_chunks_and_recent_ones_kept(conn, vault):
    resource_id = add_resource(conn)
    source_id = add_source(conn, vault, resource_id)
    # More old rows than one chunk: the tick needs several passes to forget them all.
    old = 2 * tick.FORGET_CHUNK_ROWS + 500
    add_audit(conn, resource_id, old, audit.AUDIT_KEEP_DAYS + 1)
    add_audit(conn, resource_id, 3, audit.AUDIT_KEEP_DAYS - 1)
    add_gaps(conn, source_id, old, sources.GAPS_KEEP_DAYS + 1)
    add_gaps(conn, source_id, 2, sources.GAPS_KEEP_DAYS - 1)

    tick.run(1)  # not the about-once-a-minute slot: nothing is forgotten
    assert count(conn, "audit_log") == old + 3
    tick.run(0)

    assert count(conn, "audit_log") == 3
    assert count(conn, "source_gaps") == 2
    assert count(conn, "audit_log WHERE at < now() - make_interval(days => %s)", audit.AUDIT_KEEP_DAYS) == 0


def test_one_forget_call_deletes_one_bounded_chunk(conn, vault):
    resource_id = add_resource(conn)
    source_id = add_source(conn, vault, resource_id)
    add_audit(conn, resource_id, 25, audit.AUDIT_KEEP_DAYS + 1)
    add_gaps(conn, source_id, 25, sources.GAPS_KEEP_DAYS + 1)
    assert audit.forget(conn, 10) == 10
    assert sources.forget_gaps(conn, 10) == 10
    assert (count(conn, "audit_log"), count(conn, "source_gaps")) == (15, 15)
    assert [audit.forget(conn, 10), audit.forget(conn, 10), audit.forget(conn, 10)] == [10, 5, 0]


def test_the_tick_forgets_a_bounded_number_of_chunks_per_minute(conn, vault):
    resource_id = add_resource(conn)
    add_audit(conn, resource_id, tick.FORGET_CHUNKS + 3, audit.AUDIT_KEEP_DAYS + 1)
    assert tick.forget_in_chunks(lambda limit: audit.forget(conn, limit), chunk_rows=1) == tick.FORGET_CHUNKS
    assert count(conn, "audit_log") == 3


# --- failed resources ---------------------------------------------------------------------------

def failed_resource(conn, database_url, settings, vault, *, with_children: bool = True) -> uuid.UUID:
    """A resource whose asynchronous provisioning failed (Heroku's 12 hours passed), after its owner
    had added a source and an OTLP drain and its OAuth tokens were stored."""
    resource_id = uuid.uuid4()
    conn.execute(
        "INSERT INTO resources (id, partner_id, plan, state, log_drain_token, api_token_hash, "
        "oauth_grant_code_enc, oauth_access_token_enc, oauth_refresh_token_enc, oauth_expires_at, "
        "provision_next_at, created_at) "
        "VALUES (%s, 'forgedrain', 'pro', 'provisioning', %s, %s, %s, %s, %s, now() + interval '1 hour', now(), "
        "now() - interval '13 hours')",
        (resource_id, f"d.{uuid.uuid4()}", tokens.digest(str(resource_id)), vault.encrypt("grant"),
         vault.encrypt("access"), vault.encrypt("refresh")))
    if with_children:
        source_id = add_source(conn, vault, resource_id)
        add_gaps(conn, source_id, 1, 0)
        conn.execute(
            "INSERT INTO drains (resource_id, kind, url_enc, headers_enc, token) VALUES (%s, 'otlp', %s, %s, %s)",
            (resource_id, vault.encrypt("https://otlp.example.com"), vault.encrypt('{"DD-API-KEY": "k3y"}'),
             f"d.{uuid.uuid4()}"))
        conn.execute(
            "INSERT INTO outbox (resource_id, source_id, origin, record_count, min_ts, max_ts, payload) "
            "VALUES (%s, %s, 'forge', 1, now(), now(), %s)", (resource_id, source_id, b"x"))
        conn.execute("INSERT INTO activity (resource_id, subject, kind, minute, records) "
                     "VALUES (%s, %s, 'stored', date_trunc('minute', now()), 1)", (resource_id, source_id))

    @contextlib.contextmanager
    def connect():
        with db.connect(database_url, "forgedrain-tests") as connection:
            yield connection

    # Overdue: it fails before any call to Heroku.
    assert provisioning.complete(connect, settings, vault, requests.Session(), resource_id) == "failed"
    return resource_id


def enc_columns(conn, table: str) -> list[str]:
    return [r["column_name"] for r in conn.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = %s AND column_name LIKE %s",
        (table, "%\\_enc"))]


def test_a_failed_resource_holds_no_secrets(conn, database_url, settings, vault):
    resource_id = failed_resource(conn, database_url, settings, vault)
    row = conn.execute("SELECT * FROM resources WHERE id = %s", (resource_id,)).fetchone()
    assert row["state"] == "failed" and row["failed_at"] is not None
    assert row["log_drain_token"] is None
    for table in ("resources", "drains", "sources"):
        columns = enc_columns(conn, table)
        assert columns
        for column in columns:
            assert count(conn, f"{table} WHERE {column} IS NOT NULL") == 0, (table, column)
    assert [dict(r) for r in conn.execute("SELECT enabled FROM drains")] == [{"enabled": False}]
    assert [r["state"] for r in conn.execute("SELECT state FROM sources")] == ["paused"]


def resource_rows(conn, resource_id) -> dict[str, int]:
    """Rows of every table that names the resource, and of its sources' tables."""
    tables = [r["table_name"] for r in conn.execute(
        "SELECT table_name FROM information_schema.columns WHERE column_name = 'resource_id' "
        "AND table_schema = 'public' ORDER BY table_name")]
    rows = {table: count(conn, f"{table} WHERE resource_id = %s", resource_id) for table in tables}
    rows["resources"] = count(conn, "resources WHERE id = %s", resource_id)
    rows["source_gaps"] = count(conn, "source_gaps g JOIN sources s ON s.id = g.source_id WHERE s.resource_id = %s",
                                resource_id)
    return rows


def test_a_failed_resource_is_purged_with_its_children_after_the_horizon(conn, database_url, settings, vault):
    old = failed_resource(conn, database_url, settings, vault)
    recent = failed_resource(conn, database_url, settings, vault)
    conn.execute("UPDATE resources SET failed_at = now() - make_interval(days => %s) WHERE id = %s",
                 (tick.PURGE_AFTER_DAYS + 1, old))
    conn.execute("UPDATE resources SET failed_at = now() - make_interval(days => %s) WHERE id = %s",
                 (tick.PURGE_AFTER_DAYS - 1, recent))
    before = resource_rows(conn, old)
    assert all(before[t] > 0 for t in ("resources", "sources", "drains", "outbox", "activity", "audit_log",
                                        "source_gaps")), before

    tick.run(1)

    assert set(resource_rows(conn, old).values()) == {0}
    assert resource_rows(conn, recent) == before



def test_migration_0018_erases_what_resources_that_failed_before_0016_still_hold(conn, vault):
    """Before 0016 a failure left every secret in place; 0018 erases them as provision_failed does."""
    from broker import migrate

    failed, live = add_resource(conn), add_resource(conn)
    for resource_id in (failed, live):
        conn.execute("UPDATE resources SET log_drain_token = %s, oauth_access_token_enc = %s WHERE id = %s",
                     (f"d.{uuid.uuid4()}", vault.encrypt("oauth-access"), resource_id))
        add_source(conn, vault, resource_id)
        conn.execute("INSERT INTO drains (resource_id, kind, url_enc, headers_enc, token) "
                     "VALUES (%s, 'otlp', %s, %s, %s)",
                     (resource_id, vault.encrypt("https://key@otlp.example.com"), vault.encrypt('{"k": "v"}'),
                      f"d.{uuid.uuid4()}"))
    conn.execute("UPDATE resources SET state = 'failed', failed_at = now() WHERE id = %s", (failed,))
    [migration] = [m for m in migrate.discover() if m.version == "0018"]
    with conn.transaction():
        conn.execute(migration.sql)

    row = conn.execute("SELECT * FROM resources WHERE id = %s", (failed,)).fetchone()
    assert row["log_drain_token"] is None
    for table, key in (("resources", "id"), ("drains", "resource_id"), ("sources", "resource_id")):
        for column in enc_columns(conn, table):
            assert count(conn, f"{table} WHERE {key} = %s AND {column} IS NOT NULL", failed) == 0, (table, column)
    assert conn.execute("SELECT enabled FROM drains WHERE resource_id = %s", (failed,)).fetchone()["enabled"] is False
    assert conn.execute("SELECT state FROM sources WHERE resource_id = %s", (failed,)).fetchone()["state"] == "paused"
    # A live resource keeps everything.
    assert conn.execute("SELECT oauth_access_token_enc FROM resources WHERE id = %s", (live,)).fetchone()[
        "oauth_access_token_enc"] is not None
    assert count(conn, "drains WHERE resource_id = %s AND url_enc IS NOT NULL", live) == 1
    assert count(conn, "sources WHERE resource_id = %s AND api_token_enc IS NOT NULL", live) == 1
    assert count(conn, "pg_indexes WHERE indexname = %s", "resources_deprovisioned_at_idx") == 0
