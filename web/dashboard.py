"""The owner's dashboard, reached through SSO and bound to one resource (SPEC §7, §8).

One page shows whether the logs are flowing: every source (state, last poll,
lag, records in the last 24 h, last error in plain words with what to do,
over capacity with its figures, records that could not be read) and
every drain (kind, token, state, backlog, delivered/retried/dropped, last
error), a chart of records per minute for each, and the audit log. Forms add,
edit, verify, back-fill and delete sources; add, edit, test, rotate, enable,
disable and delete drains. Every change goes through :mod:`broker.operations`
(the same code as the resource API), with the signed-in user's email as actor.

Forms are POST + redirect (303) with the result shown at the card or section
acted on (``role=status``, ``alert`` for a failure; a failed test record shows in
the card's state too); a refused form is rendered again (422) with every
problem at once, in words, next to its field and in a summary above it, focus
on the first (``autofocus``: no script), and what was typed, secrets excepted.
A form's address opened with GET (a reload, a bookmark) goes back to the form.
Every POST carries the session's CSRF token (400 without it); the session is
bound to one resource (403 for any other) and lasts 8 hours from sign-in
(``PERMANENT_SESSION_LIFETIME``), however often it is used. Nothing needs
JavaScript.
"""

from __future__ import annotations

import uuid

import orjson
from flask import (Blueprint, abort, current_app, flash, g, get_flashed_messages, make_response, redirect,
                   render_template, request, session, url_for)
from werkzeug.exceptions import NotFound as HTTPNotFound

from broker import activity, alerts, audit, drains, operations, outbox, plans, resources, rules, sources, tokens
from broker.forge import LEVELS
from broker.validation import InputError
from broker.vault import VaultError
from web import dashboard_forms as forms
from web import dashboard_view as view
from web import ingest_otlp, services
from web.errors import retry_after_header
from web.sso import within_session

bp = Blueprint("dashboard", __name__, url_prefix="/dashboard")
DETECTOR_OPTIONS = [(name, view.DETECTOR_WORDS.get(name, name)) for name in rules.DETECTORS]


def signed_in_resource(resource_id: uuid.UUID) -> None:
    """403 unless this browser signed in, through SSO, to exactly this resource."""
    if session.get("resource_id") != str(resource_id):
        abort(make_response(render_template(
            "sso_denied.html", reason="you are not signed in to this add-on"), 403))


@bp.before_request
def _guard():
    """Every dashboard request passes here: signed in to this resource, the resource still there
    (kept in ``g.resource`` for the views), and a form's CSRF token."""
    resource_id = (request.view_args or {}).get("resource_id")
    if resource_id is None:
        abort(404)
    if session and not within_session(session.get("signed_in_at")):
        session.clear()  # then refused as never signed in: SSO starts a new one
    signed_in_resource(resource_id)
    with services().db.connection() as conn:
        row = resources.get_as_of_now(conn, resource_id)
    if row is None or row["state"] == "deprovisioned":
        # Nothing of a removed add-on is shown again, and its session ends with it: a page is simply
        # gone; a form left open (even one refused for what was typed, which would show the page again)
        # gets the refusal operations gives a change of it, 410, and _frozen ends the session.
        if request.method in ("GET", "HEAD"):
            session.clear()
            abort(404)
        raise operations.Gone(operations.GONE_MESSAGE)
    g.resource = row
    if request.method == "POST" and not forms.csrf_ok(request.form):
        abort(make_response(render_template(
            "dashboard_error.html", title="Form expired",
            message="This form was not sent from your current Forge Drain page (its security token is "
                    "missing or out of date). Nothing was changed. Open the dashboard again with the link below and try again."),
            400))


@bp.errorhandler(operations.NotFound)
def _missing(exc: operations.NotFound):
    """A source or drain gone (or never there): the same 404 as any unknown page."""
    return current_app.handle_http_exception(HTTPNotFound())


