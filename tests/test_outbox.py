"""The outbox store: ordered appends, reads after a cursor, and one backlog shown the same everywhere."""

from __future__ import annotations

import json
import re
import threading
import time
from datetime import datetime, timezone

import pytest

from broker import config, db, outbox, replay, status
from broker.formats import logplex
from broker.vault import Vault
from tests.support.partner import heroku_headers, provision_body, sso_token
from tests.support.polling import add_source
from tests.test_delivery import forge_record
from tests.test_metrics import METRICS_TOKEN, scrape, value
from web import create_app


@pytest.fixture
def client(env):
    app = create_app(config.load({**env, "METRICS_TOKEN": METRICS_TOKEN}, testing=True))
    yield app.test_client()
    app.extensions["forgedrain"].db.close()


def heroku_frames(n: int) -> tuple[list[bytes], int]:
    lines = [b"<190>1 2026-11-21T10:00:00+00:00 host app web.1 - line %d\n" % i for i in range(n)]
    return [b"%d %b" % (len(line), line) for line in lines], n


def append_forge(conn, resource_id, source_id, n: int) -> int:
    records = [forge_record(i) for i in range(n)]
    with conn.transaction():
        return outbox.append_forge(conn, resource_id, source_id, records, [datetime.now(timezone.utc)] * n)


def append_heroku(conn, resource_id, n: int) -> int:
    frames, count = heroku_frames(n)
    with conn.transaction():
        return outbox.append_frames(conn, resource_id, frames, count)


def test_backlog_is_one_number_everywhere_it_is_shown(client, conn, settings):
    """The API, the dashboard, /metrics, the CLI's status and replay all say what delivery will send:
    the heroku drain never gets the app's own records back, so they are not its backlog."""
    body = provision_body(plan="basic")
    answer = client.post("/heroku/resources", data=json.dumps(body), headers=heroku_headers())
    rid, token = body["uuid"], answer.get_json(force=True)["config"]["FORGEDRAIN_TOKEN"]
    auth = {"Authorization": f"Bearer {token}"}
    source_id = add_source(conn, Vault(settings.fernet_keys), rid)
    created = client.post(f"/v1/resources/{rid}/drains", headers=auth,
                          data=json.dumps({"kind": "logplex", "url": "https://logs.example.com/in"}))
    assert created.status_code == 201
    logplex_id = created.json["id"]
    heroku_id = str(conn.execute("SELECT id FROM drains WHERE resource_id = %s AND kind = 'heroku'",
                                 (rid,)).fetchone()["id"])
    append_forge(conn, rid, source_id, 7)
    append_heroku(conn, rid, 5)
    append_forge(conn, rid, source_id, 3)
    # what delivery itself will send: the heroku drain 10 Forge records, the logplex drain all 15
    expected = {logplex_id: (3, 15), heroku_id: (2, 10)}

    got = {str(k): (v.batches, v.records) for k, v in outbox.backlogs(conn, rid).items()}
    heroku_row = conn.execute("SELECT cursor FROM drains WHERE id = %s", (heroku_id,)).fetchone()
    assert got[logplex_id] == (3, 15)
    # The heroku drain was made at provision (cursor 0): of the three batches it lacks, it receives
    # the two of Forge records.
    assert heroku_row["cursor"] == 0 and got[heroku_id] == (2, 10)

    listed = {d["id"]: d["delivery"]["backlog"]
              for d in client.get(f"/v1/resources/{rid}/drains", headers=auth).json["drains"]}
    assert listed == {k: v[1] for k, v in expected.items()}
    for drain_id, (_, records) in expected.items():
        assert client.get(f"/v1/resources/{rid}/drains/{drain_id}", headers=auth).json["delivery"]["backlog"] == records

    stamp, sso = sso_token(rid)
    assert client.post("/sso/login", data={"resource_id": rid, "resource_token": sso, "timestamp": stamp,
                                           "app": "acme", "email": "owner@example.com",
                                           "user_id": "u-1"}).status_code == 302
    html = client.get(f"/dashboard/{rid}").get_data(as_text=True)
    for drain_id, (_, records) in expected.items():
        card = html[html.index(f'id="drain-{drain_id}"'):]
        assert re.search(r'class="backlog">([\d,]+) records waiting', card).group(1) == f"{records:,}"

    samples, _ = scrape(client)
    assert value(samples, "forgedrain_drain_backlog_records", kind="logplex") == 15
    assert value(samples, "forgedrain_drain_backlog_records", kind="heroku") == 10
    assert value(samples, "forgedrain_drain_backlog_batches", kind="heroku") == 2

    report = status.resource(conn, Vault(settings.fernet_keys), rid)
    for drain_id, (_, records) in expected.items():
        line = next(line for line in report.splitlines() if line.startswith(drain_id))
        assert f" {records} " in f" {line} "
    fleet, _ = status.fleet(conn, None)
    kinds = {line.split()[0]: line.split() for line in fleet.splitlines()
             if line.split()[:1] in (["heroku"], ["logplex"])}
    assert kinds["logplex"][-1] == "15" and kinds["heroku"][-1] == "10"

    # Replay from the start: what it re-queues is what delivery will send.
    conn.execute("UPDATE drains SET cursor = (SELECT max(id) FROM outbox WHERE resource_id = %s) "
                 "WHERE resource_id = %s", (rid, rid))
    done = replay.replay(conn, heroku_id, datetime(2000, 1, 1, tzinfo=timezone.utc), actor="test")
    assert (done.records, done.backlog_records) == (10, 10)
    assert outbox.backlog(conn, rid, done.drain_id).records == 10


