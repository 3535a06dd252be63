"""The dashboard in a real browser: Debian's chromium driven by Playwright, against live gunicorn over TLS.

The owner signs in as Heroku signs them in (a POSTed SSO form), adds a source
with a wrong token and reads what to do, adds it right, adds a logplex drain
pointing at a local receiver, sends a test record that the receiver gets, and,
once the worker's own poll and delivery jobs have run, sees on the dashboard
what they stored and delivered. A day of activity (with a gap and drops) is
charted at desktop and phone sizes; screenshots go to ``.local/artifacts/``
(git-ignored); the phone view must not scroll sideways.

Every page state a test reaches is checked with axe-core (npm, pinned in
``scripts/lib.sh``; ``./scripts/test`` installs it into ``.local/node``),
injected by Playwright: 0 violations. Results are checked where the owner
looks: at the card or form acted on, in the viewport after the action.

Chromium missing is a failure, not a skip: ``./scripts/test`` installs Debian's
package, as it does rsyslog for the syslog tests.
"""

from __future__ import annotations

import html
import json
import os
import shutil
from collections import Counter
from contextlib import contextmanager
from datetime import timedelta, timezone

import pytest

from broker import activity
from tests.fakes.forge import ForgeFake
from tests.fakes.receivers import logplex_receiver
from tests.fakes.server import LocalServer
from tests.support.live import ROOT, live_web
from tests.support.partner import basic, provision_body, user_scoped_token

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = ROOT / ".local" / "artifacts"
AXE = ROOT / ".local" / "node" / "node_modules" / "axe-core" / "axe.min.js"
APP = "5f0f8a4e-1f5a-4c3e-9d7b-1a2b3c4d5e6f"
ENV = "0d1e2f30-4152-6374-8596-a7b8c9d0e1f2"
EMAIL = "bot@acme.test"
TOKEN = "ATATT3xFfGF0-secret-token-0123456789"
OWNER = "owner@acme.test"



@pytest.fixture
def forge_fake():
    # Records visible at once and none late: the test expects every record of the polled stretch.
    fake = ForgeFake(seed=11, prompt_delay_seconds=0)
    fake.add_app(APP, [ENV], EMAIL, TOKEN, late_fraction=0)
    with LocalServer(fake.wsgi()) as server:
        fake.url = server.url
        yield fake


@pytest.fixture
def receiver():
    app, inbox = logplex_receiver()
    with LocalServer(app) as server:
        inbox.url = server.url
        yield inbox


@pytest.fixture
def service_env(env, forge_fake) -> dict:
    """The environment of every process here: the web, and the worker's jobs run by the test."""
    return dict(env, FORGE_API_URL=forge_fake.url, ALLOW_PRIVATE_DRAINS="true", PUBLIC_URL="https://127.0.0.1")


@pytest.fixture
def web(service_env, tmp_path):
    with live_web(service_env, tmp_path, tls=True) as live:
        yield live


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    executable = shutil.which("chromium") or (CHROMIUM if os.path.exists(CHROMIUM) else None)
    if executable is None:
        pytest.fail("Debian's chromium is not installed: ./scripts/test installs it "
                    "(apt-get install chromium)", pytrace=False)
    with sync_playwright() as playwright:
        # As root, chromium's sandbox cannot start; the pages it opens here are our own.
        args = ["--no-sandbox"] if os.geteuid() == 0 else []
        launched = playwright.chromium.launch(executable_path=executable, headless=True, args=args)
        try:
            yield launched
        finally:
            launched.close()


def sso_form(web, rid: str) -> str:
    """The page Heroku's dashboard serves: a form POSTed to the add-on's sso_url."""
    stamp, token = user_scoped_token(rid, "u-1", OWNER)
    fields = {"resource_id": rid, "user_scoped_resource_token": token, "timestamp": stamp, "app": "acme",
              "email": OWNER, "user_id": "u-1", "nav-data": "eyJhcHBuYW1lIjoiYWNtZSJ9"}
    inputs = "".join(f'<input type="hidden" name="{k}" value="{html.escape(v)}">' for k, v in fields.items())
    return (f'<html><body><form method="post" action="{web.url("/sso/login")}">{inputs}'
            '<button id="open" type="submit">Open Forge Drain</button></form></body></html>')