@bp.errorhandler(operations.Frozen)
def _frozen(exc: operations.Frozen):
    """The add-on was removed (or failed) while this page was open: nothing changed (410/409)."""
    if isinstance(exc, operations.Gone):
        session.clear()
    return make_response(render_template("dashboard_error.html", title="Nothing was changed",
                                         message=exc.message), exc.http_status)


@bp.errorhandler(operations.Busy)
def _busy(exc: operations.Busy):
    """Too many tests or verifications of this add-on right now: nothing was sent (429)."""
    return make_response(render_template("dashboard_error.html", title="Try again shortly", message=exc.message),
                         429, retry_after_header(exc.refusal.retry_after) or {})


@bp.errorhandler(InputError)
@bp.errorhandler(operations.OperationError)
def _not_done(exc: InputError | operations.OperationError):
    """Any other refusal of a button (a form that is not re-rendered): its message, back on the page
    at the source or drain it was about. The handlers above take the more specific refusals."""
    args = request.view_args or {}
    anchor = (f"drain-{args['drain_id']}" if "drain_id" in args
              else f"source-{args['source_id']}" if "source_id" in args else "")
    _result("error", anchor, forms.owner_words(getattr(exc, "field", ""), exc.message))
    return _back(args["resource_id"], anchor)


@bp.app_context_processor
def _template_helpers():
    return {"csrf_token": forms.csrf_token}


def _actor() -> str:
    """Who the audit log names for a change: the email the SSO token signed, else ``sso:<partner>``."""
    return session.get("actor") or session.get("user") or "heroku user"


def _connect():
    return services().db.connection()


def _result(kind: str, anchor: str, message: str, flag: str = "") -> None:
    """Flash the result of an action, to be shown at ``anchor`` (the card or section acted on) rather
    than at the top of the page; ``flag`` "test" marks a failed test record, which the card's state
    then shows too."""
    flash(message, f"{kind}|{anchor}|{flag}")


def _results() -> tuple[list, dict]:
    """This request's flashed results: (those for the top of the page, those by anchor)."""
    top, placed = [], {}
    for category, message in get_flashed_messages(with_categories=True):
        kind, _, rest = category.partition("|")
        anchor, _, flag = rest.partition("|")
        entry = {"kind": kind, "message": message, "flag": flag}
        if anchor:
            placed.setdefault(anchor, []).append(entry)
        else:
            top.append(entry)
    return top, placed


def _back(resource_id, anchor: str = ""):
    return redirect(url_for("dashboard.show", resource_id=resource_id) + (f"#{anchor}" if anchor else ""), 303)


