"""What an owner can do to a resource's sources and drains, for every caller (SPEC §2–4, §7).

The resource API (actor ``"api-token"``) and the dashboard (actor = the SSO
user's email) both call these functions, so validation, the plan limit (checked
again under the resource's row lock), encryption and the audit entry happen
one way only. Each function takes ``connect`` — a callable returning a
connection context manager, such as ``services().db.connection`` — rather than
a connection, so that no database connection is held while Atlassian or a
drain's receiver is being called.

Failures are exceptions the caller turns into its own answer:

- :class:`~broker.validation.InputError` — a field is wrong (``field``, ``message``);
- :class:`Refused` — Atlassian refused the credentials or ids, or could not
  be asked (``refusal`` says which; ``http_status`` 422 or 502/503): a 503
  ``forge_budget_spent`` when the app's shared call budget has no call left
  (``refusal.retry_after`` says when it will), so no check ever causes a 429;
- :class:`PlanLimit` — the plan allows no more sources / drains;
- :class:`Duplicate` — that app environment is already a source;
- :class:`NotFound` — no such source / drain on this resource;
- :class:`Frozen` — the resource takes no more changes: :class:`Gone` (410) once deprovisioned,
  :class:`ProvisioningFailed` (409) when its provisioning failed;
- :class:`Busy` — a :class:`Refused` with 429 and ``refusal.retry_after``: the resource already has
  a call out in flight, or has started its calls of the minute (:class:`broker.ratelimit.OwnerCalls`).

Every :class:`OperationError` carries ``http_status``, ``code`` and ``message``.

A resource that is deprovisioned is frozen: every change here runs in a transaction that first
locks the resource's row (``FOR SHARE``, or ``FOR UPDATE`` where the plan limit is counted) and
checks its state, so a dashboard tab left open cannot re-store a drain URL or re-enable a drain
after deprovision, and deprovision (which updates that row) cannot interleave with a change.
Operations that call out (verify with Atlassian, send a test record) hold no lock or connection
during the call: they check the state before, and write their result only if it still holds after.
"""

from __future__ import annotations

import logging
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, ContextManager

import orjson
import psycopg
import redis

from broker import audit, drains, forge, plans, ratelimit, resources, rules, senders, sources
from broker.sinks import Result
from broker.validation import InputError
from broker.vault import Vault, VaultError

log = logging.getLogger(__name__)

Connect = Callable[[], ContextManager[psycopg.Connection]]

API_ACTOR = "api-token"
TEST_MESSAGE = "Forge Drain test record: if you can read this, the drain works."
TEST_MESSAGE_CHARS = 1000


class OperationError(Exception):
    http_status = 422
    code = "invalid"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class NotFound(OperationError):
    http_status = 404
    code = "not_found"


class PlanLimit(OperationError):
    http_status = 422
    code = "plan_limit"


class Duplicate(OperationError):
    http_status = 409
    code = "duplicate"


class Refused(OperationError):
    """Atlassian refused the credentials or ids (422), or could not be asked (502/503); or the call
    out was not made (:class:`Busy`, 429). ``refusal.retry_after`` says when to try again, if known."""

    def __init__(self, refusal: sources.Refusal):
        super().__init__(refusal.message)
        self.refusal = refusal
        self.http_status = refusal.http_status
        self.code = refusal.code


class Busy(Refused):
    """The resource's calls out from the web are at their bound: nothing was sent (429)."""


class Frozen(OperationError):
    """The resource takes no more changes."""

    http_status = 409
    code = "resource_frozen"


class Gone(Frozen):
    http_status = 410
    code = "resource_deprovisioned"


class ProvisioningFailed(Frozen):
    http_status = 409
    code = "resource_failed"


# What a change of a deprovisioned resource is told (the API's 410, the dashboard's forms).
GONE_MESSAGE = ("this add-on was removed (deprovisioned): its sources and drains can no longer change; "
                "nothing was changed")


