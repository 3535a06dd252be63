import base64
import contextlib
import json
import re
import subprocess
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import orjson
import pytest
from cryptography.fernet import Fernet

from broker import db, delivery, outbox, polling
from broker.senders import Wire
from broker.sinks import http
from broker.vault import Vault, VaultError
from tests.fakes.forge import ForgeFake
from tests.fakes.receivers import logplex_receiver
from tests.fakes.server import LocalServer
from tests.support.partner import provision_body
from tests.support.polling import APP, EMAIL, ENV, TOKEN, add_resource, add_source, make_poller
from tests.test_delivery import claim_due

ROOT = Path(__file__).resolve().parent.parent


def cli(env, *args, stdin: str = ""):
    return subprocess.run([sys.executable, "-m", "broker", *args], cwd=ROOT, input=stdin,
                          env=dict(env, PATH="/usr/bin:/bin"), capture_output=True, text=True, timeout=60)


def test_an_operator_creates_rotates_and_lists_partners(env, client):
    created = cli(env, "partners", "create", "acme-cloud", "--name", "Acme Cloud")
    assert created.returncode == 0, created.stderr
    first = created.stdout.strip().splitlines()[-1]
    added = cli(env, "partners", "add-password", "acme-cloud")
    second = added.stdout.strip().splitlines()[-1]
    listed = cli(env, "partners", "list")
    assert "acme-cloud\tAcme Cloud\tpasswords=2" in listed.stdout

    def provision(password):
        token = base64.b64encode(f"acme-cloud:{password}".encode()).decode()
        return client.post("/heroku/resources", data=json.dumps(provision_body()),
                           headers={"Authorization": f"Basic {token}"}).status_code

    assert provision(first) == 200 and provision(second) == 200
    removed = cli(env, "partners", "remove-password", "acme-cloud", stdin=first + "\n")
    assert removed.returncode == 0
    assert first not in removed.stdout + removed.stderr
    assert provision(first) == 401 and provision(second) == 200


def test_an_operator_issues_and_rotates_an_integrators_sso_salt(env, client, conn):
    from tests.support.partner import sso_token

    created = cli(env, "partners", "create", "acme-cloud", "--name", "Acme Cloud")
    assert created.returncode == 0, created.stderr
    lines = created.stdout.strip().splitlines()
    salt, password = lines[1], lines[-1]
    assert "SSO salt" in lines[0] and len(salt) >= 32 and salt != password
    stored = conn.execute("SELECT sso_salt_enc, sso_salt_previous_enc FROM partners").fetchone()
    assert salt not in str(stored) and stored["sso_salt_enc"] and stored["sso_salt_previous_enc"] is None
    body = provision_body(log_drain_token=None, log_input_url=None)
    token = base64.b64encode(f"acme-cloud:{password}".encode()).decode()
    assert client.post("/heroku/resources", data=json.dumps(body),
                       headers={"Authorization": f"Basic {token}"}).status_code == 200

    def opens(with_salt: str) -> bool:
        stamp, signed = sso_token(body["uuid"], salt=with_salt)
        return client.post("/sso/login", data={"resource_id": body["uuid"], "resource_token": signed,
                                               "timestamp": stamp}).status_code == 302

    assert opens(salt) and not opens("forgedrain-dev-sso-salt")
    rotated = cli(env, "partners", "rotate-sso-salt", "acme-cloud", "--overlap-minutes", "5")
    assert rotated.returncode == 0, rotated.stderr
    assert "the previous one still works for 5 minutes" in rotated.stdout
    new = rotated.stdout.strip().splitlines()[-1]
    assert new != salt and opens(new) and opens(salt)
    assert re.search(r"^acme-cloud\tAcme Cloud\tpasswords=1\tsso=yes\(previous until \S+Z\)\t",
                     cli(env, "partners", "list").stdout, re.M)
    ended = cli(env, "partners", "end-sso-salt-overlap", "acme-cloud")
    assert ended.returncode == 0 and "no longer works" in ended.stdout
    assert opens(new) and not opens(salt)
    for refused in (("rotate-sso-salt", "acme-cloud", "--overlap-minutes", "1441"),
                    ("rotate-sso-salt", "acme-cloud", "--overlap-minutes", "-1")):
        done = cli(env, "partners", *refused)
        assert done.returncode == 2 and "out of range: 0 to 1440" in done.stderr
    missing = cli(env, "partners", "rotate-sso-salt", "nobody")
    assert missing.returncode == 1 and "no partner 'nobody'" in missing.stderr
    assert opens(new)
    for done in (created, rotated, ended):
        assert "Traceback" not in done.stderr