def _page(resource_id: uuid.UUID, *, status: int = 200, forms_state: dict | None = None):
    svc = services()
    row = g.resource
    with svc.db.connection() as conn:
        source_rows = sources.list_for(conn, resource_id)
        drain_rows = drains.list_for(conn, resource_id)
        backlogs = outbox.backlogs(conn, resource_id)
        series = activity.series(conn, resource_id)
        gaps = {s["id"]: sources.gaps(conn, s["id"]) for s in source_rows}
        entries = audit.recent(conn, resource_id, 50)
        open_alerts = alerts.open_for(conn, resource_id)
    now = row["now"]
    top, placed = _results()
    found = view.collect(series, now)
    source_names = {str(s["id"]): s["service_name"] or s["app_id"] for s in source_rows}
    source_cards = []
    for s in source_rows:
        sid = str(s["id"])
        state_class, state_words = view.source_state(s)
        stored = found.values(sid, "stored")
        source_cards.append({
            "row": s, "id": sid, "name": source_names[sid], "state_class": state_class, "state": state_words,
            "problem": view.source_problem(s), "capacity": view.over_capacity(s),
            "unreadable": view.unreadable(s), "results": placed.get(f"source-{sid}", []),
            "lag": view.duration((now - s["checkpoint"]).total_seconds()) if s["checkpoint"] else "—",
            "records_24h": view.number(sum(stored)),
            "token": sources.mask_secret(svc.vault.decrypt(s["api_token_enc"])) if s["api_token_enc"] else None,
            "chart": view.chart(f"chart-source-{sid[:8]}", f"Source {s['service_name'] or s['app_id']}",
                                found.start, stored, "stored", gaps=gaps[s["id"]]),
            "gaps": gaps[s["id"]],
        })
    drain_cards = []
    for d in drain_rows:
        did = str(d["id"])
        state_class, state_words = view.drain_state(d)
        results = placed.get(f"drain-{did}", [])
        if d["enabled"] and any(r["flag"] == "test" for r in results):
            # The test record just failed: the card says so, whatever the last delivery did.
            state_class, state_words = "failing", "test record not delivered"
        try:
            url = svc.vault.decrypt(d["url_enc"]) if d["url_enc"] and d["kind"] != "heroku" else None
        except VaultError:  # shown as a problem of the drain (view.drain_problem)
            url = None
        drain_cards.append({
            "row": d, "id": did, "name": d["name"] or f"{d['kind']} drain", "state_class": state_class,
            "state": state_words, "results": results,
            "problem": view.drain_problem(d), "backlog": view.number(backlogs.get(d["id"], outbox.Backlog()).records),
            "url": drains.masked_url(url) if url else None,
            "rules": view.rules_summary(d["rules"], source_names),
            "chart": view.chart(f"chart-drain-{did[:8]}", f"Drain {d['name'] or d['kind']}", found.start,
                                found.values(did, "delivered"), "delivered",
                                dropped=found.values(did, "dropped")),
        })
    plan = plans.get(row["plan"])
    owned_drains = sum(1 for d in drain_rows if d["kind"] != "heroku")
    state = forms_state or {}
    body = render_template(
        "dashboard.html", resource=row, plan=plan, drain_token=tokens.mask(row["log_drain_token"]),
        source_cards=source_cards, drain_cards=drain_cards, verdict=view.verdict(source_cards, drain_cards),
        owned_drains=owned_drains, sources_full=plan is not None and len(source_rows) >= plan.max_sources,
        drains_full=plan is not None and owned_drains >= plan.max_drains,
        audit_entries=[{**e, "text": view.audit_text(e)} for e in entries], levels=LEVELS,
        add_source=state.get("add_source", {"values": {}, "errors": {}}),
        add_drain=state.get("add_drain", {"values": {"kind": "logplex", "gzip": True,
                                                     **forms.rules_values(None)}, "errors": {}}),
        rule_sources=source_names, rule_levels=rules.LEVELS, detectors=DETECTOR_OPTIONS,
        backfill=state.get("backfill", {}), user=session.get("user"), app_name=session.get("app"),
        top_results=top, section_results=placed, now=now, open_alerts=open_alerts,
        otlp=ingest_otlp.guide(svc.settings.public_url))
    return make_response(body, status)


@bp.get("/<uuid:resource_id>")
def show(resource_id: uuid.UUID):
    return _page(resource_id)


def _refusal_field(exc: operations.Refused) -> str:
    return {"auth_failed": "api_token", "not_found": "app_id"}.get(exc.refusal.pause_reason or "", "form")


def _form_error(exc: InputError | operations.OperationError) -> dict:
    """A refusal of a form as {field: message in words}."""
    if isinstance(exc, InputError):
        field = exc.field if exc.field in forms.LABELS else "form"
        return {field: forms.owner_words(exc.field, exc.message)}
    return {_refusal_field(exc) if isinstance(exc, operations.Refused) else "form": exc.message}


# --- sources ------------------------------------------------------------------------

