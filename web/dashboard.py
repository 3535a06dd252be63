"""The owner's dashboard, reached through SSO and bound to one resource (SPEC §7, §8).

One page shows whether the logs are flowing: every source (state, last poll,
lag, records in the last 24 h, last error in plain words with what to do,
over capacity with its figures, records that could not be read) and
every drain (kind, token, state, backlog, delivered/retried/dropped, last
error), a chart of records per minute for each, and the audit log. Forms add,
edit, verify, back-fill and delete sources; add, edit, test, rotate, enable,
disable and delete drains. Every change goes through :mod:`broker.operations`
(the same code as the resource API), with the signed-in user's email as actor.

Forms are POST + redirect with flash messages; a refused form is rendered
again (422) with the field's message and what was typed, secrets excepted.
Every POST carries the session's CSRF token (400 without it); the session is
bound to one resource (403 for any other) and lasts 8 hours from sign-in
(``PERMANENT_SESSION_LIFETIME``), however often it is used. Nothing needs
JavaScript.
"""

from __future__ import annotations

import time
import uuid

import orjson
from flask import (Blueprint, abort, current_app, flash, g, make_response, redirect, render_template, request,
                   session, url_for)
from werkzeug.exceptions import NotFound as HTTPNotFound

from broker import activity, audit, drains, operations, outbox, plans, resources, sources, tokens
from broker.forge import LEVELS
from broker.validation import InputError
from broker.vault import VaultError
from web import dashboard_forms as forms
from web import dashboard_view as view
from web import services
from web.errors import retry_after_header

bp = Blueprint("dashboard", __name__, url_prefix="/dashboard")


def signed_in_resource(resource_id: uuid.UUID) -> None:
    """403 unless this browser signed in, through SSO, to exactly this resource."""
    if session.get("resource_id") != str(resource_id):
        abort(make_response(render_template(
            "sso_denied.html", reason="you are not signed in to this add-on"), 403))


def _within_working_day(signed_in_at: object) -> bool:
    """Whether a session signed in at ``signed_in_at`` (SSO's time.time()) is still in its lifetime, counted
    from sign-in however often it is used since. Flask's cookie expiry alone would slide with every
    request. A session without a sign-in time was made before they were kept: it has ended."""
    if not isinstance(signed_in_at, int):
        return False
    return time.time() - signed_in_at <= current_app.permanent_session_lifetime.total_seconds()


@bp.before_request
def _guard():
    """Every dashboard request passes here: signed in to this resource, the resource still there
    (kept in ``g.resource`` for the views), and a form's CSRF token."""
    resource_id = (request.view_args or {}).get("resource_id")
    if resource_id is None:
        abort(404)
    if session and not _within_working_day(session.get("signed_in_at")):
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
                    "missing or out of date). Nothing was changed. Go back, reload the page and try again."),
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
    flash(exc.message, "error")
    args = request.view_args or {}
    anchor = (f"drain-{args['drain_id']}" if "drain_id" in args
              else f"source-{args['source_id']}" if "source_id" in args else "")
    return _back(args["resource_id"], anchor)


@bp.app_context_processor
def _template_helpers():
    return {"csrf_token": forms.csrf_token}


def _actor() -> str:
    """Who the audit log names for a change: the email the SSO token signed, else ``sso:<partner>``."""
    return session.get("actor") or session.get("user") or "heroku user"


