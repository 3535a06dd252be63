"""What the dashboard shows, computed on the server: charts as inline SVG, states and plain-words errors.

The chart is readable without JavaScript or colour: it carries a ``<title>``
and a ``<desc>`` (totals, peak, gaps, drops) for screen readers, axis labels
in UTC, and the totals as text. Gaps (``source_gaps``) are shaded ranges —
or, when the missing range itself is older than the chart, a marker at the
moment the gap was recorded — and minutes with dropped records carry a red
marker, each with its own ``<title>`` tooltip.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from markupsafe import Markup, escape

MINUTES = 24 * 60 + 1  # activity.series keeps the current minute and the 24 h before it
WIDTH, HEIGHT = 720, 210
LEFT, RIGHT, TOP, BOTTOM = 74, 12, 26, 58  # LEFT fits a y label ("250k") at the phone's larger letters
PLOT_W, PLOT_H = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM


def utc_minute(moment: datetime) -> datetime:
    return moment.astimezone(timezone.utc).replace(second=0, microsecond=0)


def when(moment: datetime) -> str:
    """A moment as the page shows times: "2026-12-02 04:00 UTC"."""
    return f"{moment.astimezone(timezone.utc):%Y-%m-%d %H:%M} UTC"


def number(n: int | float) -> str:
    return f"{int(n):,}"


def duration(seconds: float | None) -> str:
    """A short human duration: 40 s, 12 min, 5 h, 3 d."""
    if seconds is None:
        return "—"
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{int(seconds)} s"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)} min"
    if seconds < 48 * 3600:
        return f"{round(seconds / 3600)} h"
    return f"{round(seconds / 86400)} d"


@dataclass
class Activity:
    """Per subject (source or drain id as text) and kind: records per minute over the chart's window."""

    start: datetime  # the first minute shown
    counts: dict = field(default_factory=lambda: defaultdict(lambda: [0] * MINUTES))

    def add(self, subject: str, kind: str, minute: datetime, records: int) -> None:
        index = int((utc_minute(minute) - self.start).total_seconds() // 60)
        if 0 <= index < MINUTES:
            self.counts[(subject, kind)][index] += records

    def values(self, subject: str, kind: str) -> list[int]:
        return self.counts.get((subject, kind)) or [0] * MINUTES

    def total(self, subject: str, kind: str) -> int:
        return sum(self.counts.get((subject, kind)) or ())


def collect(rows: list[dict], now: datetime) -> Activity:
    """Fold ``broker.activity.series`` rows into per-minute arrays ending at ``now``'s minute."""
    found = Activity(utc_minute(now) - timedelta(minutes=MINUTES - 1))
    for row in rows:
        found.add(str(row["subject"]), row["kind"], row["minute"], row["records"])
    return found


def short_number(n: float) -> str:
    """An axis label: 950, 2.5k, 10k, 1.5M (a chart's y labels must fit its left margin on a phone)."""
    if n < 1000:
        return number(n)
    if n < 1_000_000:
        return f"{n / 1000:g}k"
    return f"{n / 1_000_000:g}M"


def _nice_ceiling(value: int) -> int:
    if value <= 1:
        return 1
    magnitude = 10 ** (len(str(int(value))) - 1)
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * magnitude:
            return int(step * magnitude) if step * magnitude >= 1 else 1
    return int(10 * magnitude)


def _x(index: float) -> float:
    return LEFT + index * PLOT_W / (MINUTES - 1)


def _step_path(values: list[int], top: int) -> str:
    """A step line through every minute, with a command only where the value changes."""
    def y(v: int) -> float:
        return TOP + PLOT_H - v * PLOT_H / top

    parts = [f"M{LEFT:.1f},{y(values[0]):.1f}"]
    current = values[0]
    for index, value in enumerate(values[1:], start=1):
        if value != current:
            parts.append(f"H{_x(index):.1f}V{y(value):.1f}")
            current = value
    parts.append(f"H{_x(MINUTES - 1):.1f}")
    return "".join(parts)


def _hhmm(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%H:%M")


def chart(chart_id: str, label: str, start: datetime, main: list[int], main_name: str, *,
          dropped: list[int] | None = None, gaps: list[dict] | None = None) -> Markup:
    """An inline SVG chart of records per minute over the last 24 hours.

    ``main`` is the per-minute series (stored for a source, delivered for a
    drain); ``dropped`` marks minutes with dropped records; ``gaps`` are
    ``source_gaps`` rows (gap_from, gap_until, reason, recorded_at).
    """
    end = start + timedelta(minutes=MINUTES - 1)
    total = sum(main)
    peak = max(main) if main else 0
    peak_at = start + timedelta(minutes=main.index(peak)) if peak else None
    top = _nice_ceiling(peak)
    drops = [(i, n) for i, n in enumerate(dropped or []) if n > 0]
    dropped_total = sum(n for _, n in drops)
    marks: list[tuple[str, float, float, str]] = []  # (class, x0, x1, tooltip)
    for gap in gaps or []:
        g_from, g_until = gap["gap_from"], gap["gap_until"]
        text = (f"Gap: logs from {g_from:%Y-%m-%d %H:%M} to {g_until:%Y-%m-%d %H:%M} UTC could not be "
                f"fetched ({gap['reason']})")
        if g_until > start and g_from < end:
            x0 = _x(max(0.0, (g_from - start).total_seconds() / 60))
            x1 = _x(min(MINUTES - 1.0, (g_until - start).total_seconds() / 60))
            marks.append(("gap", x0, max(x1, x0 + 2), text))
        elif start <= gap["recorded_at"] <= end:
            x0 = _x((gap["recorded_at"] - start).total_seconds() / 60)
            marks.append(("gap gap-recorded", x0 - 1, x0 + 1, f"{text}; recorded at {_hhmm(gap['recorded_at'])} UTC"))

    summary = f"{number(total)} records {main_name} in the last 24 hours"
    if peak_at is not None:
        summary += f"; peak {number(peak)} per minute at {_hhmm(peak_at)} UTC"
    if dropped is not None:
        summary += f"; {number(dropped_total)} dropped"
    gap_count = sum(1 for m in marks if m[0].startswith("gap"))
    if gap_count:
        summary += f"; {gap_count} gap{'s' if gap_count > 1 else ''}"
    title_id, desc_id = f"{chart_id}-title", f"{chart_id}-desc"

    out = [f'<svg class="chart" id="{escape(chart_id)}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
           f'aria-labelledby="{escape(title_id)} {escape(desc_id)}" preserveAspectRatio="xMidYMid meet" '
           f'xmlns="http://www.w3.org/2000/svg">',
           f'<title id="{escape(title_id)}">{escape(label)}: records per minute, last 24 hours (UTC)</title>',
           f'<desc id="{escape(desc_id)}">{escape(summary)}.</desc>',
           f'<rect class="plot" x="{LEFT}" y="{TOP}" width="{PLOT_W}" height="{PLOT_H}"/>']
    # axes: y at 0, half and top; x every 6 hours
    for fraction in (0, 0.5, 1):
        y = TOP + PLOT_H - fraction * PLOT_H
        value = top * fraction
        if value != int(value):
            continue  # whole records only: a top of 1 gets no half line
        text = short_number(value)
        out.append(f'<line class="grid" x1="{LEFT}" x2="{LEFT + PLOT_W}" y1="{y:.1f}" y2="{y:.1f}"/>')
        out.append(f'<text class="axis" x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{text}</text>')
    out.append(f'<text class="axis unit" x="{LEFT}" y="{TOP - 8}">records per minute</text>')
    for hours_back in (24, 18, 12, 6, 0):
        index = MINUTES - 1 - hours_back * 60
        x = _x(index)
        moment = start + timedelta(minutes=index)
        anchor = "start" if hours_back == 24 else "end" if hours_back == 0 else "middle"
        text = "now" if hours_back == 0 else f"{_hhmm(moment)}"
        out.append(f'<line class="tick" x1="{x:.1f}" x2="{x:.1f}" y1="{TOP + PLOT_H}" y2="{TOP + PLOT_H + 4}"/>')
        out.append(f'<text class="axis" x="{x:.1f}" y="{TOP + PLOT_H + 22}" text-anchor="{anchor}">{text}</text>')
    for cls, x0, x1, text in marks:
        out.append(f'<rect class="{cls}" x="{x0:.1f}" y="{TOP}" width="{x1 - x0:.1f}" height="{PLOT_H}">'
                   f'<title>{escape(text)}</title></rect>')
    path = _step_path(main, top)
    out.append(f'<path class="area" d="{path}V{TOP + PLOT_H}H{LEFT}Z"/>')
    out.append(f'<path class="line" d="{path}"/>')
    for index, n in drops:
        x = _x(index)
        moment = start + timedelta(minutes=index)
        out.append(f'<path class="drop" d="M{x - 6:.1f},{TOP - 2} L{x + 6:.1f},{TOP - 2} L{x:.1f},{TOP + 9} Z">'
                   f'<title>{number(n)} records dropped at {_hhmm(moment)} UTC</title></path>')
    totals = f"Total: {number(total)} {main_name}"
    if dropped is not None:
        totals += f" · {number(dropped_total)} dropped"
    if gap_count:
        totals += f" · {gap_count} gap{'s' if gap_count > 1 else ''}"
    out.append(f'<text class="total" x="{LEFT}" y="{HEIGHT - 8}">{escape(totals)}</text>')
    out.append("</svg>")
    return Markup("".join(out))


# --- states and plain words ---------------------------------------------------------

@dataclass(frozen=True)
class Problem:
    what: str
    todo: str


SOURCE_PAUSES = {
    "auth_failed": Problem(
        "Atlassian refused the email and API token, so polling is paused.",
        "Create a new API token at id.atlassian.com (Security → API tokens) with the account that owns "
        "or contributes to the app, paste it with Edit, and polling resumes at once."),
    "not_found": Problem(
        "Atlassian does not know this app id or environment id, so polling is paused.",
        "Copy both ids from the Forge developer console (your app → Environments), correct them with "
        "Edit, and polling resumes at once."),
    "bad_request": Problem(
        "Atlassian refused the query Forge Drain sent, so polling is paused.",
        "Check the levels and installation-context filters with Edit, then press Verify now."),
}


def source_state(row: dict) -> tuple[str, str]:
    """(css class, words) for a source: ok, paused (reason), over capacity, backfilling (progress), retrying."""
    if row["state"] == "paused":
        reason = {"auth_failed": "credentials refused", "not_found": "app not found",
                  "bad_request": "query refused"}.get(row["pause_reason"] or "", row["pause_reason"] or "paused")
        return "paused", f"paused: {reason}"
    if row["over_capacity_since"] is not None:
        return "over-capacity", "over capacity"
    if row["backfill_from"] is not None and row["backfill_until"] is not None \
            and row["checkpoint"] < row["backfill_until"]:
        total = (row["backfill_until"] - row["backfill_from"]).total_seconds()
        done = (row["checkpoint"] - row["backfill_from"]).total_seconds()
        percent = int(100 * min(1.0, max(0.0, done / total))) if total > 0 else 100
        return "backfilling", f"backfilling ({percent}%)"
    if row["consecutive_failures"]:
        return "retrying", "retrying"
    return "ok", "ok"


def source_problem(row: dict) -> Problem | None:
    if row["state"] == "paused":
        return SOURCE_PAUSES.get(row["pause_reason"] or "", Problem(
            f"Polling is paused ({row['last_error'] or row['pause_reason'] or 'no reason recorded'}).",
            "Press Verify now; if Atlassian accepts the credentials, polling resumes."))
    error = row["last_error"]
    if not error or not row["consecutive_failures"]:
        return None
    lowered = error.lower()
    if "429" in lowered or "rate" in lowered:
        return Problem("Atlassian is rate limiting this app's log requests.",
                       "Nothing to do: polling resumes by itself when Atlassian allows it, and no logs are "
                       "lost meanwhile. Other tools reading this app's logs share its 30 calls a minute.")
    if "unreachable" in lowered or "did not answer" in lowered or "http 5" in lowered:
        return Problem("Atlassian's App logs API could not be reached on the last try.",
                       "Nothing to do: Forge Drain retries with back-off and catches up without losing logs.")
    return Problem(f"The last poll failed: {error}.",
                   "Forge Drain retries by itself; if this stays, press Verify now.")


def _per_minute(value: float) -> str:
    return f"{value:,.1f}" if value < 10 else number(round(value))


def over_capacity(row: dict) -> Problem | None:
    """What over capacity means for this source, with its figures, and what the owner can do."""
    if row["state"] == "paused" or row["over_capacity_since"] is None:
        return None
    density, capacity, page = row["density_per_minute"], row["capacity_per_minute"], row["page_records"]
    logs = (f"This app logs about {_per_minute(density)} records a minute" if density is not None
            else "This app logs more records than Forge Drain can export")
    if capacity is not None:
        share = f" ({number(page)} records a call)" if page else ""
        limit = (f", but Atlassian's App logs API lets Forge Drain export at most {_per_minute(capacity)} a "
                 f"minute for it: its share of the 30 calls a minute Atlassian allows per app{share}.")
    else:
        limit = ": Atlassian's App logs API allows 30 calls a minute per app, and that is not enough."
    what = (logs + limit + " So its logs fall further behind the longer this lasts, and anything that "
            "falls past 14 days old (Atlassian keeps no more) is lost, recorded as a gap. "
            f"Over capacity since {row['over_capacity_since'].astimezone(timezone.utc):%Y-%m-%d %H:%M} UTC.")
    todo = ("Ask for fewer records: keep only the levels you need (Edit → Levels, e.g. WARN and ERROR), "
            "limit the source to the installations that matter (Edit → Installation contexts), or log less "
            "in the app. Meanwhile Forge Drain keeps polling as fast as the budget allows.")
    return Problem(what, todo)


def unreadable(row: dict) -> dict | None:
    """Records Atlassian returned that could not be decoded: the count, the latest sample, and what it means."""
    count = row["unreadable"] or 0
    if count <= 0:
        return None
    noun = "record" if count == 1 else "records"
    return {
        "what": (f"{number(count)} {noun} could not be read: the App logs API returned "
                 f"{'it' if count == 1 else 'them'} in a form Forge Drain cannot decode, so "
                 f"{'it was' if count == 1 else 'they were'} skipped and the rest of "
                 f"{'its' if count == 1 else 'their'} window was delivered."),
        "todo": ("Nothing is needed unless the count keeps growing; then look at how the app logs what the "
                 "sample shows (unusual characters, huge numbers) and log it as plain text."),
        "sample": row["unreadable_sample"],
        "at": row["unreadable_at"],
    }


def drain_state(row: dict) -> tuple[str, str]:
    """(css class, words) for a drain, from the same row the card shows: disabled, waiting for its URL,
    failing (the last attempt failed), no delivery yet (never delivered anything), or delivering."""
    if not row["enabled"]:
        return "disabled", "disabled"
    if row.get("secret_lost_at"):
        return "failing", "waiting for its URL"
    if row["consecutive_failures"]:
        n = row["consecutive_failures"]
        return "failing", "failing: the last attempt failed" if n == 1 else f"failing: the last {number(n)} attempts failed"
    if not row["delivered"] and row["last_delivery_at"] is None:
        return "new", "no delivery yet"
    return "ok", "delivering"


def delivery_words(error: str) -> str:
    """A delivery or test error in an owner's words: the guard's "cannot resolve 'x' (gaierror)" says
    nothing was refused, only that the host name does not exist."""
    found = re.search(r"cannot resolve '([^']*)'", error)
    if found:
        return f"no such host name: {found.group(1)} is not known to DNS (check the URL for a typo)"
    if error.startswith("destination refused: "):
        return error[len("destination refused: "):]
    return error


def drain_problem(row: dict) -> Problem | None:
    if row.get("secret_lost_at"):
        return Problem("This drain's URL or headers can no longer be read: the encryption key they were saved "
                       "with has been removed.",
                       "Edit the drain and enter its URL (and headers) again. Records wait meanwhile, within the "
                       "plan's backlog.")
    if not row["enabled"]:
        return Problem("This drain is disabled: nothing is sent to it.",
                       "Records stored meanwhile wait within the plan's backlog; press Enable to resume "
                       "deliveries.")
    error = row["last_error"]
    if not error:
        return None
    error = delivery_words(error)
    if row["consecutive_failures"]:
        return Problem(f"Deliveries are failing: {error}.",
                       "Forge Drain keeps the records and tries again, waiting longer after each failure. Check "
                       "the URL (Edit) and that the receiver is up, then press Send test record.")
    if row["dropped"]:
        return Problem(f"Some records were dropped: {error}.",
                       "The receiver refused them or they aged past the plan's backlog. Check the receiver's "
                       "limits; a larger plan keeps records longer.")
    return Problem(f"Last problem: {error}.", "Deliveries are working again; nothing to do.")


@dataclass(frozen=True)
class Verdict:
    """The answer to "are my logs flowing?", from the cards' own states: ``kind`` is idle, warn or ok;
    ``needs`` lists (anchor, name, why) of each source or drain needing a look."""

    kind: str
    text: str
    needs: list


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def verdict(source_cards: list[dict], drain_cards: list[dict]) -> Verdict:
    needs = []
    for card in source_cards:
        if card["problem"] is not None or card.get("capacity"):
            why = card["problem"].what if card["problem"] is not None else "over capacity"
            needs.append((f"source-{card['id']}", f"Source {card['name']}", why))
    for card in drain_cards:
        if card["state_class"] == "failing":
            why = card["problem"].what if card["problem"] is not None else card["state"]
            needs.append((f"drain-{card['id']}", f"Drain {card['name']}", why))
    if not source_cards:
        return Verdict("idle", "Not yet: add your Forge app below (app id, environment id, an Atlassian API "
                               "token) and Forge Drain starts pulling its logs.", needs)
    if needs:
        return Verdict("warn", f"{_plural(len(needs), 'thing')} need{'s' if len(needs) == 1 else ''} a look:",
                       needs)
    polling = sum(1 for c in source_cards if c["state_class"] in ("ok", "backfilling"))
    by_state = {k: sum(1 for c in drain_cards if c["state_class"] == k) for k in ("ok", "new", "disabled")}
    parts = [f"{_plural(polling, 'source')} polling"]
    if by_state["ok"]:
        parts.append(f"{_plural(by_state['ok'], 'drain')} delivering")
    if by_state["new"]:
        parts.append(f"{_plural(by_state['new'], 'drain')} with no delivery yet")
    if by_state["disabled"]:
        parts.append(f"{_plural(by_state['disabled'], 'drain')} disabled")
    if not by_state["ok"]:
        return Verdict("idle", "Not yet delivering: " + ", ".join(parts) + ". Records reach a drain once one "
                       "is stored for it; press Send test record to check a drain now.", needs)
    return Verdict("ok", "Yes: " + ", ".join(parts) + ".", needs)


def rules_summary(stored: dict | None, source_names: dict) -> list[str]:
    """A drain's rules in words, one line each (empty: it receives every record as logged)."""
    stored = stored or {}
    lines = []
    if stored.get("origins"):
        names = {"forge": "Forge sources", "heroku": "the Heroku app's own logs", "otlp": "the app's OTLP logs"}
        lines.append("Only from " + " and ".join(names.get(o, o) for o in stored["origins"]))
    if stored.get("sources"):
        lines.append("Forge sources: " + ", ".join(source_names.get(s, s[:8]) for s in stored["sources"]))
    if stored.get("heroku_apps"):
        lines.append("Heroku APP-NAMEs: " + ", ".join(stored["heroku_apps"]))
    if stored.get("processes"):
        lines.append("Process types: " + ", ".join(stored["processes"]))
    if stored.get("min_severity"):
        lines.append(f"Severity {stored['min_severity']} and above")
    if stored.get("levels"):
        lines.append("Levels: " + ", ".join(stored["levels"]))
    if stored.get("services"):
        lines.append("Services: " + ", ".join(stored["services"]))
    redact = stored.get("redact") or {}
    if redact.get("detectors"):
        lines.append("Redacts: " + ", ".join(DETECTOR_WORDS.get(d, d) for d in redact["detectors"]))
    if redact.get("patterns"):
        lines.append("Your patterns: " + ", ".join(p["name"] for p in redact["patterns"]))
    if redact.get("drop_attributes"):
        lines.append("Drops attributes: " + ", ".join(redact["drop_attributes"]))
    return lines


DETECTOR_WORDS = {"bearer": "bearer tokens", "jwt": "JWTs", "atlassian_token": "Atlassian API tokens",
                  "email": "email addresses", "card": "card numbers", "ipv6": "IPv6 addresses",
                  "ipv4": "IPv4 addresses"}


AUDIT_WORDS = {
    "sso.login": "signed in", "source.created": "added source", "source.updated": "edited source",
    "source.deleted": "deleted source", "source.verified": "verified source",
    "source.backfill_started": "started a backfill of source", "drain.created": "added drain",
    "drain.updated": "edited drain", "drain.deleted": "deleted drain", "drain.tested": "sent a test record to drain",
    "drain.token_rotated": "rotated the token of drain", "resource.provisioned": "provisioned the add-on",
    "resource.plan_changed": "changed the plan", "resource.token_rotated": "rotated FORGEDRAIN_TOKEN",
    "resource.token_grace_ended": "ended the previous FORGEDRAIN_TOKEN's grace period",
}


OUTCOME_WORDS = {"delivered": "delivered", "retry": "not delivered (a delivery would be tried again)",
                 "drop": "not delivered"}


def audit_text(entry: dict) -> str:
    """What an audit entry says, in words (detail holds ids and field names, never secrets)."""
    detail = entry["detail"] or {}
    words = AUDIT_WORDS.get(entry["action"], entry["action"])
    if "app_id" in detail:
        words += f" {detail['app_id']} / {detail.get('environment_id', '')}"
    elif "kind" in detail and entry["action"].startswith("drain."):
        words += f" {detail['kind']} {str(detail.get('drain_id', ''))[:8]}"
    if entry["action"] == "drain.updated" and detail.get("changed") == ["enabled"] and "enabled" in detail:
        words = words.replace("edited drain", "enabled drain" if detail["enabled"] else "disabled drain")
    elif detail.get("changed"):
        words += f" ({', '.join(detail['changed'])})"
    if "ok" in detail:
        words += ": accepted" if detail["ok"] else ": refused"
    if "outcome" in detail:
        words += f": {OUTCOME_WORDS.get(detail['outcome'], detail['outcome'])}" + (f" (HTTP {detail['status']})" if detail.get("status") else "")
    if "from" in detail:
        words += f" from {detail['from']}"
    if "plan" in detail and isinstance(detail["plan"], str):
        words += f" to {detail['plan']}"
    return words