def axe_clean(page, state: str) -> None:
    """axe-core run on the page as it is now: no violation of any rule it checks (WCAG 2.x A/AA and
    its best practices)."""
    if not AXE.exists():
        pytest.fail("axe-core is not installed: ./scripts/test installs it (ensure_axe in scripts/lib.sh)",
                    pytrace=False)
    if not page.evaluate("typeof window.axe !== 'undefined'"):
        page.add_script_tag(path=str(AXE))
    violations = page.evaluate("""async () => {
        const result = await axe.run(document, {resultTypes: ["violations"]});
        return result.violations.map(v => ({id: v.id, impact: v.impact, help: v.help,
                                            nodes: v.nodes.slice(0, 5).map(n => n.target.join(" "))}));
    }""")
    assert violations == [], f"axe-core on {state}: {violations}"


def in_view(page, selector: str) -> bool:
    """Whether the element is at least partly inside the viewport now (where the owner is looking)."""
    return page.evaluate("""(selector) => {
        const box = document.querySelector(selector).getBoundingClientRect();
        return box.bottom > 0 && box.top < window.innerHeight && box.height > 0;
    }""", selector)


def tab_until(page, selector: str) -> None:
    """Press Tab until the element is focused (as a keyboard user moves through a page)."""
    target = page.locator(selector)
    for _ in range(150):
        if page.evaluate("(el) => el === document.activeElement", target.element_handle()):
            return
        page.keyboard.press("Tab")
    raise AssertionError(f"Tab never reached {selector}")


def type_datetime_local(page, moment) -> None:
    """Type a moment into the datetime-local field focused on its first part, as chromium (en-US)
    takes it from the keyboard: digits fill a part and move on, but the year takes up to six, so
    Tab moves on to the hour; A or P sets the half of the day."""
    page.keyboard.type(f"{moment:%m%d%Y}")
    page.keyboard.press("Tab")
    page.keyboard.type(f"{moment:%I%M}{moment:%p}"[:5])


def focused_id(page) -> str:
    return page.evaluate("document.activeElement && document.activeElement.id")


def clipped_axis_labels(page) -> list[str]:
    """The charts' axis labels that reach past their chart's left edge (cut off by the SVG)."""
    return page.evaluate("""() => [...document.querySelectorAll("svg.chart")].flatMap(svg => {
        const edge = svg.getBoundingClientRect().left;
        return [...svg.querySelectorAll("text.axis")].filter(t => t.getBoundingClientRect().left < edge - 0.5)
                                                     .map(t => t.textContent);
    })""")


def no_horizontal_scroll(page) -> tuple[int, int]:
    return page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")


def provision(web, **overrides) -> str:
    """A resource provisioned as Heroku does it (no log_input_url: nothing here may be sent off this
    machine, and the app's own log stream would be a second drain)."""
    body = provision_body(name="acme-forgedrain", plan="basic", log_input_url=None, **overrides)
    provisioned = web.session().post(web.url("/heroku/resources"), data=json.dumps(body),
                                     headers={**basic(), "Content-Type": "application/json",
                                              "Accept": "application/vnd.heroku-addons+json; version=3"})
    assert provisioned.status_code == 200, provisioned.text
    return body["uuid"]


@contextmanager
def signed_in_page(browser, web, rid: str):
    """A desktop-sized page signed in to ``rid`` as Heroku signs owners in; a screenshot and the web's
    output when what runs inside fails."""
    # en-US: the order of a datetime-local field's parts (month, day, year, hour, minute, AM/PM) as typed
    context = browser.new_context(ignore_https_errors=True, viewport={"width": 1280, "height": 900}, locale="en-US")
    page = context.new_page()
    page.set_default_timeout(15_000)
    try:
        page.set_content(sso_form(web, rid))
        page.click("#open")
        page.wait_for_url(f"**/dashboard/{rid}")
        yield page
    except Exception:
        page.screenshot(path=str(ARTIFACTS / "dashboard-failure.png"), full_page=True)
        print(web.output()[-4000:])
        raise
    finally:
        context.close()


def source_and_drain(conn, settings, rid: str, drain_name: str) -> tuple:
    """A source and a logplex drain written as the forms would store them: (source id, drain id)."""
    from broker.vault import Vault
    from tests.support.polling import add_source

    vault = Vault(settings.fernet_keys)
    source_id = add_source(conn, vault, rid, app_id=APP, environment_id=ENV)
    drain_id = conn.execute("INSERT INTO drains (resource_id, kind, url_enc, token, name) "
                            "VALUES (%s, 'logplex', %s, %s, %s) RETURNING id",
                            (rid, vault.encrypt("https://logs.example/drain"), f"d.{drain_name.replace(' ', '-')}",
                             drain_name)).fetchone()["id"]
    return source_id, drain_id