def _connect():
    return services().db.connection()


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
    now = row["now"]
    found = view.collect(series, now)
    source_cards = []
    for s in source_rows:
        sid = str(s["id"])
        state_class, state_words = view.source_state(s)
        stored = found.values(sid, "stored")
        source_cards.append({
            "row": s, "id": sid, "state_class": state_class, "state": state_words,
            "problem": view.source_problem(s), "capacity": view.over_capacity(s),
            "unreadable": view.unreadable(s),
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
        try:
            url = svc.vault.decrypt(d["url_enc"]) if d["url_enc"] and d["kind"] != "heroku" else None
        except VaultError:  # shown as a problem of the drain (view.drain_problem)
            url = None
        drain_cards.append({
            "row": d, "id": did, "state_class": state_class, "state": state_words,
            "problem": view.drain_problem(d), "backlog": view.number(backlogs.get(d["id"], outbox.Backlog()).records),
            "url": drains.masked_url(url) if url else None,
            "chart": view.chart(f"chart-drain-{did[:8]}", f"Drain {d['name'] or d['kind']}", found.start,
                                found.values(did, "delivered"), "delivered",
                                dropped=found.values(did, "dropped")),
        })
    plan = plans.get(row["plan"])
    flowing = [c for c in source_cards if c["state_class"] in ("ok", "backfilling")]
    attention = [c for c in source_cards + drain_cards if c["problem"] is not None or c.get("capacity")]
    state = forms_state or {}
    body = render_template(
        "dashboard.html", resource=row, plan=plan, drain_token=tokens.mask(row["log_drain_token"]),
        source_cards=source_cards, drain_cards=drain_cards, flowing=flowing, attention=attention,
        owned_drains=sum(1 for d in drain_rows if d["kind"] != "heroku"),
        audit_entries=[{**e, "text": view.audit_text(e)} for e in entries], levels=LEVELS,
        add_source=state.get("add_source", {"values": {}, "errors": {}}),
        add_drain=state.get("add_drain", {"values": {"kind": "logplex", "gzip": True}, "errors": {}}),
        backfill=state.get("backfill", {}), user=session.get("user"), app_name=session.get("app"),
        now=now)
    return make_response(body, status)


@bp.get("/<uuid:resource_id>")
def show(resource_id: uuid.UUID):
    return _page(resource_id)


def _refusal_field(exc: operations.Refused) -> str:
    return {"auth_failed": "api_token", "not_found": "app_id"}.get(exc.refusal.pause_reason or "", "form")


# --- sources ------------------------------------------------------------------------

@bp.post("/<uuid:resource_id>/sources")
def add_source(resource_id: uuid.UUID):
    svc = services()
    try:
        row = operations.create_source(_connect, svc.vault, svc.verifier(), resource_id,
                                       forms.source_payload(request.form, partial=False), actor=_actor(),
                                       calls=svc.owner_calls)
    except operations.Frozen:
        raise  # the 410/409 page (_frozen), not a form error
    except (InputError, operations.OperationError) as exc:
        field = exc.field if isinstance(exc, InputError) else (
            _refusal_field(exc) if isinstance(exc, operations.Refused) else "form")
        state = {"values": forms.source_echo(request.form), "errors": {field: exc.message}}
        return _page(resource_id, status=422, forms_state={"add_source": state})
    flash(f"Source {row['app_id']} added: Atlassian accepted the credentials. The first poll starts within "
          "a minute.", "ok")
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
    try:
        row, changed = operations.update_source(_connect, svc.vault, svc.verifier(), resource_id, source_id,
                                                forms.source_payload(request.form, partial=True), actor=_actor(),
                                                calls=svc.owner_calls)
    except (operations.NotFound, operations.Frozen):
        raise  # a 404 (_missing) or 410/409 (_frozen), not a form error
    except (InputError, operations.OperationError) as exc:
        field = exc.field if isinstance(exc, InputError) else (
            _refusal_field(exc) if isinstance(exc, operations.Refused) else "form")
        return _source_form(resource_id, _source_row(resource_id, source_id), forms.source_echo(request.form),
                            {field: exc.message}, 422)
    if changed:
        flash(f"Source {row['app_id']} saved ({', '.join(changed)} changed)"
              + ("; Atlassian accepted the credentials." if any(f in sources.VERIFIED_FIELDS for f in changed)
                 else "."), "ok")
    else:
        flash("Nothing changed.", "ok")
    return _back(resource_id, f"source-{row['id']}")


@bp.post("/<uuid:resource_id>/sources/<uuid:source_id>/verify")
def verify_source(resource_id: uuid.UUID, source_id: uuid.UUID):
    svc = services()
    try:
        row, refusal = operations.verify_source(_connect, svc.vault, svc.verifier(), resource_id, source_id,
                                                actor=_actor(), calls=svc.owner_calls)
    except operations.Refused as exc:
        flash(f"Could not verify now: {exc.message}", "error")
        return _back(resource_id, f"source-{source_id}")
    if refusal is None:
        flash(f"Atlassian accepted the credentials of {row['app_id']}; polling is on.", "ok")
    else:
        flash(f"Verification refused: {refusal.message}. Polling is paused until this is fixed.", "error")
    return _back(resource_id, f"source-{row['id']}")


@bp.post("/<uuid:resource_id>/sources/<uuid:source_id>/backfill")
def backfill_source(resource_id: uuid.UUID, source_id: uuid.UUID):
    typed = (request.form.get("from") or "").strip()
    value = typed
    if value and "T" in value and not (value.endswith(("Z", "z")) or "+" in value[10:] or "-" in value[10:]):
        value += "+00:00"  # a datetime-local field carries no zone: the label says UTC
    try:
        operations.backfill_source(_connect, resource_id, source_id, value, actor=_actor())
    except InputError as exc:
        return _page(resource_id, status=422, forms_state={
            "backfill": {"id": str(source_id), "value": typed, "error": exc.message}})
    flash(f"Backfill started from {value.replace('+00:00', ' UTC').replace('T', ' ')}: records arrive as the "
          "source catches up.", "ok")
    return _back(resource_id, f"source-{source_id}")


@bp.post("/<uuid:resource_id>/sources/<uuid:source_id>/delete")
def delete_source(resource_id: uuid.UUID, source_id: uuid.UUID):
    row = operations.delete_source(_connect, resource_id, source_id, actor=_actor())
    flash(f"Source {row['app_id']} deleted.", "ok")
    return _back(resource_id, "sources")


# --- drains ---------------------------------------------------------------------------

@bp.post("/<uuid:resource_id>/drains")
def add_drain(resource_id: uuid.UUID):
    svc = services()
    kind = request.form.get("kind") or ""
    try:
        row = operations.create_drain(_connect, svc.vault, resource_id,
                                      forms.drain_payload(request.form, kind, editing=False), actor=_actor(),
                                      allow_private=svc.settings.allow_private_drains)
    except operations.Frozen:
        raise  # the 410/409 page (_frozen), not a form error
    except (InputError, operations.OperationError) as exc:
        field = exc.field if isinstance(exc, InputError) else "form"
        state = {"values": forms.drain_echo(request.form), "errors": {field: exc.message}}
        return _page(resource_id, status=422, forms_state={"add_drain": state})
    flash(f"Drain added ({row['kind']}, token {row['token']}). It receives the records stored from now on; "
          "press Send test record to check it.", "ok")
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
    return make_response(render_template(
        "drain_edit.html", resource_id=resource_id, drain=row, values=values, errors=errors,
        masked_url=drains.masked_url(url) if url else None, header_names=header_names,
        user=session.get("user"), app_name=session.get("app")), status)


@bp.get("/<uuid:resource_id>/drains/<uuid:drain_id>/edit")
def edit_drain(resource_id: uuid.UUID, drain_id: uuid.UUID):
    row = _drain_row(resource_id, drain_id)
    settings = row["settings"] or {}
    values = {"name": row["name"] or "", "url": "", "encoding": settings.get("encoding", "protobuf"),
              "gzip": settings.get("gzip", True), "headers": "", "sd_id": settings.get("sd_id") or ""}
    return _drain_form(resource_id, row, values, {})


@bp.post("/<uuid:resource_id>/drains/<uuid:drain_id>")
def update_drain(resource_id: uuid.UUID, drain_id: uuid.UUID):
    svc = services()
    row = _drain_row(resource_id, drain_id)
    try:
        updated, changed = operations.update_drain(
            _connect, svc.vault, resource_id, drain_id, forms.drain_payload(request.form, row["kind"], editing=True),
            actor=_actor(), allow_private=svc.settings.allow_private_drains)
    except (operations.NotFound, operations.Frozen):
        raise  # a 404 (_missing) or 410/409 (_frozen), not a form error
    except (InputError, operations.OperationError) as exc:
        field = exc.field if isinstance(exc, InputError) else "form"
        return _drain_form(resource_id, row, forms.drain_echo(request.form), {field: exc.message}, 422)
    flash(f"Drain saved ({', '.join(changed)} changed)." if changed else "Nothing changed.", "ok")
    return _back(resource_id, f"drain-{updated['id']}")


@bp.post("/<uuid:resource_id>/drains/<uuid:drain_id>/test")
def test_drain(resource_id: uuid.UUID, drain_id: uuid.UUID):
    svc = services()
    outcome = operations.test_drain(_connect, svc.wire(), svc.vault, resource_id, drain_id, actor=_actor(),
                                    calls=svc.owner_calls)
    status = f" (HTTP {outcome.status})" if outcome.status else ""
    if outcome.delivered:
        flash(f"Test record delivered: the receiver accepted it{status}. Look for "
              f"“{outcome.record['invocation_id']}” at the destination.", "ok")
    else:
        advice = ("Forge Drain would retry this: check that the receiver is up." if outcome.retryable
                  else "Check the URL and the receiver's credentials with Edit.")
        flash(f"Test record not delivered{status}: {outcome.message}. {advice}", "error")
    return _back(resource_id, f"drain-{drain_id}")


@bp.post("/<uuid:resource_id>/drains/<uuid:drain_id>/token")
def rotate_drain_token(resource_id: uuid.UUID, drain_id: uuid.UUID):
    row = operations.rotate_drain_token(_connect, resource_id, drain_id, actor=_actor())
    flash(f"New drain token {row['token']}: update your receiver if it checks the token.", "ok")
    return _back(resource_id, f"drain-{drain_id}")


@bp.post("/<uuid:resource_id>/drains/<uuid:drain_id>/enabled")
def set_drain_enabled(resource_id: uuid.UUID, drain_id: uuid.UUID):
    svc = services()
    enabled = request.form.get("enabled") == "true"
    operations.set_drain_enabled(_connect, svc.vault, resource_id, drain_id, enabled, actor=_actor(),
                                 allow_private=svc.settings.allow_private_drains)
    flash("Drain enabled: deliveries resume." if enabled
          else "Drain disabled: records wait for it within the plan's backlog.", "ok")
    return _back(resource_id, f"drain-{drain_id}")


@bp.post("/<uuid:resource_id>/drains/<uuid:drain_id>/delete")
def delete_drain(resource_id: uuid.UUID, drain_id: uuid.UUID):
    row = operations.delete_drain(_connect, resource_id, drain_id, actor=_actor())
    flash(f"Drain {row['name'] or row['kind']} deleted.", "ok")
    return _back(resource_id, "drains")