@bp.post("/<uuid:resource_id>/sources")
def add_source(resource_id: uuid.UUID):
    svc = services()
    errors = forms.source_missing(request.form, editing=False)
    row = None
    if not errors:
        try:
            row = operations.create_source(_connect, svc.vault, svc.verifier(), resource_id,
                                           forms.source_payload(request.form, partial=False), actor=_actor(),
                                           calls=svc.owner_calls)
        except operations.Frozen:
            raise  # the 410/409 page (_frozen), not a form error
        except (InputError, operations.OperationError) as exc:
            errors = _form_error(exc)
    if errors:
        state = {"values": forms.source_echo(request.form), "errors": errors}
        return _page(resource_id, status=422, forms_state={"add_source": state})
    _result("ok", f"source-{row['id']}", f"Source {row['app_id']} added: Atlassian accepted the credentials. "
                                         "The first poll starts within a minute.")
    return _back(resource_id, f"source-{row['id']}")


def _source_form(resource_id, row, values, errors, status=200):
    return make_response(render_template(
        "source_edit.html", resource_id=resource_id, source=row, values=values, errors=errors, levels=LEVELS,
        token=sources.mask_secret(services().vault.decrypt(row["api_token_enc"])) if row["api_token_enc"] else None,
        user=session.get("user"), app_name=session.get("app")), status)


def _source_row(resource_id, source_id):
    with services().db.connection() as conn:
        row = sources.get(conn, resource_id, source_id)
    if row is None:
        abort(404)
    return row


@bp.get("/<uuid:resource_id>/sources/<uuid:source_id>/edit")
def edit_source(resource_id: uuid.UUID, source_id: uuid.UUID):
    row = _source_row(resource_id, source_id)
    values = {f: row[f] for f in ("app_id", "environment_id", "email", "levels", "service_name",
                                  "environment_label", "include_arguments")}
    values["installation_contexts"] = "\n".join(row["installation_contexts"])
    return _source_form(resource_id, row, values, {})


@bp.post("/<uuid:resource_id>/sources/<uuid:source_id>")
def update_source(resource_id: uuid.UUID, source_id: uuid.UUID):
    svc = services()
    errors = forms.source_missing(request.form, editing=True)
    if not errors:
        try:
            row, changed = operations.update_source(_connect, svc.vault, svc.verifier(), resource_id, source_id,
                                                    forms.source_payload(request.form, partial=True),
                                                    actor=_actor(), calls=svc.owner_calls)
        except (operations.NotFound, operations.Frozen):
            raise  # a 404 (_missing) or 410/409 (_frozen), not a form error
        except (InputError, operations.OperationError) as exc:
            errors = _form_error(exc)
    if errors:
        return _source_form(resource_id, _source_row(resource_id, source_id), forms.source_echo(request.form),
                            errors, 422)
    if changed:
        names = ", ".join(forms.LABELS.get(f, f) for f in changed)
        message = (f"Source {row['app_id']} saved ({names} changed)"
                   + ("; Atlassian accepted the credentials." if any(f in sources.VERIFIED_FIELDS for f in changed)
                      else "."))
    else:
        message = "Nothing changed."
    _result("ok", f"source-{row['id']}", message)
    return _back(resource_id, f"source-{row['id']}")


@bp.post("/<uuid:resource_id>/sources/<uuid:source_id>/verify")
def verify_source(resource_id: uuid.UUID, source_id: uuid.UUID):
    svc = services()
    anchor = f"source-{source_id}"
    try:
        row, refusal = operations.verify_source(_connect, svc.vault, svc.verifier(), resource_id, source_id,
                                                actor=_actor(), calls=svc.owner_calls)
    except operations.Refused as exc:
        _result("error", anchor, f"Could not verify now: {exc.message}")
        return _back(resource_id, anchor)
    if refusal is None:
        _result("ok", anchor, f"Atlassian accepted the credentials of {row['app_id']}; polling is on.")
    else:
        _result("error", anchor, f"Verification refused: {refusal.message}. Polling is paused until this is fixed.")
    return _back(resource_id, anchor)