def run_the_workers_jobs(service_env: dict, conn, source_id) -> None:
    """What the worker does for a new source: poll jobs until it has caught up with Forge, then a
    delivery job (the jobs themselves, run here in-process, as RQ's SimpleWorker would)."""
    from broker import config
    from worker import context, deliver, poll

    context.install(config.load(service_env, testing=True))
    try:
        for _ in range(10):
            poll.run_batch(0, budget_seconds=30)
            caught_up = conn.execute("SELECT checkpoint > now() - interval '2 minutes' AS done FROM sources "
                                     "WHERE id = %s", (source_id,)).fetchone()["done"]
            if caught_up:
                break
            conn.execute("UPDATE sources SET next_poll_at = now() WHERE id = %s", (source_id,))
        assert caught_up, "the source never caught up"
        deliver.run(0, budget_seconds=30)
    finally:
        context.install(None)


def test_an_owner_sets_up_a_source_and_a_drain_and_sees_logs_flow(web, browser, receiver, conn, forge_fake,
                                                                   service_env, monkeypatch):
    from tests.support.polling import identity, outbox_records
    from tests.support.resolver import loopback_only

    loopback_only(monkeypatch)  # the jobs run in this process: nothing they reach may be off this machine
    rid = provision(web)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)

    with signed_in_page(browser, web, rid) as page:
        assert page.locator("h1").inner_text() == "acme-forgedrain"
        assert "Not yet: add your Forge app" in page.inner_text(".overview")
        axe_clean(page, "the dashboard of a new add-on")

        # a form sent empty: every missing field at once, focus on the first, the summary in view
        page.get_by_role("button", name="Add source").click()
        page.wait_for_load_state()
        summary = page.locator("#add-source .error-summary")
        assert "4 things to fix" in summary.inner_text() and "Enter the Forge app id" in summary.inner_text()
        assert focused_id(page) == "s-app_id" and in_view(page, "#add-source .error-summary")
        axe_clean(page, "a source form sent empty")

        # a wrong token: the form comes back with Atlassian's refusal and what was typed, the token excepted
        page.fill("#s-app_id", APP)
        page.fill("#s-environment_id", ENV)
        page.fill("#s-email", EMAIL)
        page.fill("#s-api_token", "not-the-right-token")
        page.fill("#s-service_name", "acme-jira-app")
        page.check("input[name=levels][value=ERROR]")
        page.get_by_role("button", name="Add source").click()
        error = page.locator("#api_token-error")
        assert "Atlassian refused the email and API token" in error.inner_text()
        assert page.input_value("#s-app_id") == APP and page.input_value("#s-service_name") == "acme-jira-app"
        assert page.input_value("#s-api_token") == ""
        assert page.is_checked("input[name=levels][value=ERROR]")
        assert focused_id(page) == "s-api_token" and in_view(page, "#api_token-error")
        page.screenshot(path=str(ARTIFACTS / "dashboard-source-refused.png"), full_page=True)
        axe_clean(page, "a source refused by Atlassian")

        page.keyboard.type(TOKEN)  # focus is in the refused field: type the right token and send with Enter
        page.keyboard.press("Enter")
        page.wait_for_url(f"**/dashboard/{rid}#source-*")
        source = conn.execute("SELECT id, checkpoint FROM sources").fetchone()
        added = f"#source-{source['id']} .result"
        assert "Atlassian accepted the credentials" in page.inner_text(added) and in_view(page, added)
        axe_clean(page, "a source just added")

        # a logplex drain to the local receiver, then a test record through it
        if page.locator("#add-drain[open]").count() == 0:  # open already while the resource has no drain
            page.click("summary:has-text('Add a drain')")
        # with the keyboard alone: Tab to each field, type, Enter sends the form
        tab_until(page, "#d-url")
        page.keyboard.type(f"{receiver.url}/drain")
        tab_until(page, "#d-name")
        page.keyboard.type("local receiver")
        with page.expect_navigation():
            page.keyboard.press("Enter")
        drain = conn.execute("SELECT id, token FROM drains WHERE kind = 'logplex'").fetchone()
        card_id = f"#drain-{drain['id']}"
        assert "Drain added" in page.inner_text(f"{card_id} .result") and in_view(page, f"{card_id} .result")
        assert "no delivery yet" in page.inner_text(f"{card_id} .pill")
        assert page.inner_text(".overview .verdict").startswith("Not yet delivering: 1 source polling, 1 drain with no "
                                                                "delivery yet.")
        axe_clean(page, "a drain just added")
        card = page.locator(card_id)
        card.locator("button:has-text('Send test record')").click()
        page.wait_for_load_state()
        assert "Test record delivered: the receiver accepted it (HTTP 200)" in page.inner_text(f"{card_id} .result")
        assert in_view(page, f"{card_id} .result")
        assert len(receiver.requests) == 1
        sent = receiver.requests[0]
        assert sent["token"] == drain["token"]
        assert "if you can read this, the drain works" in sent["events"][0]["message"]

        # a failed test: said at the card, which no longer claims to deliver; the verdict names and links it
        receiver.fail(500)
        page.locator(card_id).locator("button:has-text('Send test record')").click()
        page.wait_for_load_state()
        result = page.locator(f"{card_id} .result[role=alert]")
        assert "Test record not delivered (HTTP 500)" in result.inner_text() and in_view(page, f"{card_id} .result")
        assert page.inner_text(f"{card_id} .pill") == "test record not delivered"
        assert "1 thing needs a look" in page.inner_text(".overview")
        assert page.locator(f".overview a[href='{card_id}']").inner_text() == "Drain local receiver"
        page.screenshot(path=str(ARTIFACTS / "dashboard-test-failed.png"))
        axe_clean(page, "a failed test record")
        receiver.requests.clear()

        # the only script asks before rotating a token; dismissing it changes nothing
        asked = []
        page.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.dismiss()))
        page.locator(f"#drain-{drain['id']} button:has-text('Rotate token')").click()
        page.wait_for_function("true")  # a round trip: the question has been answered
        assert asked == ["Issue a new token? Receivers checking the old one will refuse deliveries."]
        assert conn.execute("SELECT token FROM drains WHERE id = %s", (drain["id"],)).fetchone()["token"] == drain["token"]

        # Logs flow: the worker's jobs poll the Forge fake and deliver to the receiver. Every ERROR
        # record Forge has from where the source began is stored once and delivered.
        run_the_workers_jobs(service_env, conn, source["id"])
        assert len(receiver.requests) >= 1
        polled_to = conn.execute("SELECT checkpoint FROM sources").fetchone()["checkpoint"]
        expected = forge_fake.records(APP, ENV, source["checkpoint"], polled_to, levels=["ERROR"])
        stored = outbox_records(conn, source["id"])
        assert len(expected) > 10  # the hour before the source was added, ERROR only
        assert sorted(map(identity, stored)) == sorted(map(identity, expected))
        row = conn.execute("SELECT delivered, dropped, retried FROM drains WHERE id = %s", (drain["id"],)).fetchone()
        assert (row["delivered"], row["dropped"], row["retried"]) == (len(stored), 0, 0)
        assert all(r["token"] == drain["token"] for r in receiver.requests) and receiver.refused == []
        # A body arrives a line a frame, and a line over 10,000 bytes in pieces: end to end, the
        # frames carry every line of every record.
        received = "".join(e["message"] for r in receiver.requests for e in r["events"])
        for record in stored:
            for line in record["body"]["stringValue"].splitlines():
                assert line.strip() in received, record

        # ... and the dashboard shows what the jobs recorded
        page.goto(web.url(f"/dashboard/{rid}"))
        assert "Yes: 1 source polling, 1 drain delivering" in page.inner_text(".overview")
        n = len(stored)
        source_chart = page.locator(f"#source-{source['id']} svg.chart")
        assert f"Total: {n:,} stored" in source_chart.locator("text.total").text_content()
        assert page.inner_text(f"#source-{source['id']} .records-24h") == f"{n:,}"
        drain_chart = page.locator(f"#drain-{drain['id']} svg.chart")
        assert f"Total: {n:,} delivered · 0 dropped" in drain_chart.locator("text.total").text_content()
        assert f"{n:,} delivered · 0 retried · 0 dropped" in page.inner_text(f"#drain-{drain['id']} .counts")
        audit_text = page.inner_text("#audit")
        assert OWNER in audit_text and "drain.tested" in audit_text and "source.created" in audit_text
        page.screenshot(path=str(ARTIFACTS / "dashboard-logs-flowing.png"), full_page=True)
        axe_clean(page, "logs flowing")

        # disabled: the card says so at once, without any "retries" talk
        page.locator(card_id).locator("button:has-text('Disable')").click()
        page.wait_for_load_state()
        assert page.inner_text(f"{card_id} .pill") == "disabled" and in_view(page, f"{card_id} .result")
        assert "Drain disabled" in page.inner_text(f"{card_id} .result")
        assert "retries" not in page.inner_text(card_id) and "tries again" not in page.inner_text(card_id)
        axe_clean(page, "a drain just disabled")

        # an error page has a way back, and the form's address reloaded is the dashboard, not JSON
        page.goto(web.url(f"/dashboard/{rid}/drains/00000000-0000-4000-8000-000000000000/edit"))
        assert page.locator("h1").inner_text() == "Page not found"
        axe_clean(page, "a page not found")
        page.get_by_role("link", name="Back to your dashboard").click()
        page.wait_for_url(f"**/dashboard/{rid}")
        page.goto(web.url(f"/dashboard/{rid}/drains"))
        page.wait_for_url(f"**/dashboard/{rid}#add-drain")