def test_partner_mistakes_are_reported_without_a_traceback(env):
    cli(env, "partners", "create", "acme-cloud", "--name", "Acme")
    again = cli(env, "partners", "create", "acme-cloud", "--name", "Acme")
    assert again.returncode == 1
    assert "already exists" in again.stderr and "Traceback" not in again.stderr
    missing = cli(env, "partners", "add-password", "nobody")
    assert missing.returncode == 1 and "no partner 'nobody'" in missing.stderr
    wrong = cli(env, "partners", "remove-password", "acme-cloud", stdin="not-it\n")
    assert wrong.returncode == 1


# --- the operator CLI of issue 8: rotate-keys, backfill, replay, status ------------------

# Every encrypted column the migrations define; the test below fails when one is added
# without being covered here (rotate-keys itself finds them in the catalogue).
ENCRYPTED = {
    "resources": ("oauth_grant_code_enc", "oauth_access_token_enc", "oauth_refresh_token_enc"),
    "sources": ("api_token_enc",),
    "drains": ("url_enc", "headers_enc"),
    "partners": ("sso_salt_enc", "sso_salt_previous_enc"),
    "alert_webhooks": ("url_enc", "secret_enc"),
}
# Tables whose primary key is not ``id``.
KEYS = {"alert_webhooks": "resource_id"}


def encrypted_values(conn) -> dict[tuple[str, str, str], str]:
    values = {}
    for table, columns in ENCRYPTED.items():
        key = KEYS.get(table, "id")
        for row in conn.execute(f"SELECT {key}::text AS id, {', '.join(columns)} FROM {table}").fetchall():
            for column in columns:
                if row[column] is not None:
                    values[(table, column, row["id"])] = row[column]
    return values


def populate(conn, vault: Vault) -> dict[tuple[str, str, str], str]:
    """Several resources with OAuth secrets, sources and drains (URLs with passwords, headers).
    Returns every plaintext secret by (table, column, id)."""
    secrets = {}
    for n in range(4):
        rid = add_resource(conn)
        grant, access, refresh = f"grant-{n}-{uuid.uuid4()}", f"access-{n}-{uuid.uuid4()}", f"refresh-{n}-{uuid.uuid4()}"
        conn.execute("UPDATE resources SET oauth_grant_code_enc = %s, oauth_access_token_enc = %s, "
                     "oauth_refresh_token_enc = %s WHERE id = %s",
                     (vault.encrypt(grant), vault.encrypt(access), vault.encrypt(refresh), rid))
        secrets.update({("resources", "oauth_grant_code_enc", str(rid)): grant,
                        ("resources", "oauth_access_token_enc", str(rid)): access,
                        ("resources", "oauth_refresh_token_enc", str(rid)): refresh})
        for s in range(2):
            token = f"ATATT-{n}-{s}-{uuid.uuid4().hex}"
            sid = add_source(conn, vault, rid, app_id=f"app-{n}-{s}", token=token)
            secrets[("sources", "api_token_enc", str(sid))] = token
        heroku = f"https://token:t.{uuid.uuid4().hex}@1.us.logplex.example/logs"
        otlp = f"https://otlp.example/v1/logs?api-key=k{uuid.uuid4().hex}"
        headers = orjson.dumps({"X-Api-Key": f"key-{uuid.uuid4().hex}"}).decode()
        hid = add_drain(conn, vault, rid, "heroku", heroku)
        oid = add_drain(conn, vault, rid, "otlp", otlp)
        conn.execute("UPDATE drains SET headers_enc = %s WHERE id = %s", (vault.encrypt(headers), oid))
        secrets.update({("drains", "url_enc", str(hid)): heroku, ("drains", "url_enc", str(oid)): otlp,
                        ("drains", "headers_enc", str(oid)): headers})
        partner, salt, previous = f"partner-{n}", f"salt-{uuid.uuid4().hex}", f"salt-{uuid.uuid4().hex}"
        conn.execute("INSERT INTO partners (id, name, sso_salt_enc, sso_salt_previous_enc, sso_salt_previous_until) "
                     "VALUES (%s, %s, %s, %s, now() + interval '1 hour')",
                     (partner, partner, vault.encrypt(salt), vault.encrypt(previous)))
        secrets.update({("partners", "sso_salt_enc", partner): salt,
                        ("partners", "sso_salt_previous_enc", partner): previous})
        hook, signing = f"https://hooks.example/services/{uuid.uuid4().hex}", f"fdwh_{uuid.uuid4().hex}"
        conn.execute("INSERT INTO alert_webhooks (resource_id, url_enc, secret_enc) VALUES (%s, %s, %s)",
                     (rid, vault.encrypt(hook), vault.encrypt(signing)))
        secrets.update({("alert_webhooks", "url_enc", str(rid)): hook,
                        ("alert_webhooks", "secret_enc", str(rid)): signing})
    return secrets