def _already_stored(resource_id, source_id, start) -> tuple[int, bool]:
    """Records of the source stored since ``start`` (so sent to the drains already), as far as the
    activity kept (48 h) reaches; and whether ``start`` is older than that (the count is then a floor)."""
    with services().db.connection() as conn:
        rows = activity.series(conn, resource_id, hours=activity.KEEP_HOURS)
        oldest = conn.execute("SELECT now() - make_interval(hours => %s) AS t", (activity.KEEP_HOURS,)).fetchone()["t"]
    count = sum(r["records"] for r in rows
                if str(r["subject"]) == str(source_id) and r["kind"] == "stored" and r["minute"] >= start)
    return count, start < oldest


@bp.post("/<uuid:resource_id>/sources/<uuid:source_id>/backfill")
def backfill_source(resource_id: uuid.UUID, source_id: uuid.UUID):
    typed = (request.form.get("from") or "").strip()
    value = typed
    if value and "T" in value and not (value.endswith(("Z", "z")) or "+" in value[10:] or "-" in value[10:]):
        value += "+00:00"  # a datetime-local field carries no zone: the label says UTC
    try:
        if not typed:
            raise InputError("from", "Enter the date and time (UTC) to backfill from")
        row = operations.backfill_source(_connect, resource_id, source_id, value, actor=_actor())
    except InputError as exc:
        return _page(resource_id, status=422, forms_state={
            "backfill": {"id": str(source_id), "value": typed, "error": forms.owner_words(exc.field, exc.message)}})
    start = row["backfill_from"]
    count, floor = _already_stored(resource_id, source_id, start)
    again = (f"{'at least ' if floor else ''}{view.number(count)} record{'' if count == 1 else 's'} stored since "
             "then will be sent to your drains again, and receivers will see them a second time"
             if count else "no record stored since then has reached your drains yet, so nothing is sent twice")
    _result("ok", f"source-{source_id}",
            f"Backfill started from {view.when(start)}: Forge Drain fetches every record since then again; "
            f"{again}. Records arrive as the source catches up.")
    return _back(resource_id, f"source-{source_id}")


@bp.post("/<uuid:resource_id>/sources/<uuid:source_id>/delete")
def delete_source(resource_id: uuid.UUID, source_id: uuid.UUID):
    row = operations.delete_source(_connect, resource_id, source_id, actor=_actor())
    _result("ok", "sources", f"Source {row['app_id']} deleted.")
    return _back(resource_id, "sources")


# --- drains ---------------------------------------------------------------------------

def _known_sources(resource_id) -> list:
    with services().db.connection() as conn:
        return [s["id"] for s in sources.list_for(conn, resource_id)]


def _drain_errors(resource_id, form, kind: str, *, editing: bool, current: dict | None = None) -> tuple[dict, dict]:
    """(payload, every problem of the form found before saving: fields left empty, rules refused)."""
    errors = forms.drain_missing(form, kind, editing=editing)
    payload = forms.drain_payload(form, kind, editing=editing)
    rule_form = forms.RulesForm(form)
    errors.update(rule_form.errors)
    try:
        payload["rules"] = rules.validate(rule_form.payload, sources=_known_sources(resource_id))
    except rules.RulesInvalid as exc:
        for field, message in rule_form.problems(exc).items():
            errors[field] = f"{errors[field]}; {message}" if field in errors else message
    if errors and "url" not in errors:
        try:  # what else the drain's own checks would say, so that all problems show at once
            drains.validate({k: v for k, v in payload.items() if k != "rules"},
                            allow_private=services().settings.allow_private_drains, current=current)
        except InputError as exc:
            errors.update(_form_error(exc))
    if not editing and not payload.get("rules"):
        payload.pop("rules", None)
    return payload, errors


