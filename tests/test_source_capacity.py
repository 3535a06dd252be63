"""Over capacity and unreadable records, as the owner and the operator see them (issue 12, item 2).

The poller fills the columns (migration 0010); here they are set directly and
each face is read: the resource API, the dashboard, ``python -m broker status``
and ``/metrics``.
"""

from __future__ import annotations

import html
import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from broker import config
from broker.vault import Vault
from tests.support.partner import sso_token
from tests.support.polling import add_resource, add_source, api_token
from web import create_app

ROOT = Path(__file__).resolve().parent.parent
METRICS_TOKEN = secrets.token_hex(32)
SAMPLE = '{"timestamp":"2026-11-20T08:00:00.000Z","message":"\\ud800 bad surrogate","token":"****"}'


@pytest.fixture
def vault(settings):
    return Vault(settings.fernet_keys)


@pytest.fixture
def client(env):
    app = create_app(config.load({**env, "METRICS_TOKEN": METRICS_TOKEN}, testing=True))
    yield app.test_client()
    app.extensions["forgedrain"].db.close()


@pytest.fixture
def fleet(conn, vault):
    """A resource with one source over capacity (and with unreadable records) and one healthy source."""
    resource_id = add_resource(conn, plan="basic")
    busy = add_source(conn, vault, resource_id)
    calm = add_source(conn, vault, resource_id, environment_id="staging")
    conn.execute(
        "UPDATE sources SET over_capacity_since = '2026-11-20T07:30:00Z', density_per_minute = 3120.4, "
        "capacity_per_minute = 1250, page_records = 50, unreadable = 7, unreadable_sample = %s, "
        "unreadable_at = '2026-11-20T08:01:02Z' WHERE id = %s", (SAMPLE, busy))
    conn.execute("UPDATE sources SET density_per_minute = 12.5, capacity_per_minute = 1250, page_records = 50 "
                 "WHERE id = %s", (calm,))
    return resource_id, busy, calm


def test_the_resource_api_shows_capacity_and_unreadable_records(client, fleet):
    resource_id, busy, calm = fleet
    auth = {"Authorization": f"Bearer {api_token(resource_id)}"}  # add_resource's token
    listed = client.get(f"/v1/resources/{resource_id}/sources", headers=auth)
    assert listed.status_code == 200, listed.json
    by_id = {s["id"]: s for s in listed.json["sources"]}
    assert by_id[str(busy)]["capacity"] == {
        "over_capacity": True, "since": "2026-11-20T07:30:00+00:00", "density_per_minute": 3120.4,
        "capacity_per_minute": 1250.0, "records_per_page": 50}
    assert by_id[str(busy)]["unreadable"] == {"count": 7, "sample": SAMPLE, "last_seen_at": "2026-11-20T08:01:02+00:00"}
    assert by_id[str(calm)]["capacity"] == {
        "over_capacity": False, "since": None, "density_per_minute": 12.5, "capacity_per_minute": 1250.0,
        "records_per_page": 50}
    assert by_id[str(calm)]["unreadable"] == {"count": 0, "sample": None, "last_seen_at": None}
    single = client.get(f"/v1/resources/{resource_id}/sources/{busy}", headers=auth).json
    assert single["capacity"]["over_capacity"] is True and single["unreadable"]["count"] == 7
    schema = client.get("/v1/openapi.json").json["components"]["schemas"]["Source"]
    assert {"capacity", "unreadable"} <= set(schema["required"])


def test_the_dashboard_explains_over_capacity_and_unreadable_records_in_plain_words(client, fleet):
    resource_id, busy, calm = fleet
    stamp, token = sso_token(str(resource_id))
    assert client.post("/sso/login", data={"resource_id": str(resource_id), "resource_token": token,
                                           "timestamp": stamp, "app": "acme",
                                           "email": "owner@acme.test"}).status_code == 302
    page = client.get(f"/dashboard/{resource_id}").get_data(as_text=True)
    busy_card = page[page.index(f'id="source-{busy}"'):page.index(f'id="source-{calm}"')]
    text = html.unescape(re.sub(r"<[^>]+>", " ", busy_card))
    text = " ".join(text.split())
    assert 'class="item needs-attention"' in page[page.rindex("<article", 0, page.index(f'id="source-{busy}"')):
                                                  page.index(f'id="source-{busy}"')]
    assert "over capacity" in text
    assert "This app logs about 3,120 records a minute" in text
    assert "at most 1,250 a minute" in text and "50 records a call" in text
    assert "fall further behind" in text and "past 14 days" in text and "gap" in text
    assert "Levels" in text and "Installation contexts" in text and "log less" in text
    assert "Over capacity since 2026-11-20 07:30 UTC" in text
    assert "7 records could not be read" in text and SAMPLE in text and "2026-11-20 08:01:02 UTC" in text
    calm_card = page[page.index(f'id="source-{calm}"'):]
    calm_card = calm_card[:calm_card.index("</article>")]
    assert "over capacity" not in calm_card.lower() and "could not be read" not in calm_card
    assert "need a look" in page or "needs a look" in page


def test_status_marks_sources_over_capacity(env, fleet):
    resource_id, busy, calm = fleet

    def run(*args):
        result = subprocess.run([sys.executable, "-m", "broker", "status", *args], cwd=ROOT,
                                env=dict(env, PATH="/usr/bin:/bin"), capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return result.stdout

    fleet_text = run()
    header = next(line for line in fleet_text.splitlines() if line.startswith("state ") and "pause reason" in line)
    assert "over capacity" in header and "unreadable" in header
    assert re.search(r"^active\s+-\s+2\s+\S+\s+1\s+7$", fleet_text, re.M), fleet_text
    one = run(str(resource_id))
    busy_line = next(line for line in one.splitlines() if line.startswith(str(busy)))
    calm_line = next(line for line in one.splitlines() if line.startswith(str(calm)))
    assert "OVER 3,120/min > 1,250/min" in busy_line and re.search(r"\s7\s", busy_line)
    assert "OVER" not in calm_line


def scrape(client) -> dict:
    response = client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert response.status_code == 200
    return {sample.name: sample.value
            for family in text_string_to_metric_families(response.get_data(as_text=True))
            for sample in family.samples if not sample.labels}


def test_metrics_count_sources_over_capacity_and_unreadable_records_across_deletions(client, fleet, conn, vault):
    resource_id, busy, calm = fleet
    conn.execute("UPDATE sources SET unreadable = 2 WHERE id = %s", (calm,))
    samples = scrape(client)
    assert samples["forgedrain_sources_over_capacity"] == 1
    assert samples["forgedrain_unreadable_records_total"] == 9

    conn.execute("DELETE FROM sources WHERE id = %s", (busy,))
    samples = scrape(client)
    assert samples["forgedrain_sources_over_capacity"] == 0
    assert samples["forgedrain_unreadable_records_total"] == 9  # a counter never goes down
    other = add_resource(conn)
    conn.execute("UPDATE sources SET unreadable = 3 WHERE id = %s", (add_source(conn, vault, other),))
    conn.execute("DELETE FROM resources WHERE id = %s", (other,))  # a purge cascades
    assert scrape(client)["forgedrain_unreadable_records_total"] == 12