def add_drain(conn, vault, resource_id, kind: str, url: str) -> uuid.UUID:
    return conn.execute(
        "INSERT INTO drains (resource_id, kind, url_enc, token) VALUES (%s, %s, %s, %s) RETURNING id",
        (resource_id, kind, vault.encrypt(url), f"d.{uuid.uuid4()}"),
    ).fetchone()["id"]


@pytest.fixture
def rotation(env, conn):
    """A populated database under the old key, and the environment with a new key put in front."""
    old = Vault([env["FERNET_KEYS"]])
    secrets = populate(conn, old)
    new_key = Fernet.generate_key().decode()
    rotated_env = dict(env, FERNET_KEYS=f"{new_key},{env['FERNET_KEYS']}")
    return secrets, old, Vault([new_key]), rotated_env


def assert_all_under(conn, secrets, new: Vault, old: Vault) -> None:
    stored = encrypted_values(conn)
    assert set(stored) == set(secrets)
    for where, token in stored.items():
        assert new.decrypt(token) == secrets[where], where
        with pytest.raises(VaultError):
            old.decrypt(token)


def test_rotate_keys_re_encrypts_every_secret_under_the_newest_key(conn, rotation):
    secrets, old, new, env = rotation
    catalogue = conn.execute(
        "SELECT table_name, column_name FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND column_name LIKE '%%\\_enc'").fetchall()
    assert {(r["table_name"], r["column_name"]) for r in catalogue} == \
        {(t, c) for t, columns in ENCRYPTED.items() for c in columns}
    done = cli(env, "rotate-keys", "--batch-size", "3")
    assert done.returncode == 0, done.stderr
    assert f"rotating {len(secrets)} encrypted values" in done.stderr
    assert_all_under(conn, secrets, new, old)
    summary = done.stdout
    assert re.search(r"^sources\.api_token_enc\s+8\s+0\s+8\s+0\s+0$", summary, re.M), summary
    assert re.search(r"^drains\.headers_enc\s+4\s+0\s+4\s+0\s+0$", summary, re.M), summary
    assert re.search(rf"^total\s+{len(secrets)}\s+0\s+{len(secrets)}\s+0\s+0$", summary, re.M), summary
    assert "the other keys can be removed now" in summary
    for secret in secrets.values():
        assert secret not in done.stdout + done.stderr
    again = cli(env, "rotate-keys")
    assert again.returncode == 0
    assert re.search(rf"^total\s+{len(secrets)}\s+{len(secrets)}\s+0\s+0\s+0$", again.stdout, re.M)


def test_rotate_keys_stops_after_limit_batches_and_run_again_finishes(conn, rotation):
    secrets, old, new, env = rotation
    stopped = cli(env, "rotate-keys", "--batch-size", "2", "--limit-batches", "1")
    assert stopped.returncode == 3, stopped.stderr
    assert "run rotate-keys again to continue" in stopped.stdout
    first = int(re.search(r"^total\s+(\d+)\s+0\s+(\d+)\s+0\s+0$", stopped.stdout, re.M).group(2))
    under_new = sum(1 for t in encrypted_values(conn).values() if new_opens(new, t))
    assert 2 <= under_new == first < len(secrets)  # one batch of two rows, committed
    finished = cli(env, "rotate-keys", "--batch-size", "2")
    assert finished.returncode == 0, finished.stderr
    assert re.search(rf"^total\s+{len(secrets)}\s+{first}\s+{len(secrets) - first}\s+0\s+0$",
                     finished.stdout, re.M), finished.stdout
    assert_all_under(conn, secrets, new, old)