def _check_state(row: dict | None) -> dict:
    """``row`` if the resource takes changes: provisioned, or still provisioning (the owner may set
    it up meanwhile); NotFound / :class:`Frozen` otherwise."""
    if row is None:
        raise NotFound("no such resource")
    if row["state"] == "deprovisioned":
        raise Gone(GONE_MESSAGE)
    if row["state"] == "failed":
        raise ProvisioningFailed("this add-on's provisioning failed: its sources and drains cannot change; "
                                 "remove it and add it again; nothing was changed")
    return row


def _live(conn: psycopg.Connection, resource_id, *, for_update: bool = False) -> dict:
    """Lock the resource's row for the rest of the transaction (first in it) and check its state."""
    return _check_state(resources.get_for_update(conn, resource_id) if for_update
                        else resources.lock_shared(conn, resource_id))


# --- calls out from web threads ----------------------------------------------------

# A call's lease outlives its own deadline by this much, so it is never freed while the call still
# runs (a syslog send may also wait for the system's resolver, about 5 s a try, before its deadline
# refuses to connect).
LEASE_MARGIN_SECONDS = 30.0
# Atlassian's longest answer to a verification: connect, then one page read under its own deadline.
VERIFY_SECONDS = forge.TIMEOUT[0] + forge.PAGE_DEADLINE_SECONDS
# While another call is in flight, come back this soon at most: calls usually end well before
# their deadline, which is what the lease's own end would say.
BUSY_RETRY_SECONDS = 5.0
# Without Redis the calls cannot be counted: refuse them, and say to come back this soon.
UNAVAILABLE_RETRY_SECONDS = 5.0