@bp.post("/<uuid:resource_id>/drains")
def add_drain(resource_id: uuid.UUID):
    svc = services()
    kind = request.form.get("kind") or ""
    payload, errors = _drain_errors(resource_id, request.form, kind, editing=False)
    if not errors:
        try:
            row = operations.create_drain(_connect, svc.vault, resource_id, payload, actor=_actor(),
                                          allow_private=svc.settings.allow_private_drains)
        except operations.Frozen:
            raise  # the 410/409 page (_frozen), not a form error
        except (InputError, operations.OperationError) as exc:
            errors = _form_error(exc)
    if errors:
        state = {"values": {**forms.drain_echo(request.form), **forms.rules_echo(request.form)}, "errors": errors}
        return _page(resource_id, status=422, forms_state={"add_drain": state})
    _result("ok", f"drain-{row['id']}", f"Drain added ({row['kind']}, token {row['token']}). It receives the "
                                        "records stored from now on; press Send test record to check it.")
    return _back(resource_id, f"drain-{row['id']}")


def _drain_row(resource_id, drain_id):
    with services().db.connection() as conn:
        row = drains.get(conn, resource_id, drain_id)
    if row is None:
        abort(404)
    return row


def _drain_form(resource_id, row, values, errors, status=200):
    svc = services()
    url, header_names = None, []
    try:
        url = svc.vault.decrypt(row["url_enc"]) if row["url_enc"] and row["kind"] != "heroku" else None
        if row["headers_enc"]:
            header_names = sorted(orjson.loads(svc.vault.decrypt(row["headers_enc"])))
    except VaultError:  # the form asks for them again (view.drain_problem says why)
        pass
    with svc.db.connection() as conn:
        source_names = {str(s["id"]): s["service_name"] or s["app_id"] for s in sources.list_for(conn, resource_id)}
    return make_response(render_template(
        "drain_edit.html", resource_id=resource_id, drain=row, values=values, errors=errors,
        masked_url=drains.masked_url(url) if url else None, header_names=header_names,
        rule_sources=source_names, rule_levels=rules.LEVELS, detectors=DETECTOR_OPTIONS,
        user=session.get("user"), app_name=session.get("app")), status)


@bp.get("/<uuid:resource_id>/drains/<uuid:drain_id>/edit")
def edit_drain(resource_id: uuid.UUID, drain_id: uuid.UUID):
    row = _drain_row(resource_id, drain_id)
    settings = row["settings"] or {}
    values = {"name": row["name"] or "", "url": "", "encoding": settings.get("encoding", "protobuf"),
              "gzip": settings.get("gzip", True), "headers": "", "sd_id": settings.get("sd_id") or "",
              **forms.rules_values(row["rules"])}
    return _drain_form(resource_id, row, values, {})


@bp.post("/<uuid:resource_id>/drains/<uuid:drain_id>")
def update_drain(resource_id: uuid.UUID, drain_id: uuid.UUID):
    svc = services()
    row = _drain_row(resource_id, drain_id)
    payload, errors = _drain_errors(resource_id, request.form, row["kind"], editing=True, current=row)
    if not errors:
        try:
            updated, changed = operations.update_drain(
                _connect, svc.vault, resource_id, drain_id, payload,
                actor=_actor(), allow_private=svc.settings.allow_private_drains)
        except (operations.NotFound, operations.Frozen):
            raise  # a 404 (_missing) or 410/409 (_frozen), not a form error
        except (InputError, operations.OperationError) as exc:
            errors = _form_error(exc)
    if errors:
        return _drain_form(resource_id, row, {**forms.drain_echo(request.form), **forms.rules_echo(request.form)},
                           errors, 422)
    names = ", ".join(forms.LABELS.get(f, f) for f in changed)
    _result("ok", f"drain-{updated['id']}", f"Drain saved ({names} changed)." if changed else "Nothing changed.")
    return _back(resource_id, f"drain-{updated['id']}")