def cli_backends(conn, waiting_on_a_lock: bool = False) -> int:
    """The CLI's connections to this test's database (waiting on a row lock, or all of them)."""
    return conn.execute(
        "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database() "
        "AND application_name = 'forgedrain-cli' AND (NOT %s OR wait_event_type = 'Lock')",
        (waiting_on_a_lock,)).fetchone()["n"]


def test_a_rotation_killed_mid_batch_keeps_what_it_committed_and_run_again_finishes(conn, rotation,
                                                                                    database_url):
    """A real interruption: rotate-keys is SIGKILLed inside a batch. Tables are walked in the
    catalogue's order (drains, partners, resources, sources); this test holds a lock on the first
    source row, so the run commits every batch before ``sources`` and then waits in its first
    batch there, where it is killed. What it committed stays; the batch it was in is rolled back."""
    import signal

    secrets, old, new, env = rotation
    with db.connect(database_url, "forgedrain-tests-holder") as holder, holder.transaction():
        holder.execute("SELECT id FROM sources ORDER BY id LIMIT 1 FOR UPDATE")
        running = subprocess.Popen([sys.executable, "-m", "broker", "rotate-keys", "--batch-size", "2"], cwd=ROOT,
                                   env=dict(env, PATH="/usr/bin:/bin"), stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 60
            while not cli_backends(conn, waiting_on_a_lock=True):
                assert running.poll() is None and time.monotonic() < deadline, running.communicate()
                time.sleep(0.05)
            running.send_signal(signal.SIGKILL)
            running.communicate(timeout=30)
        finally:
            if running.poll() is None:
                running.kill()
                running.wait()
    assert running.returncode == -signal.SIGKILL
    # Its server process sees the client gone once the lock is released, and rolls the batch back.
    deadline = time.monotonic() + 30
    while cli_backends(conn):
        assert time.monotonic() < deadline, "the killed run's connection stayed"
        time.sleep(0.05)
    committed = {where for where, token in encrypted_values(conn).items() if new_opens(new, token)}
    assert committed == {where for where in secrets if where[0] != "sources"}

    finished = cli(env, "rotate-keys", "--batch-size", "2")
    assert finished.returncode == 0, finished.stderr
    assert re.search(rf"^total\s+{len(secrets)}\s+{len(committed)}\s+{len(secrets) - len(committed)}\s+0\s+0$",
                     finished.stdout, re.M), finished.stdout
    assert_all_under(conn, secrets, new, old)


def new_opens(vault: Vault, token: str) -> bool:
    try:
        vault.decrypt(token)
        return True
    except VaultError:
        return False


def test_a_value_no_key_opens_is_reported_and_left_alone(conn, rotation):
    secrets, old, new, env = rotation
    lost = Vault([Fernet.generate_key().decode()]).encrypt("ATATT-under-a-lost-key")
    rid = add_resource(conn)
    sid = conn.execute("INSERT INTO sources (resource_id, app_id, environment_id, email, api_token_enc) "
                       "VALUES (%s, 'lost-app', 'prod', 'a@b.test', %s) RETURNING id", (rid, lost)).fetchone()["id"]
    damaged_drain = add_drain(conn, old, rid, "logplex", "https://u:p4ssw0rd@logs.example/")
    conn.execute("UPDATE drains SET headers_enc = 'not a fernet token ✗' WHERE id = %s", (damaged_drain,))
    done = cli(env, "rotate-keys", "--batch-size", "4")
    assert done.returncode == 1
    assert f"sources.api_token_enc id={sid}" in done.stderr
    assert f"drains.headers_enc id={damaged_drain}" in done.stderr
    assert "ATATT-under-a-lost-key" not in done.stdout + done.stderr and lost not in done.stderr
    assert "p4ssw0rd" not in done.stdout + done.stderr
    assert conn.execute("SELECT api_token_enc FROM sources WHERE id = %s", (sid,)).fetchone()["api_token_enc"] == lost
    assert conn.execute("SELECT headers_enc FROM drains WHERE id = %s",
                        (damaged_drain,)).fetchone()["headers_enc"] == "not a fernet token ✗"
    url = conn.execute("SELECT url_enc FROM drains WHERE id = %s", (damaged_drain,)).fetchone()["url_enc"]
    assert new.decrypt(url) == "https://u:p4ssw0rd@logs.example/"  # the rest was rotated all the same
    assert re.search(r"^sources\.api_token_enc\s+9\s+0\s+8\s+0\s+1$", done.stdout, re.M), done.stdout


# --- backfill ------------------------------------------------------------------------------

@pytest.fixture
def forge_fake():
    fake = ForgeFake(seed=7, rate_limit=10_000)
    fake.add_app(APP, [ENV], EMAIL, TOKEN)
    with LocalServer(fake.wsgi()) as server:
        fake.url = server.url
        yield fake


def test_backfill_refuses_bad_input_precisely_and_changes_nothing(env, conn, settings):
    rid = add_resource(conn)
    sid = add_source(conn, Vault(settings.fernet_keys), rid)
    before = conn.execute("SELECT checkpoint, updated_at FROM sources").fetchone()
    now = datetime.now(timezone.utc)
    cases = [
        (("not-a-uuid", "--since", now.isoformat()), "'not-a-uuid' is not a source id"),
        ((str(sid), "--since", "yesterday"), "--since must be an ISO 8601 time with a zone"),
        ((str(sid), "--since", "2026-11-20T08:00:00"), "--since must be an ISO 8601 time with a zone"),
        ((str(sid), "--since", (now - timedelta(days=14, minutes=1)).isoformat()), "more than 14 days ago"),
        ((str(sid), "--since", (now + timedelta(minutes=5)).isoformat()), "--since must be in the past"),
        ((str(uuid.uuid4()), "--since", (now - timedelta(hours=1)).isoformat()), "no source"),
        ((str(sid),), "the following arguments are required: --since"),
    ]
    for args, message in cases:
        refused = cli(env, "backfill", *args)
        assert refused.returncode == 2, (args, refused.stderr)
        assert message in refused.stderr, (args, refused.stderr)
        assert "Traceback" not in refused.stderr
    assert conn.execute("SELECT checkpoint, updated_at FROM sources").fetchone() == before
    assert conn.execute("SELECT count(*) AS n FROM audit_log").fetchone()["n"] == 0


def test_backfill_moves_the_checkpoint_and_waits_for_the_workers(env, conn, settings, database_url,
                                                                  redis_url, forge_fake):
    vault = Vault(settings.fernet_keys)
    rid = add_resource(conn)
    sid = add_source(conn, vault, rid, checkpoint_ago=timedelta(minutes=3))
    since = (datetime.now(timezone.utc) - timedelta(hours=2)).replace(microsecond=0)
    conn.execute("INSERT INTO heartbeats (name, beat_at) VALUES ('tick', now())")
    waiting = subprocess.Popen([sys.executable, "-m", "broker", "backfill", str(sid), "--since",
                                since.isoformat().replace("+00:00", "Z"), "--wait"],
                               cwd=ROOT, env=dict(env, PATH="/usr/bin:/bin"), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while conn.execute("SELECT backfill_from FROM sources").fetchone()["backfill_from"] is None:
            assert waiting.poll() is None and time.monotonic() < deadline, waiting.communicate()
            time.sleep(0.05)
        row = conn.execute("SELECT checkpoint, backfill_from FROM sources").fetchone()
        assert row["checkpoint"] == since and row["backfill_from"] == since
        assert waiting.poll() is None  # waiting for the workers
        poller = make_poller(database_url, redis_url, forge_fake.url, vault)
        for _ in range(10):  # what a poll job does
            conn.execute("UPDATE sources SET next_poll_at = now() - interval '1 second'")
            if poller.poll(polling.claim(conn, 1, 180)[0]).result == "caught-up":
                break
        out, err = waiting.communicate(timeout=20)
    finally:
        if waiting.poll() is None:
            waiting.kill()
    assert waiting.returncode == 0, err
    assert "backfill caught up" in out and TOKEN not in out + err
    assert conn.execute("SELECT backfill_from FROM sources").fetchone()["backfill_from"] is None
    entry = conn.execute("SELECT actor, action, detail FROM audit_log").fetchone()
    assert entry["actor"] == "operator-cli" and entry["action"] == "source.backfill_started"
    assert entry["detail"]["source_id"] == str(sid)


# --- replay --------------------------------------------------------------------------------

def make_deliverer(database_url: str, vault: Vault) -> delivery.Deliverer:
    @contextlib.contextmanager
    def connect():
        with db.connect(database_url, "forgedrain-tests") as connection:
            yield connection

    session = http.new_session(allow_private=True)
    return delivery.Deliverer(connect, Wire(lambda: session, True), vault, turn_seconds=20)


def store_batch(conn, resource_id, source_id, first: int, count: int, age: timedelta = timedelta(0)) -> int:
    records = [{"timeUnixNano": str(1_763_700_000_000_000_000 + i * 1_000_000), "severityText": "INFO",
                "body": {"stringValue": f"record {i}"},
                "attributes": [{"key": "invocationId", "value": {"stringValue": f"inv-{i}"}}]}
               for i in range(first, first + count)]
    times = [polling.record_time(r, datetime.now(timezone.utc)) for r in records]
    return conn.execute(
        "INSERT INTO outbox (resource_id, source_id, origin, record_count, min_ts, max_ts, payload, created_at) "
        "VALUES (%s, %s, 'forge', %s, %s, %s, %s, now() - %s) RETURNING id",
        (resource_id, source_id, count, min(times), max(times), outbox.forge_payload(records), age),
    ).fetchone()["id"]


def deliver(deliverer, conn) -> None:
    for drain in claim_due(conn, 50):
        deliverer.deliver(drain)


def received(inbox, start: int = 0) -> list[tuple[str, str]]:
    return [(r["frame_id"], e["message"].decode() if isinstance(e["message"], bytes) else e["message"])
            for r in inbox.requests[start:] for e in r["events"]]


def test_replay_delivers_again_what_was_stored_since_with_the_same_frame_ids(env, conn, settings, database_url):
    vault = Vault(settings.fernet_keys)
    rid = add_resource(conn)
    sid = add_source(conn, vault, rid)
    app, inbox = logplex_receiver()
    with LocalServer(app) as server:
        drain_id = add_drain(conn, vault, rid, "logplex", f"http://user:s3cret@127.0.0.1:{server.port}/logs")
        early = store_batch(conn, rid, sid, 0, 5, age=timedelta(hours=2))
        store_batch(conn, rid, sid, 5, 7)
        last = store_batch(conn, rid, sid, 12, 3)
        deliverer = make_deliverer(database_url, vault)
        deliver(deliverer, conn)
        first_time = received(inbox)
        assert len(first_time) == 15
        conn.execute("UPDATE drains SET consecutive_failures = 4, next_attempt_at = now() + interval '1 hour'")

        since = datetime.now(timezone.utc) - timedelta(hours=1)
        done = cli(env, "replay", str(drain_id), "--since", since.isoformat())
        assert done.returncode == 0, done.stderr
        assert f"cursor moved back from batch {last} to {early}: 2 batches (10 records)" in done.stdout
        row = conn.execute("SELECT cursor, consecutive_failures, next_attempt_at <= now() AS due "
                           "FROM drains").fetchone()
        assert row == {"cursor": early, "consecutive_failures": 0, "due": True}
        seen = len(inbox.requests)
        deliver(deliverer, conn)
        assert received(inbox, seen) == first_time[5:]  # the same records, with the same Frame-Ids

        older = cli(env, "replay", str(drain_id), "--since",
                    (datetime.now(timezone.utc) - timedelta(days=2)).isoformat())
        assert older.returncode == 0, older.stderr
        assert "batches only from" in older.stdout and "older ones were pruned" in older.stdout
        assert f"cursor moved back from batch {last} to 0: 3 batches (15 records)" in older.stdout
        waiting = subprocess.Popen([sys.executable, "-m", "broker", "replay", str(drain_id), "--since",
                                    since.isoformat(), "--wait"], cwd=ROOT, env=dict(env, PATH="/usr/bin:/bin"),
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 20
            while conn.execute("SELECT count(*) AS n FROM audit_log").fetchone()["n"] < 3:
                assert waiting.poll() is None and time.monotonic() < deadline, waiting.communicate()
                time.sleep(0.05)
            deliver(deliverer, conn)
            out, err = waiting.communicate(timeout=20)
        finally:
            if waiting.poll() is None:
                waiting.kill()
    assert waiting.returncode == 0, err
    assert "the drain has caught up" in out
    for text in (done.stdout, done.stderr, older.stdout, out, err):
        assert "s3cret" not in text
    actions = conn.execute("SELECT actor, action, detail FROM audit_log ORDER BY id").fetchall()
    assert [(a["actor"], a["action"]) for a in actions] == [("operator-cli", "drain.replayed")] * 3
    assert actions[0]["detail"]["cursor_from"] == last and actions[0]["detail"]["records"] == 10


def test_replay_refuses_bad_input(env, conn, settings):
    vault = Vault(settings.fernet_keys)
    rid = add_resource(conn)
    drain_id = add_drain(conn, vault, rid, "logplex", "https://logs.example/")
    conn.execute("UPDATE drains SET cursor = 42")
    future = (datetime.now(timezone.utc) + timedelta(hours=1)).isoformat()
    for args, message in [((str(drain_id), "--since", future), "--since is in the future"),
                          ((str(uuid.uuid4()), "--since", "2026-01-01T00:00:00Z"), "no drain"),
                          (("42", "--since", "2026-01-01T00:00:00Z"), "'42' is not a drain id"),
                          ((str(drain_id), "--since", "2026-01-01"), "with a zone")]:
        refused = cli(env, "replay", *args)
        assert refused.returncode == 2 and message in refused.stderr, (args, refused.stderr)
    assert conn.execute("SELECT cursor FROM drains").fetchone()["cursor"] == 42
    assert conn.execute("SELECT count(*) AS n FROM audit_log").fetchone()["n"] == 0


# --- status --------------------------------------------------------------------------------

def db_now(conn) -> datetime:
    return conn.execute("SELECT now() AS now").fetchone()["now"]


def whole_seconds(delta: timedelta) -> int:
    return int(delta.total_seconds())  # as the status command shows a duration: truncated


def seconds_shown(text: str) -> int:
    """A duration as the status command shows one under a day: 4s, 7m03s, 2h05m (to the minute)."""
    parts = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", text)
    assert parts and text, text
    hours, minutes, seconds = (int(p or 0) for p in parts.groups())
    return hours * 3600 + minutes * 60 + seconds

def test_status_shows_the_fleet_and_a_resource_without_any_secret(env, conn, settings):
    vault = Vault(settings.fernet_keys)
    secrets = populate(conn, vault)
    rid = add_resource(conn, plan="basic")
    sid = add_source(conn, vault, rid, token="ATATT-status-secret-token", checkpoint_ago=timedelta(minutes=7))
    conn.execute("UPDATE sources SET state = 'paused', pause_reason = 'auth_failed', "
                 "last_error = 'Atlassian refused the email and API token (HTTP 401)' WHERE id = %s", (sid,))
    drain_id = add_drain(conn, vault, rid, "logplex", "https://user:hunter2-pass@logs.example/in?key=qu3ry-secret")
    conn.execute("UPDATE drains SET delivered = 1234, dropped = 5 WHERE id = %s", (drain_id,))
    store_batch(conn, rid, sid, 0, 9)
    beat = conn.execute("INSERT INTO heartbeats (name, beat_at) VALUES ('tick', now() - interval '3 seconds') "
                        "RETURNING beat_at").fetchone()["beat_at"]
    checkpoint = conn.execute("SELECT checkpoint FROM sources WHERE id = %s", (sid,)).fetchone()["checkpoint"]

    began = db_now(conn)
    fleet = cli(env, "status")
    ended = db_now(conn)
    assert fleet.returncode == 0, fleet.stderr
    out = fleet.stdout
    assert re.search(r"^provisioned\s+basic\s+1$", out, re.M) and re.search(r"^provisioned\s+pro\s+4$", out, re.M)
    assert re.search(r"^active\s+-\s+8\s", out, re.M) and re.search(r"^paused\s+auth_failed\s+1\s", out, re.M)
    assert re.search(r"^logplex\s+1\s+1\s+1,234\s+5\s+0\s+9$", out, re.M), out
    assert re.search(r"^otlp\s+4\s+4\s", out, re.M)
    assert re.search(r"^\s*1\s+9\s+\d{4}-", out, re.M)  # outbox: batches, records, oldest
    for queue in ("control", "poll", "deliver"):
        assert re.search(rf"^{queue}\s+0\s+0\s+0$", out, re.M)
    # The tick's last beat, and how long ago it was when the command looked (its reading of the
    # database's clock falls between the two taken around it).
    shown = re.search(r"^tick\s+(\S+ \S+)\s+(\S+)$", out, re.M)
    assert shown and shown.group(1) == beat.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ"), out
    assert whole_seconds(began - beat) <= seconds_shown(shown.group(2)) <= whole_seconds(ended - beat)

    began = db_now(conn)
    one = cli(env, "status", str(rid))
    ended = db_now(conn)
    assert one.returncode == 0, one.stderr
    text = one.stdout
    assert re.search(r"^plan\s+basic$", text, re.M) and re.search(r"^state\s+provisioned$", text, re.M)
    source_line = next(line for line in text.splitlines() if line.startswith(str(sid)))
    assert "paused" in source_line and "auth_failed" in source_line and "HTTP 401" in source_line
    lag = re.search(r"\s(\d+m\d\ds)\s", source_line)  # lag = now - checkpoint
    assert lag and whole_seconds(began - checkpoint) <= seconds_shown(lag.group(1)) <= whole_seconds(
        ended - checkpoint), source_line
    drain_line = next(line for line in text.splitlines() if line.startswith(str(drain_id)))
    assert "https://user:****@logs.example/in?key=****" in drain_line
    assert re.search(r"\byes\s+1,234\s+0\s+5\s+0\s+9\b", drain_line), drain_line

    missing = cli(env, "status", str(uuid.uuid4()))
    assert missing.returncode == 2 and "no resource" in missing.stderr
    for result in (fleet, one, missing):
        for secret in [*secrets.values(), "ATATT-status-secret-token", "hunter2-pass", "qu3ry-secret"]:
            assert secret not in result.stdout + result.stderr


def test_status_shows_each_drains_rules_in_short_and_what_they_filtered_and_redacted(env, conn, settings):
    vault = Vault(settings.fernet_keys)
    rid = add_resource(conn)
    source_id = add_source(conn, vault, rid)
    ruled = add_drain(conn, vault, rid, "otlp", "https://otlp.example/v1/logs")
    plain = add_drain(conn, vault, rid, "logplex", "https://logs.example/in")
    spec = {"sources": [str(source_id)], "min_severity": "WARN",
            "redact": {"detectors": ["email", "jwt"], "patterns": [{"name": "customer", "regex": "CUST-4711[0-9]*"}],
                       "drop_attributes": ["forge.arguments", "installationContext"]}}
    conn.execute("UPDATE drains SET rules = %s, delivered = 70, filtered = 1234, redacted = 56 WHERE id = %s",
                 (orjson.dumps(spec).decode(), ruled))
    shown = cli(env, "status", str(rid))
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    header = next(line for line in lines if line.startswith("id ") and "filtered" in line)
    assert re.search(r"\bbacklog\s+filtered\s+redacted\s+next attempt\s+rules\s+last error$", header), header
    ruled_line = next(line for line in lines if line.startswith(str(ruled)))
    assert re.search(r"\byes\s+70\s+0\s+0\s+0\s+0\s+1,234\s+56\s", ruled_line), ruled_line
    assert "sources 1; min WARN; redact email,jwt,customer; drop attrs 2" in ruled_line
    assert "CUST-4711" not in shown.stdout  # a pattern is shown by its name only
    plain_line = next(line for line in lines if line.startswith(str(plain)))
    assert re.search(r"\byes\s+0\s+0\s+0\s+0\s+0\s+0\s+0\s+-\s+-\s+-$", plain_line), plain_line