def _seconds(value: float) -> str:
    seconds = max(1, int(-(-value // 1)))
    return f"{seconds} second{'s' if seconds != 1 else ''}"


@contextmanager
def _calling_out(calls: ratelimit.OwnerCalls | None, resource_id, seconds: float):
    """Run the body as one of the resource's bounded calls out (``seconds``: its own deadline);
    :class:`Busy` (429) or a 503 :class:`Refused` at once, and nothing sent, when it may not."""
    if calls is None:
        yield
        return
    try:
        call_id, wait, why = calls.take(resource_id, seconds + LEASE_MARGIN_SECONDS)
    except redis.RedisError as exc:
        log.warning("owner call resource=%s refused: redis unavailable (%s)", resource_id, type(exc).__name__)
        raise Refused(sources.Refusal(
            503, "unavailable", "Forge Drain cannot count this add-on's calls out right now; nothing was sent "
            "or saved, try again shortly", None, UNAVAILABLE_RETRY_SECONDS)) from None
    if call_id is None:
        if why == ratelimit.OwnerCalls.IN_FLIGHT:
            wait = min(wait, BUSY_RETRY_SECONDS)
            message = (f"another test or verification of this add-on is still running (one at a time); "
                       f"nothing was sent or saved, try again in {_seconds(wait)}")
            code = "busy"
        elif why == ratelimit.OwnerCalls.PROCESS:
            message = (f"Forge Drain is making as many tests and verifications at once as it allows; "
                       f"nothing was sent or saved, try again in {_seconds(wait)}")
            code = "busy"
        else:
            message = (f"this add-on has started {calls.limit} tests or verifications in the last "
                       f"{_seconds(calls.period_us / 1e6)} (the most allowed); nothing was sent or saved, "
                       f"try again in {_seconds(wait)}")
            code = "too_many_calls"
        log.info("owner call resource=%s refused why=%s", resource_id, why)
        raise Busy(sources.Refusal(429, code, message, None, wait))
    try:
        yield
    finally:
        try:
            calls.release(resource_id, call_id)
        except redis.RedisError as exc:  # its lease ends by itself
            log.warning("owner call resource=%s not released: redis unavailable (%s)", resource_id,
                        type(exc).__name__)


def _verifier_calls(calls: ratelimit.OwnerCalls | None, verifier: sources.Verifier) -> ratelimit.OwnerCalls:
    """The bounds for a verification: ``calls``, or by default in the Redis holding the Forge budget."""
    return calls if calls is not None else ratelimit.OwnerCalls(verifier.limiter.connection)


# --- sources ---------------------------------------------------------------------

def source_limit_message(plan: plans.Plan) -> str:
    return (f"plan {plan.name} allows {plan.max_sources} source{'s' if plan.max_sources > 1 else ''}; "
            "delete one or change plan first")


def source_audit_detail(row: dict, changed: list[str] | None = None) -> dict:
    detail = {"source_id": str(row["id"]), "app_id": row["app_id"], "environment_id": row["environment_id"]}
    if changed is not None:
        detail["changed"] = changed
    return detail


def _verify(verifier: sources.Verifier, values: dict) -> sources.Refusal | None:
    refusal = sources.verify(verifier, values)
    if refusal is not None:
        log.info("source verification refused app=%s code=%s", values["app_id"], refusal.code)
    return refusal


def _source_limit(conn: psycopg.Connection, resource_id, plan_name: str) -> None:
    plan = plans.get(plan_name)
    if plan is None or sources.count(conn, resource_id) >= plan.max_sources:
        raise PlanLimit(source_limit_message(plan) if plan else "the resource's plan allows no sources")


def create_source(connect: Connect, vault: Vault, verifier: sources.Verifier, resource_id, payload: object, *,
                  actor: str, calls: ratelimit.OwnerCalls | None = None) -> dict:
    """Validate, verify with Atlassian, then store (encrypted) and audit a new source; its row.

    The plan limit (and the resource's state) is checked before the Atlassian call (to spare it)
    and again under the resource's row lock, so two creates cannot both pass it. The verification
    is one of the resource's bounded calls out (``calls``; by default in the verifier's Redis).
    """
    values = sources.validate(payload).values
    with connect() as conn:
        resource = _check_state(resources.get(conn, resource_id))
        _source_limit(conn, resource_id, resource["plan"])
    with _calling_out(_verifier_calls(calls, verifier), resource_id, VERIFY_SECONDS):
        refusal = _verify(verifier, values)
    if refusal is not None:
        raise Refused(refusal)
    token_enc = vault.encrypt(values["api_token"])
    try:
        with connect() as conn, conn.transaction():
            locked = _live(conn, resource_id, for_update=True)
            _source_limit(conn, resource_id, locked["plan"])
            row = sources.insert(conn, resource_id, values, token_enc)
            audit.record(conn, resource_id, actor, "source.created", source_audit_detail(row))
    except psycopg.errors.UniqueViolation:
        raise Duplicate(f"app {values['app_id']} environment {values['environment_id']} "
                        "is already a source of this resource") from None
    log.info("source created resource=%s source=%s app=%s", resource_id, row["id"], row["app_id"])
    return row


def _owned(connect: Connect, resource_id, child_id, lookup, noun: str) -> dict:
    """The resource's source or drain ``child_id`` (looked up with ``lookup``); NotFound otherwise,
    :class:`Frozen` when the resource takes no changes (checked again, locked, before any write)."""
    try:
        parsed = str(uuid.UUID(str(child_id)))
    except ValueError:
        raise NotFound(f"no such {noun}") from None
    with connect() as conn:
        _check_state(resources.get(conn, resource_id))
        row = lookup(conn, resource_id, parsed)
    if row is None:
        raise NotFound(f"no such {noun}")
    return row


def _source(connect: Connect, resource_id, source_id) -> dict:
    return _owned(connect, resource_id, source_id, sources.get, "source")


def update_source(connect: Connect, vault: Vault, verifier: sources.Verifier, resource_id, source_id,
                  payload: object, *, actor: str, calls: ratelimit.OwnerCalls | None = None) -> tuple[dict, list[str]]:
    """Apply the submitted fields; (the row, the fields that really changed).

    Changed credentials or ids are verified first (a refusal raises
    :class:`Refused` and keeps the old ones); a successful verification
    resumes a paused source. An empty payload is an :class:`InputError`.
    Fields equal to what is stored are ignored: nothing changed, nothing audited.
    """
    changes = sources.validate(payload, partial=True).values
    if not changes:
        raise InputError("fields", "nothing to change: send at least one field")
    current = _source(connect, resource_id, source_id)
    stored_token = vault.decrypt(current["api_token_enc"]) if current["api_token_enc"] else None
    changed = [f for f in changes if (stored_token if f == "api_token" else current[f]) != changes[f]]
    needs_verification = any(f in sources.VERIFIED_FIELDS for f in changed)
    if needs_verification:
        merged = {f: current[f] for f in ("app_id", "environment_id", "email")}
        merged["api_token"] = stored_token
        merged.update({f: changes[f] for f in sources.VERIFIED_FIELDS if f in changes})
        with _calling_out(_verifier_calls(calls, verifier), resource_id, VERIFY_SECONDS):
            refusal = _verify(verifier, merged)
        if refusal is not None:
            raise Refused(refusal)
    token_enc = vault.encrypt(changes["api_token"]) if "api_token" in changed else None
    try:
        with connect() as conn, conn.transaction():
            _live(conn, resource_id)
            if sources.get(conn, resource_id, current["id"], for_update=True) is None:
                raise NotFound("no such source")
            row = sources.update(conn, current["id"], {f: changes[f] for f in changed}, token_enc,
                                 verified=needs_verification)
            if changed:
                audit.record(conn, resource_id, actor, "source.updated", source_audit_detail(row, changed))
    except psycopg.errors.UniqueViolation:
        raise Duplicate("that app environment is already a source of this resource") from None
    return row, changed


def delete_source(connect: Connect, resource_id, source_id, *, actor: str) -> dict:
    """Delete a source (audited); the row it was."""
    row = _source(connect, resource_id, source_id)
    with connect() as conn, conn.transaction():
        _live(conn, resource_id)
        if sources.get(conn, resource_id, row["id"], for_update=True) is None:
            raise NotFound("no such source")
        sources.delete(conn, row["id"])
        audit.record(conn, resource_id, actor, "source.deleted", source_audit_detail(row))
    log.info("source deleted resource=%s source=%s", resource_id, row["id"])
    return row


def verify_source(connect: Connect, vault: Vault, verifier: sources.Verifier, resource_id, source_id, *,
                  actor: str, calls: ratelimit.OwnerCalls | None = None) -> tuple[dict, sources.Refusal | None]:
    """Verify the stored credentials now; (the updated row, the refusal or None when accepted).

    Success resumes a paused source; a refusal pauses it with its reason. When
    Atlassian cannot be asked (unreachable, rate limiting) that says nothing
    about the source: :class:`Refused` is raised and nothing changes. The call
    is one of the resource's bounded calls out (``calls``; by default in the
    verifier's Redis), and its outcome is stored only if the resource is still live.
    """
    row = _source(connect, resource_id, source_id)
    values = {"app_id": row["app_id"], "environment_id": row["environment_id"], "email": row["email"],
              "api_token": vault.decrypt(row["api_token_enc"]) if row["api_token_enc"] else ""}
    with _calling_out(_verifier_calls(calls, verifier), resource_id, VERIFY_SECONDS):
        refusal = _verify(verifier, values)
    if refusal is not None and refusal.pause_reason is None:
        raise Refused(refusal)
    with connect() as conn, conn.transaction():
        _live(conn, resource_id)
        if sources.get(conn, resource_id, row["id"], for_update=True) is None:
            raise NotFound("no such source")
        updated = sources.record_verification(
            conn, row["id"], refusal.pause_reason if refusal else None, refusal.message if refusal else None)
        audit.record(conn, resource_id, actor, "source.verified",
                     {**source_audit_detail(row), "ok": refusal is None})
    return updated, refusal


def backfill_source(connect: Connect, resource_id, source_id, start: str | datetime, *, actor: str,
                    field: str = "from") -> dict:
    """Re-poll the source from ``start`` (an ISO 8601 time with a zone, ≤ 14 days ago); the row."""
    if not isinstance(start, datetime):
        start = sources.parse_time(start, field)
    row = _source(connect, resource_id, source_id)
    with connect() as conn, conn.transaction():
        _live(conn, resource_id)
        updated = sources.backfill(conn, row["id"], start, actor=actor, resource_id=resource_id, field=field)
    if updated is None:
        raise NotFound("no such source")
    log.info("backfill source=%s from=%s", row["id"], start.isoformat())
    return updated


# --- drains ----------------------------------------------------------------------

def drain_audit_detail(row: dict, changed: list[str] | None = None) -> dict:
    detail = {"drain_id": str(row["id"]), "kind": row["kind"]}
    if changed is not None:
        detail["changed"] = changed
    return detail


def _drain(connect: Connect, resource_id, drain_id) -> dict:
    return _owned(connect, resource_id, drain_id, drains.get, "drain")


def _headers_enc(vault: Vault, values: dict) -> str | None:
    return vault.encrypt(orjson.dumps(values["headers"]).decode()) if values.get("headers") else None


def _check_rule_sources(conn: psycopg.Connection, resource_id, payload: dict) -> None:
    """The submitted rules name only sources of this resource (:class:`~broker.rules.RulesInvalid`,
    422 ``invalid_rules``, otherwise). Runs in the change's transaction, after the resource's lock."""
    submitted = payload.get("rules")
    if isinstance(submitted, dict) and submitted.get("sources"):
        rules.check_sources(submitted, [row["id"] for row in sources.list_for(conn, resource_id)])


def create_drain(connect: Connect, vault: Vault, resource_id, payload: object, *, actor: str,
                 allow_private: bool) -> dict:
    """Validate, then store (URL and headers encrypted) and audit a new drain; its row.

    The plan limit, and that the rules name only this resource's sources, are
    checked under the resource's row lock (the built-in ``heroku`` drain does
    not count).
    """
    values = drains.validate(payload, allow_private=allow_private).values
    url_enc = vault.encrypt(values["url"])
    headers_enc = _headers_enc(vault, values)
    with connect() as conn, conn.transaction():
        locked = _live(conn, resource_id, for_update=True)
        _check_rule_sources(conn, resource_id, payload)
        plan = plans.get(locked["plan"])
        if plan is None or drains.count_owned(conn, resource_id) >= plan.max_drains:
            raise PlanLimit(f"plan {locked['plan']} allows {plan.max_drains if plan else 0} drains; "
                            "delete one or change plan first")
        row = drains.insert(conn, resource_id, values, url_enc, headers_enc)
        audit.record(conn, resource_id, actor, "drain.created", drain_audit_detail(row))
    log.info("drain created resource=%s drain=%s kind=%s", resource_id, row["id"], row["kind"])
    return row


def _stored_secrets(vault: Vault, row: dict) -> tuple[str | None, dict | None]:
    """The drain's stored URL and headers; None for one that can no longer be decrypted (any value
    submitted for it is then a change: the owner re-entering it)."""
    try:
        url = vault.decrypt(row["url_enc"]) if row["url_enc"] else None
    except VaultError:
        url = None
    try:
        headers = orjson.loads(vault.decrypt(row["headers_enc"])) if row["headers_enc"] else {}
    except VaultError:
        headers = None
    return url, headers


def update_drain(connect: Connect, vault: Vault, resource_id, drain_id, payload: object, *, actor: str,
                 allow_private: bool) -> tuple[dict, list[str]]:
    """Apply the submitted fields; (the row, the fields that really changed, audited by name).

    A ``url`` or ``headers`` equal to what is stored is not a change. The
    ``heroku`` drain can only be renamed, enabled or disabled.
    """
    current = _drain(connect, resource_id, drain_id)
    values = drains.validate(payload, allow_private=allow_private, current=current).values
    stored_url, stored_headers = _stored_secrets(vault, current)
    changed = []
    if "url" in values and values["url"] != stored_url:
        changed.append("url")
    else:
        values.pop("url", None)
    if "headers" in values and values["headers"] != stored_headers:
        changed.append("headers")
    else:
        values.pop("headers", None)
    changed += [f for f in ("name", "enabled") if f in values and values[f] != current[f]]
    if "rules" in values and (values["rules"] or {}) != (current["rules"] or {}):
        changed.append("rules")
    changed += [f for f in sorted(set(values["settings"]) | set(current["settings"]))
                if values["settings"].get(f) != current["settings"].get(f)]
    url_enc = vault.encrypt(values["url"]) if "url" in values else None
    headers_enc = vault.encrypt(orjson.dumps(values["headers"]).decode()) if "headers" in values else None
    with connect() as conn, conn.transaction():
        _live(conn, resource_id)
        if drains.get(conn, resource_id, current["id"], for_update=True) is None:
            raise NotFound("no such drain")
        _check_rule_sources(conn, resource_id, payload)
        updated = drains.update(conn, current["id"], values, url_enc, headers_enc, due=bool(changed))
        if changed:
            # Whether it was an enabling or a disabling: the audit log says which (issue 19).
            audit.record(conn, resource_id, actor, "drain.updated", {
                **drain_audit_detail(current, changed),
                **({"enabled": values["enabled"]} if "enabled" in changed else {})})
    return updated, changed


def set_drain_enabled(connect: Connect, vault: Vault, resource_id, drain_id, enabled: bool, *,
                      actor: str, allow_private: bool) -> dict:
    """Enable or disable a drain (any kind, the ``heroku`` one included); the row."""
    row, _ = update_drain(connect, vault, resource_id, drain_id, {"enabled": bool(enabled)}, actor=actor,
                          allow_private=allow_private)
    return row


def delete_drain(connect: Connect, resource_id, drain_id, *, actor: str) -> dict:
    """Delete a drain (audited); the row it was. The ``heroku`` drain cannot be deleted (InputError)."""
    row = _drain(connect, resource_id, drain_id)
    if row["kind"] == "heroku":
        raise InputError("kind", "the heroku drain is the app's own log stream: disable it instead")
    with connect() as conn, conn.transaction():
        _live(conn, resource_id)
        if drains.get(conn, resource_id, row["id"], for_update=True) is None:
            raise NotFound("no such drain")
        drains.delete(conn, row["id"])
        audit.record(conn, resource_id, actor, "drain.deleted", drain_audit_detail(row))
    log.info("drain deleted resource=%s drain=%s", resource_id, row["id"])
    return row


def rotate_drain_token(connect: Connect, resource_id, drain_id, *, actor: str) -> dict:
    """Give the drain a new ``d.<uuid>`` token (audited); the row."""
    row = _drain(connect, resource_id, drain_id)
    with connect() as conn, conn.transaction():
        _live(conn, resource_id)
        if drains.get(conn, resource_id, row["id"], for_update=True) is None:
            raise NotFound("no such drain")
        updated = drains.rotate_token(conn, row["id"])
        audit.record(conn, resource_id, actor, "drain.token_rotated", drain_audit_detail(row))
    return updated


@dataclass(frozen=True)
class DrainTestOutcome:
    delivered: bool
    status: int | None
    message: str          # what happened, said for the owner
    retryable: bool
    record: dict          # invocation_id, message (as sent: redacted by the drain's rules), time of the record sent
    # What the drain's rules did to the record: ``filtered`` (they would keep it from deliveries; sent
    # anyway) and ``redacted`` (values replaced).
    rules: dict | None = None


def test_drain(connect: Connect, wire, vault, resource_id, drain_id, *, actor: str,
               message: str | None = None, calls: ratelimit.OwnerCalls | None = None) -> DrainTestOutcome:
    """Send one test record through the drain now, in its own format; what happened (audited).

    The record looks like one of the resource's first source (or ``forgedrain``
    when it has none) and touches neither the drain's cursor nor its counters.
    The drain's rules redact it as they would a delivered record; if they would
    filter it out, it is sent anyway (a test is about the destination) and the
    outcome says so. Rules stored by another version that no longer compile
    raise :class:`~broker.rules.RulesInvalid` before anything is sent.
    It goes straight through the drain's sender (:mod:`broker.senders`) on ``wire``
    (``services().wire()``); the drain's secrets are decrypted with ``vault``.
    The send is one of the resource's bounded calls out (``calls``: web threads
    must pass one; None leaves the send unbounded, for callers that are not web
    threads), and is audited only if the resource is still live after it.
    """
    if message is None:
        message = TEST_MESSAGE
    if not isinstance(message, str) or not 1 <= len(message) <= TEST_MESSAGE_CHARS:
        raise InputError("message", f"message must be 1 to {TEST_MESSAGE_CHARS} characters")
    row = _drain(connect, resource_id, drain_id)
    # Stored rules that no longer compile hold deliveries back; the test says so (422) and sends nothing.
    compiled = rules.compile(row["rules"])
    with connect() as conn:
        first = sources.list_for(conn, resource_id)
    source = senders.Source.of(first[0] if first else {"service_name": "forgedrain"})
    invocation = f"forgedrain-test-{uuid.uuid4()}"
    now = time.time_ns()
    record = {"timeUnixNano": str(now), "observedTimeUnixNano": str(now), "severityText": "INFO",
              "severityNumber": 9, "body": {"stringValue": message},
              "attributes": [{"key": "invocationId", "value": {"stringValue": invocation}},
                             {"key": "functionKey", "value": {"stringValue": "forgedrain-test"}}]}
    filtered, redacted = False, 0
    if compiled is not None:
        record, filtered, redacted = compiled.probe(record, "forge", source)
    drain = senders.Drain(row["id"], row["kind"], row["token"], row["settings"] or {})
    try:
        where = senders.destination(row["url_enc"], row.get("headers_enc"), vault)
    except senders.SecretLost:
        result = Result("drop", detail=senders.SECRET_LOST_ERROR)
    else:
        if where is None:
            result = Result("drop", detail="the drain has no destination")
        else:
            with _calling_out(calls, resource_id, wire.deadline_seconds):
                result = senders.sender_for(drain, where, wire).probe([record], source)
    with connect() as conn, conn.transaction():
        _live(conn, resource_id)
        audit.record(conn, resource_id, actor, "drain.tested",
                     {**drain_audit_detail(row), "outcome": result.outcome, "status": result.status})
    log.info("drain test resource=%s drain=%s kind=%s outcome=%s status=%s", resource_id, row["id"],
             row["kind"], result.outcome, result.status)
    sent = {"invocation_id": invocation, "message": record["body"]["stringValue"],
            "time": datetime.fromtimestamp(now / 1e9, timezone.utc).isoformat()}
    delivered = result.outcome == "delivered"
    return DrainTestOutcome(
        delivered=delivered, status=result.status,
        message="the receiver accepted the record" if delivered
        else (result.detail or "the receiver did not accept the record"),
        retryable=result.outcome == "retry", record=sent, rules={"filtered": filtered, "redacted": redacted})


# --- the alert webhook (issue 16 item 2) -------------------------------------------

from broker import alert_webhook  # noqa: E402 (here with the rest of the webhook's operations)


@dataclass(frozen=True)
class WebhookSet:
    webhook: alert_webhook.Webhook
    secret: str      # the new signing secret: shown once, in the answer to the change that made it
    created: bool


def set_alert_webhook(connect: Connect, vault: Vault, resource_id, payload: object, *, actor: str,
                      allow_private: bool) -> WebhookSet:
    """Point the resource's alert webhook at ``payload["url"]`` with a new signing secret (audited).

    The URL is checked as an HTTP drain's is (https, the SSRF guard at send time). A new webhook
    starts after the resource's newest notice; a replaced one keeps its place, so the notices it
    has not delivered yet go to the new URL, signed with the new secret.
    """
    if not isinstance(payload, dict):
        raise InputError("body", "request body must be a JSON object")
    unknown = sorted(set(payload) - {"url"})
    if unknown:
        raise InputError(unknown[0], f"unknown field {unknown[0]!r}; the only field is url")
    if "url" not in payload:
        raise InputError("url", "url is required")
    url = drains.https_url(payload["url"], allow_private=allow_private, what="the webhook's url")
    secret = alert_webhook.new_secret()
    url_enc, secret_enc = vault.encrypt(url), vault.encrypt(secret)
    with connect() as conn, conn.transaction():
        _live(conn, resource_id, for_update=True)
        created = alert_webhook.get(conn, resource_id, for_update=True) is None
        row = (alert_webhook.insert if created else alert_webhook.replace)(conn, resource_id, url_enc, secret_enc)
        audit.record(conn, resource_id, actor, "alert_webhook.set",
                     {"host": alert_webhook.host(url), "created": created})
    log.info("alert webhook set resource=%s created=%s", resource_id, created)
    return WebhookSet(row, secret, created)


def delete_alert_webhook(connect: Connect, resource_id, *, actor: str) -> None:
    """Remove the resource's alert webhook (audited); :class:`NotFound` when it has none."""
    with connect() as conn, conn.transaction():
        _live(conn, resource_id)
        if not alert_webhook.delete(conn, resource_id):
            raise NotFound("no alert webhook is set")
        audit.record(conn, resource_id, actor, "alert_webhook.deleted", {})
    log.info("alert webhook deleted resource=%s", resource_id)


@dataclass(frozen=True)
class WebhookTestOutcome:
    delivered: bool
    status: int | None
    message: str          # what happened, said for the owner
    retryable: bool


def test_alert_webhook(connect: Connect, wire: senders.Wire, vault: Vault, resource_id, *, actor: str,
                       message: str | None = None, calls: ratelimit.OwnerCalls | None = None) -> WebhookTestOutcome:
    """Send a signed test notice to the resource's webhook now; what happened (audited).

    Its cursor and counters do not change. The send is one of the resource's bounded calls out
    (``calls``, as :func:`test_drain`'s), audited only if the resource is still live after it.
    """
    if message is None:
        message = alert_webhook.TEST_MESSAGE
    if not isinstance(message, str) or not 1 <= len(message) <= TEST_MESSAGE_CHARS:
        raise InputError("message", f"message must be 1 to {TEST_MESSAGE_CHARS} characters")
    with connect() as conn:
        _check_state(resources.get(conn, resource_id))
        row = alert_webhook.get(conn, resource_id)
    if row is None:
        raise NotFound("no alert webhook is set: PUT one first")
    try:
        url, secret = alert_webhook.secrets_of(row, vault)
    except alert_webhook.SecretLost:
        result = Result("drop", detail=alert_webhook.SECRET_LOST_ERROR)
    else:
        notice = alert_webhook.test_notice(resource_id, message)
        with _calling_out(calls, resource_id, wire.deadline_seconds):
            result = alert_webhook.send(wire.session_for(), url, secret, notice, allow_private=wire.allow_private,
                                        deadline=wire.deadline_seconds)
    with connect() as conn, conn.transaction():
        _live(conn, resource_id)
        audit.record(conn, resource_id, actor, "alert_webhook.tested",
                     {"outcome": result.outcome, "status": result.status})
    log.info("alert webhook test resource=%s outcome=%s status=%s", resource_id, result.outcome, result.status)
    delivered = result.outcome == "delivered"
    return WebhookTestOutcome(delivered=delivered, status=result.status,
                              message="the receiver accepted the notice" if delivered
                              else (result.detail or "the receiver did not accept the notice"),
                              retryable=result.outcome == "retry")