@bp.post("/<uuid:resource_id>/drains/<uuid:drain_id>/test")
def test_drain(resource_id: uuid.UUID, drain_id: uuid.UUID):
    svc = services()
    outcome = operations.test_drain(_connect, svc.wire(), svc.vault, resource_id, drain_id, actor=_actor(),
                                    calls=svc.owner_calls)
    status = f" (HTTP {outcome.status})" if outcome.status else ""
    anchor = f"drain-{drain_id}"
    if outcome.delivered:
        _result("ok", anchor, f"Test record delivered: the receiver accepted it{status}. Look for "
                              f"“{outcome.record['invocation_id']}” at the destination.")
    else:
        message = view.delivery_words(outcome.message)
        if message == f"HTTP {outcome.status}":
            message = "the receiver answered with an error"
        if message.startswith("no such host name"):
            advice = "Correct the URL with Edit."
        elif outcome.retryable:
            advice = "Forge Drain would try again later: check that the receiver is up."
        else:
            advice = "Check the URL and the receiver's credentials with Edit."
        _result("error", anchor, f"Test record not delivered{status}: {message}. {advice}", "test")
    return _back(resource_id, anchor)


@bp.post("/<uuid:resource_id>/drains/<uuid:drain_id>/token")
def rotate_drain_token(resource_id: uuid.UUID, drain_id: uuid.UUID):
    row = operations.rotate_drain_token(_connect, resource_id, drain_id, actor=_actor())
    _result("ok", f"drain-{drain_id}", f"New drain token {row['token']}: update your receiver if it checks the token.")
    return _back(resource_id, f"drain-{drain_id}")


@bp.post("/<uuid:resource_id>/drains/<uuid:drain_id>/enabled")
def set_drain_enabled(resource_id: uuid.UUID, drain_id: uuid.UUID):
    svc = services()
    enabled = request.form.get("enabled") == "true"
    operations.set_drain_enabled(_connect, svc.vault, resource_id, drain_id, enabled, actor=_actor(),
                                 allow_private=svc.settings.allow_private_drains)
    _result("ok", f"drain-{drain_id}", "Drain enabled: deliveries resume." if enabled
            else "Drain disabled: nothing is sent to it; records wait for it within the plan's backlog.")
    return _back(resource_id, f"drain-{drain_id}")


@bp.post("/<uuid:resource_id>/drains/<uuid:drain_id>/delete")
def delete_drain(resource_id: uuid.UUID, drain_id: uuid.UUID):
    row = operations.delete_drain(_connect, resource_id, drain_id, actor=_actor())
    _result("ok", "drains", f"Drain {row['name'] or row['kind']} deleted.")
    return _back(resource_id, "drains")


# --- an address a form was sent to, opened or reloaded: back where the form is -----------------

def _where_the_form_is(resource_id: uuid.UUID, source_id: uuid.UUID | None = None,
                       drain_id: uuid.UUID | None = None):
    """A form's address typed, bookmarked or reloaded (it takes only POST): the page the form is on,
    never a JSON 405."""
    if drain_id is not None:
        return redirect(url_for("dashboard.edit_drain", resource_id=resource_id, drain_id=drain_id), 303)
    if source_id is not None:
        return redirect(url_for("dashboard.edit_source", resource_id=resource_id, source_id=source_id), 303)
    return _back(resource_id, "add-drain" if request.path.endswith("/drains") else "add-source")


for _rule in ("/<uuid:resource_id>/sources", "/<uuid:resource_id>/drains",
              "/<uuid:resource_id>/sources/<uuid:source_id>", "/<uuid:resource_id>/drains/<uuid:drain_id>",
              *(f"/<uuid:resource_id>/sources/<uuid:source_id>/{a}" for a in ("verify", "backfill", "delete")),
              *(f"/<uuid:resource_id>/drains/<uuid:drain_id>/{a}" for a in ("test", "token", "enabled", "delete"))):
    bp.add_url_rule(_rule, "where_the_form_is", _where_the_form_is, methods=["GET"])