def test_a_batch_decodes_to_the_records_of_either_origin(conn, resource_and_source):
    rid, source_id = resource_and_source
    append_forge(conn, rid, source_id, 4)
    append_heroku(conn, rid, 3)
    forge, heroku = outbox.after(conn, rid, 0, 10)
    assert forge.origin == "forge" and [r["body"]["stringValue"] for r in forge.records()] == [
        forge_record(i)["body"]["stringValue"] for i in range(4)]
    assert heroku.origin == "heroku" and heroku.source_id is None and heroku.record_count == 3
    got = heroku.records()
    assert [r["body"]["stringValue"] for r in got] == [f"line {i}" for i in range(3)]
    assert got[0]["heroku"] == {"pri": 190, "app": "app", "dyno": "web.1"}
    assert got[0] == logplex.to_record(heroku_frames(1)[0][0].split(b" ", 1)[1], 0)
    assert not heroku.received_by("heroku") and heroku.received_by("logplex") and forge.received_by("heroku")
    assert outbox.after(conn, rid, forge.id, 10) == [heroku]
    assert outbox.after(conn, rid, heroku.id, 10) == []


def test_append_outside_a_transaction_is_refused(conn, resource_and_source):
    rid, source_id = resource_and_source
    with pytest.raises(RuntimeError, match="inside a transaction"):
        outbox.append_forge(conn, rid, source_id, [forge_record(1)], [datetime.now(timezone.utc)])
    assert outbox.held(conn, rid)["batches"] == 0


def test_ids_of_one_resource_appear_in_commit_order(database_url, conn, resource_and_source):
    """A batch that got its id first but commits last must not be passed over by a cursor."""
    rid, source_id = resource_and_source
    with db.connect(database_url, "forgedrain-tests") as first:
        with first.transaction():
            early = outbox.append_forge(first, rid, source_id, [forge_record(1)], [datetime.now(timezone.utc)])
            done = threading.Event()

            def second() -> None:
                with db.connect(database_url, "forgedrain-tests") as other:
                    append_forge(other, rid, source_id, 1)
                done.set()

            writer = threading.Thread(target=second)
            writer.start()
            deadline = time.monotonic() + 30
            while not conn.execute("SELECT count(*) AS n FROM pg_locks WHERE locktype = 'advisory' "
                                   "AND NOT granted").fetchone()["n"]:  # the second append waits for the lock
                assert time.monotonic() < deadline and not done.is_set()
                time.sleep(0.02)
            assert outbox.after(conn, rid, 0, 10) == []
        writer.join(10)
    batches = outbox.after(conn, rid, 0, 10)
    assert [b.id for b in batches][0] == early and len(batches) == 2 and batches[0].id < batches[1].id


@pytest.fixture
def resource_and_source(conn, settings):
    from tests.support.polling import add_resource

    rid = add_resource(conn)
    return rid, add_source(conn, Vault(settings.fernet_keys), rid)