def test_a_day_of_activity_with_a_gap_and_drops_is_charted_and_fits_a_phone(web, browser, conn, settings):
    """The chart's rendering of a full day, with activity written as the jobs write it (the test
    above sends real logs through; a day of them would take a day)."""
    rid = provision(web)
    source_id, drain_id = source_and_drain(conn, settings, rid, "local receiver")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)

    with signed_in_page(browser, web, rid) as page:
        now = conn.execute("SELECT date_trunc('minute', now()) AS m").fetchone()["m"]
        stored = Counter({now - timedelta(minutes=m): 20 + (m * 7919) % 61 + (m // 90) * 4 for m in range(24 * 60)})
        activity.add(conn, rid, source_id, "stored", stored)
        activity.add(conn, rid, drain_id, "delivered",
                     Counter({now - timedelta(minutes=m): 60 for m in range(0, 12 * 60, 2)}))
        activity.add(conn, rid, drain_id, "dropped", Counter({now - timedelta(hours=3): 42}))
        conn.execute("UPDATE drains SET delivered = 21600, dropped = 42, retried = 3 WHERE id = %s", (drain_id,))
        conn.execute("INSERT INTO source_gaps (source_id, gap_from, gap_until, reason) VALUES (%s, %s, %s, %s)",
                     (source_id, now - timedelta(hours=9), now - timedelta(hours=8), "older than the App logs API's 14 days"))
        page.goto(web.url(f"/dashboard/{rid}"))
        total = sum(stored.values())
        source_chart = page.locator(f"#source-{source_id} svg.chart")
        assert f"Total: {total:,} stored · 1 gap" in source_chart.locator("text.total").text_content()
        assert source_chart.locator("rect.gap").count() == 1
        assert "records stored in the last 24 hours" in source_chart.locator("desc").text_content()
        drain_chart = page.locator(f"#drain-{drain_id} svg.chart")
        assert "Total: 21,600 delivered · 42 dropped" in drain_chart.locator("text.total").text_content()
        assert drain_chart.locator("path.drop").count() == 1
        assert page.inner_text(f"#source-{source_id} .records-24h") == f"{total:,}"
        assert "21,600 delivered · 3 retried · 42 dropped" in page.inner_text(f"#drain-{drain_id} .counts")
        page.screenshot(path=str(ARTIFACTS / "dashboard-desktop.png"), full_page=True)
        width, viewport = no_horizontal_scroll(page)
        assert width <= viewport
        axe_clean(page, "a day of activity, desktop")

        page.set_viewport_size({"width": 390, "height": 844})
        page.reload()
        page.screenshot(path=str(ARTIFACTS / "dashboard-phone.png"), full_page=True)
        page.screenshot(path=str(ARTIFACTS / "dashboard-phone-first-screen.png"))
        page.locator(f"#source-{source_id}").screenshot(path=str(ARTIFACTS / "dashboard-phone-source.png"))
        page.locator(f"#drain-{drain_id}").screenshot(path=str(ARTIFACTS / "dashboard-phone-drain.png"))
        width, viewport = no_horizontal_scroll(page)
        assert viewport == 390 and width <= viewport, f"the phone view scrolls sideways: {width} > {viewport}"
        assert clipped_axis_labels(page) == [], "y-axis labels cut off at the chart's left edge"
        axe_clean(page, "a day of activity, phone")
        page.goto(web.url(f"/dashboard/{rid}/drains/{drain_id}/edit"))
        assert no_horizontal_scroll(page)[0] <= 390
        page.screenshot(path=str(ARTIFACTS / "dashboard-phone-drain-edit.png"), full_page=True)
        axe_clean(page, "the drain edit form, phone")


def test_the_forms_are_completed_with_the_keyboard_alone_and_rules_reach_the_card(web, browser, conn, settings):
    """Tab to a field, type, Space to check, Enter on a checkbox (toggles, sends nothing), Enter on Save."""
    rid = provision(web)
    _, drain_id = source_and_drain(conn, settings, rid, "archive")
    with signed_in_page(browser, web, rid) as page:
        def tab_to(selector: str) -> None:
            tab_until(page, selector)

        page.goto(web.url(f"/dashboard/{rid}/drains/{drain_id}/edit"))
        edit_url = page.url
        axe_clean(page, "the drain edit form")

        tab_to("#d-name")
        page.keyboard.press("Control+A")
        page.keyboard.type("archive eu")
        tab_to("input[name=detectors][value=email]")
        page.keyboard.press("Space")
        assert page.is_checked("input[name=detectors][value=email]")
        tab_to("input[name=detectors][value=card]")
        page.keyboard.press("Enter")  # toggles it, as Space does: the form is not sent from a checkbox
        assert page.is_checked("input[name=detectors][value=card]") and page.url == edit_url
        tab_to("#d-min_severity")
        page.keyboard.press("ArrowDown")  # a closed select steps through its options with the arrow keys
        page.keyboard.press("ArrowDown")
        page.keyboard.press("ArrowDown")
        assert page.input_value("#d-min_severity") == "INFO"
        tab_to("input[name=rule_levels][value=ERROR]")
        page.keyboard.press("Space")  # both a minimum and levels: refused, said next to the field
        tab_to("button:has-text('Save')")
        with page.expect_navigation():
            page.keyboard.press("Enter")
        assert "Choose a minimum severity or a set of levels, not both" in page.inner_text(".error-summary")
        assert focused_id(page) == "d-min_severity" and in_view(page, "#min_severity-error")
        axe_clean(page, "the drain edit form refused")
        assert conn.execute("SELECT rules FROM drains WHERE id = %s", (drain_id,)).fetchone()["rules"] == {}

        tab_to("input[name=rule_levels][value=ERROR]")
        page.keyboard.press("Space")
        tab_to("button:has-text('Save')")
        page.keyboard.press("Enter")
        page.wait_for_url(f"**/dashboard/{rid}#drain-{drain_id}")
        card = f"#drain-{drain_id}"
        assert "Drain saved" in page.inner_text(f"{card} .result") and in_view(page, f"{card} .result")
        assert "Severity INFO and above" in page.inner_text(f"{card} .rules")
        assert "email addresses, card numbers" in page.inner_text(f"{card} .rules")
        assert conn.execute("SELECT name, rules FROM drains WHERE id = %s", (drain_id,)).fetchone() == {
            "name": "archive eu", "rules": {"min_severity": "INFO", "redact": {"detectors": ["email", "card"]}}}
        page.screenshot(path=str(ARTIFACTS / "dashboard-rules-saved.png"))
        axe_clean(page, "a drain saved with rules")


def test_a_source_is_edited_verified_and_backfilled_with_the_keyboard_alone(web, browser, conn, settings):
    """The source's Edit link, its form (a refused save, then a good one), Verify now and the backfill
    form, each reached with Tab and sent with Enter; the result read at the card, in view."""
    from broker.vault import Vault

    rid = provision(web)
    source_id, _ = source_and_drain(conn, settings, rid, "archive")
    card = f"#source-{source_id}"

    def source_row() -> dict:
        return conn.execute("SELECT app_id, email, levels, service_name, api_token_enc, verified_at, checkpoint, "
                            "backfill_from, backfill_until FROM sources WHERE id = %s", (source_id,)).fetchone()

    before = source_row()
    with signed_in_page(browser, web, rid) as page:
        def tab_to(selector: str) -> None:
            tab_until(page, selector)

        tab_to(f"{card} a:has-text('Edit')")
        page.keyboard.press("Enter")
        page.wait_for_url(f"**/dashboard/{rid}/sources/{source_id}/edit")
        edit_url = page.url
        axe_clean(page, "the source edit form")

        # app id and email emptied, the right token typed, a service name, levels: refused, all at once
        tab_to("#s-app_id")
        page.keyboard.press("Control+A")
        page.keyboard.press("Delete")
        tab_to("#s-email")
        page.keyboard.press("Control+A")
        page.keyboard.press("Delete")
        tab_to("#s-api_token")
        page.keyboard.type(TOKEN)
        tab_to("#s-service_name")
        page.keyboard.type("acme-jira-app")
        tab_to("input[name=levels][value=ERROR]")
        page.keyboard.press("Space")
        tab_to("input[name=levels][value=WARN]")
        page.keyboard.press("Enter")  # toggles it: the form is not sent from a checkbox
        assert page.is_checked("input[name=levels][value=WARN]") and page.url == edit_url
        tab_to("button:has-text('Save')")
        with page.expect_navigation():
            page.keyboard.press("Enter")
        summary = page.inner_text(".error-summary")
        assert "The source was not saved: 2 things to fix" in summary
        assert "Enter the Forge app id" in summary and "Enter the Atlassian account email" in summary
        assert page.inner_text("#app_id-error") == "Enter the Forge app id"
        assert page.inner_text("#email-error") == "Enter the Atlassian account email"
        assert focused_id(page) == "s-app_id" and in_view(page, ".error-summary") and in_view(page, "#app_id-error")
        assert page.input_value("#s-service_name") == "acme-jira-app" and page.input_value("#s-api_token") == ""
        assert page.is_checked("input[name=levels][value=ERROR]") and page.is_checked("input[name=levels][value=WARN]")
        axe_clean(page, "the source edit form refused")
        assert source_row() == before

        # focus is in the first field in error: type there, Tab on, and Enter on Save
        page.keyboard.type(APP)
        tab_to("#s-email")
        page.keyboard.type(EMAIL)
        tab_to("#s-api_token")
        page.keyboard.type(TOKEN)
        tab_to("button:has-text('Save')")
        page.keyboard.press("Enter")
        page.wait_for_url(f"**/dashboard/{rid}#source-{source_id}")
        result = page.inner_text(f"{card} .result")
        assert result.startswith(f"Source {APP} saved (") and result.endswith("; Atlassian accepted the credentials.")
        assert all(name in result for name in ("API token", "Levels", "Service name")), result
        assert in_view(page, f"{card} .result") and page.inner_text(f"{card} h3") == "acme-jira-app"
        axe_clean(page, "a source saved")
        saved = source_row()
        assert (saved["app_id"], saved["email"], saved["levels"], saved["service_name"]) == (
            APP, EMAIL, ["WARN", "ERROR"], "acme-jira-app")
        assert Vault(settings.fernet_keys).decrypt(saved["api_token_enc"]) == TOKEN and saved["verified_at"]

        tab_to(f"{card} button:has-text('Verify now')")
        with page.expect_navigation():
            page.keyboard.press("Enter")
        assert page.inner_text(f"{card} .result") == f"Atlassian accepted the credentials of {APP}; polling is on."
        assert in_view(page, f"{card} .result")
        axe_clean(page, "a source verified")

        # Backfill: records the source stored in the last hours are what receivers would see twice
        now = conn.execute("SELECT date_trunc('minute', now()) AS m").fetchone()["m"].astimezone(timezone.utc)
        activity.add(conn, rid, source_id, "stored", Counter({now - timedelta(hours=1): 30,
                                                              now - timedelta(hours=2): 12}))
        checkpoint = source_row()["checkpoint"]
        field = f"#from-{source_id}"

        # more than 14 days back: refused next to the field, focus on it, what was typed kept
        too_old = now - timedelta(days=20)
        tab_to(field)
        type_datetime_local(page, too_old)
        assert page.input_value(field) == f"{too_old:%Y-%m-%dT%H:%M}"
        tab_to(f"{card} .backfill button")
        page.once("dialog", lambda dialog: dialog.accept())
        with page.expect_navigation():
            page.keyboard.press("Enter")
        error = f"#from-{source_id}-error"
        assert page.inner_text(error) == "The start is more than 14 days ago: Atlassian keeps app logs for 14 days"
        assert focused_id(page) == f"from-{source_id}" and in_view(page, error)
        assert page.input_value(field) == f"{too_old:%Y-%m-%dT%H:%M}"
        axe_clean(page, "a backfill refused")
        assert source_row()["checkpoint"] == checkpoint

        # three hours back, typed over the refused time; the question dismissed: nothing happens
        start = now - timedelta(hours=3)
        type_datetime_local(page, start)
        assert page.input_value(field) == f"{start:%Y-%m-%dT%H:%M}"
        refused_url = page.url
        asked = []
        page.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.dismiss()))
        page.keyboard.press("Enter")  # Enter in the field sends its form, as on the button
        page.wait_for_function("true")  # a round trip: the question has been answered
        assert asked == ["Backfill? Every record since then is fetched and sent again: your drains' receivers "
                         "see the records they already have a second time."]
        assert page.url == refused_url and source_row()["backfill_from"] is None

        # ... and accepted: the card says from when, and that receivers see 42 records again
        page.once("dialog", lambda dialog: dialog.accept())
        page.keyboard.press("Enter")
        page.wait_for_url(f"**/dashboard/{rid}#source-{source_id}")
        result = page.inner_text(f"{card} .result")
        assert result == (f"Backfill started from {start:%Y-%m-%d %H:%M} UTC: Forge Drain fetches every record since "
                          "then again; 42 records stored since then will be sent to your drains again, and receivers "
                          "will see them a second time. Records arrive as the source catches up.")
        assert in_view(page, f"{card} .result")
        axe_clean(page, "a backfill started")
        backfilled = source_row()
        assert (backfilled["checkpoint"], backfilled["backfill_from"], backfilled["backfill_until"]) == (
            start, start, checkpoint)


def test_the_buttons_of_the_cards_work_from_the_keyboard(web, browser, conn, settings, receiver):
    """Send test record, Disable, Enable, Rotate token, and Delete (a drain, then the source): Tab to the
    button, Enter; a question asked first is answered (a native dialog is no page to Tab through),
    dismissed changes nothing; the result is read where the owner is looking."""
    from broker.vault import Vault

    rid = provision(web)
    source_id, drain_id = source_and_drain(conn, settings, rid, "archive")
    conn.execute("UPDATE drains SET url_enc = %s WHERE id = %s",
                 (Vault(settings.fernet_keys).encrypt(f"{receiver.url}/drain"), drain_id))
    card = f"#drain-{drain_id}"

    def drain_row() -> dict | None:
        return conn.execute("SELECT enabled, token FROM drains WHERE id = %s", (drain_id,)).fetchone()

    with signed_in_page(browser, web, rid) as page:
        def press(selector: str, answer: str | None = None) -> list[str]:
            """Tab to the button, Enter; the question it asks, if any, answered "accept" or "dismiss"."""
            tab_until(page, selector)
            asked: list[str] = []
            if answer:
                page.once("dialog", lambda dialog: (asked.append(dialog.message), getattr(dialog, answer)()))
            if answer == "dismiss":
                page.keyboard.press("Enter")
                page.wait_for_function("true")  # a round trip: the question has been answered
            else:
                with page.expect_navigation():
                    page.keyboard.press("Enter")
            return asked

        def said(where: str) -> str:
            assert in_view(page, f"{where} .result"), f"the result at {where} is out of view"
            return page.inner_text(f"{where} .result")

        press(f"{card} button:has-text('Send test record')")
        assert said(card).startswith("Test record delivered: the receiver accepted it (HTTP 200)")
        assert len(receiver.requests) == 1 and receiver.requests[0]["token"] == drain_row()["token"]
        axe_clean(page, "a test record sent from the keyboard")

        press(f"{card} button:has-text('Disable')")
        assert said(card).startswith("Drain disabled") and page.inner_text(f"{card} .pill") == "disabled"
        assert drain_row()["enabled"] is False
        axe_clean(page, "a drain disabled from the keyboard")
        press(f"{card} button:has-text('Enable')")
        assert said(card) == "Drain enabled: deliveries resume." and drain_row()["enabled"] is True
        axe_clean(page, "a drain enabled from the keyboard")

        token = drain_row()["token"]
        assert press(f"{card} button:has-text('Rotate token')", "accept") == [
            "Issue a new token? Receivers checking the old one will refuse deliveries."]
        new_token = drain_row()["token"]
        assert new_token != token and said(card).startswith(f"New drain token {new_token}:")
        axe_clean(page, "a token rotated from the keyboard")

        # Two more drains: the section's result must not land below the cards that are left.
        for name in ("second", "third"):
            conn.execute("INSERT INTO drains (resource_id, kind, url_enc, token, name) VALUES (%s, 'logplex', %s, %s, %s)",
                         (rid, Vault(settings.fernet_keys).encrypt("https://logs.example/drain"), f"d.{name}", name))
        page.reload()
        dashboard = page.url
        delete_drain = f"{card} form[action$='/delete'] button"
        assert press(delete_drain, "dismiss") == ["Delete this drain? Records waiting for it are let go."]
        assert page.url == dashboard and drain_row() is not None
        press(delete_drain, "accept")
        page.wait_for_url(f"**/dashboard/{rid}#drains")
        assert said("#drains") == "Drain archive deleted." and drain_row() is None
        assert page.locator(card).count() == 0
        axe_clean(page, "a drain deleted from the keyboard")

        delete_source = f"#source-{source_id} form[action$='/delete'] button"
        assert press(delete_source, "dismiss") == ["Delete this source? Its logs stop being pulled."]
        assert conn.execute("SELECT count(*) AS n FROM sources").fetchone()["n"] == 1
        press(delete_source, "accept")
        page.wait_for_url(f"**/dashboard/{rid}#sources")
        assert said("#sources") == f"Source {APP} deleted."
        assert conn.execute("SELECT count(*) AS n FROM sources").fetchone()["n"] == 0
        axe_clean(page, "a source deleted from the keyboard")
