"""The provisioning story, from the Partner API's request to the add-on's config on Heroku.

1. :func:`provision` (``POST /heroku/resources``): validate the request
   (:func:`read_provision_request`), create the resource, or answer a replay
   as the first request was answered (Heroku delivers at least once). With an
   ``oauth_grant`` from Heroku the partner API answers 202 at once and a job
   runs step 2; without one the resource is ready at once.
2. :func:`complete` finishes what a 202 promised (research
   heroku-addon-and-logplex §2.3):

   a. exchange the grant code for tokens before it expires (minutes), store
      them encrypted;
   b. push ``FORGEDRAIN_URL`` / ``FORGEDRAIN_TOKEN`` with ``PATCH
      /addons/<id>/config`` (harmless if the 202 body's config was already
      applied; it makes sure it is);
   c. ``POST /addons/<id>/actions/provision``, which makes Heroku release the app.

   Each step is idempotent, so a crash anywhere is repaired by running
   :func:`complete` again. A transient failure records the attempt and a
   back-off time in PostgreSQL; the clock's tick re-enqueues resources whose
   time has come. A refusal that cannot heal (the grant was rejected or
   expired, or Heroku's 12-hour limit passed) marks the resource ``failed``
   with the reason, visible in the audit log and the resource API.
3. :func:`push_config` sends the new config to Heroku after a token rotation.
   The pending push is stored in PostgreSQL (the resource's token generation
   is ahead of the one Heroku accepted), so a flushed Redis loses nothing:
   the tick enqueues due pushes like due provisions.
4. :func:`change_plan` (``PUT``) and :func:`deprovision` (``DELETE``).

The partner API's views only read the request, call these functions and turn
the result, or a :class:`RequestRefused`, into the answer Heroku expects.
"""

from __future__ import annotations

import logging
import random
import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Callable, ContextManager
from urllib.parse import urlsplit

import psycopg
import redis
import requests

from broker import audit, heroku, jobs, plans, resources, sources, tokens
from broker.config import Settings
from broker.heroku import HerokuError
from broker.partners import Partner
from broker.validation import InputError
from broker.vault import Vault

log = logging.getLogger(__name__)

Connect = Callable[[], ContextManager[psycopg.Connection]]

# Heroku deletes an add-on that answered 202 and never reported "provisioned"
# after 12 hours (Dev Center getting-started-with-asynchronous-provisioning).
DEADLINE_HOURS = 12
# Refresh an access token this long before it expires, so no call races expiry.
REFRESH_MARGIN_SECONDS = 300
BACKOFF_BASE_SECONDS = 5
BACKOFF_MAX_SECONDS = 600

# Heroku's regions as the Partner API names them, plus the short names an
# integrator may use (research heroku-addon-and-logplex.md §1.3).
REGIONS = frozenset(
    [f"amazon-web-services::{r}" for r in (
        "us-east-1", "us-west-1", "us-west-2", "eu-west-1", "eu-central-1", "ca-central-1",
        "ap-northeast-1", "ap-southeast-1", "ap-southeast-2", "ap-south-1",
    )]
    + ["us", "eu"]
)
DRAIN_TOKEN = re.compile(r"^[\x21-\x7e]{1,200}\Z")
MAX_TEXT = 255
MAX_URL = 2048
FORGE_OPTIONS = ("app_id", "environment_id", "email", "api_token")


class RequestRefused(Exception):
    """A partner API request refused; nothing was changed. ``http_status`` is the partner API's
    status, ``message`` is safe to show, ``retry_after`` (seconds) says when asking again may work."""

    def __init__(self, http_status: int, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.http_status = http_status
        self.message = message
        self.retry_after = retry_after


def backoff_seconds(attempts: int, rng: random.Random | None = None) -> float:
    """Exponential back-off with full jitter on the upper half: 5 s, 10 s, 20 s … ≤ 10 min."""
    ceiling = min(BACKOFF_MAX_SECONDS, BACKOFF_BASE_SECONDS * 2 ** min(attempts, 16))
    return ceiling * (0.5 + (rng or random).random() / 2)


def resource_config(settings: Settings, resource_id: uuid.UUID | str, generation: int) -> dict[str, str]:
    """The config vars every attached app gets (SPEC §1)."""
    return {
        "FORGEDRAIN_URL": f"{settings.public_url}/v1/resources/{resource_id}",
        "FORGEDRAIN_TOKEN": tokens.api_token(settings.secret_key, resource_id, generation),
    }


# --- 1. provision ---------------------------------------------------------------------

@dataclass(frozen=True)
class ProvisionRequest:
    """A valid provision request (research heroku-addon-and-logplex.md §1)."""

    resource_id: uuid.UUID
    plan: plans.Plan
    region: str | None
    name: str | None
    callback_url: str | None
    log_drain_token: str | None
    log_input_url: str | None
    grant: tuple[str, datetime] | None  # (code, expires_at)
    first_source: dict | None  # Forge credentials given as provisioning options


@dataclass(frozen=True)
class Provisioned:
    """The resource a provision request created or found (a replay), and whether the broker issued
    its drain token (an integrator sent none): then the answer carries it."""

    resource: dict
    issued_drain_token: bool


def read_provision_request(body: dict, settings: Settings) -> ProvisionRequest:
    """Validate a provision request's fields, first bad one first; :class:`RequestRefused` (422)."""
    return ProvisionRequest(
        resource_id=_uuid(body),
        plan=_plan(body),
        region=_region(body),
        name=_optional_text(body, "name"),
        callback_url=_callback_url(body),
        log_drain_token=_drain_token(body),
        log_input_url=_log_input_url(body, settings.allow_private_drains),
        grant=_grant(body),
        first_source=_first_source(_options(body)),
    )


def provision(connect: Connect, settings: Settings, vault: Vault, verifier: Callable[[], sources.Verifier],
              redis_connection: redis.Redis, partner: Partner, request: ProvisionRequest) -> Provisioned:
    """Create the resource ``request`` asks for, or find the one an earlier identical request made.

    A Heroku request with an OAuth grant (and a client secret to exchange it with) makes the
    resource ``provisioning`` and queues :func:`complete`; any other is ready at once.
    Forge credentials in the options are verified with Atlassian before anything is written, and
    only for a new resource: a replay answers as the first request did, without calling Atlassian.
    """
    resource_id = request.resource_id
    if request.first_source is not None:
        with connect() as conn:
            existing = resources.get(conn, resource_id)
        if existing is None:
            refusal = sources.verify(verifier(), request.first_source)
            if refusal is not None:
                raise RequestRefused(
                    refusal.http_status,
                    f"the Forge source in the options could not be registered: {refusal.message}",
                    refusal.retry_after)

    # An integrator that sends no drain token gets one issued and returned
    # (a replay returns the one stored by the first request).
    drain_token = request.log_drain_token
    issued = drain_token is None and not partner.is_heroku
    if issued:
        drain_token = tokens.new_drain_token()
    asynchronous = (request.grant is not None and partner.is_heroku
                    and settings.heroku_client_secret is not None)
    state = "provisioning" if asynchronous else "provisioned"
    digest = tokens.digest(tokens.api_token(settings.secret_key, resource_id, 1))
    actor = f"partner:{partner.id}"

    with connect() as conn, conn.transaction():
        resource = resources.insert(
            conn, resource_id=resource_id, partner_id=partner.id, name=request.name,
            plan=request.plan.name, region=request.region, callback_url=request.callback_url, state=state,
            log_drain_token=drain_token, api_token_digest=digest,
            grant_code_enc=vault.encrypt(request.grant[0]) if asynchronous else None,
            grant_expires_at=request.grant[1] if asynchronous else None,
        )
        created = resource is not None
        if created:
            if request.log_input_url:
                resources.insert_heroku_drain(conn, resource_id, vault.encrypt(request.log_input_url),
                                              tokens.new_drain_token())
            audit.record(conn, resource_id, actor, "resource.provisioned",
                         {"plan": request.plan.name, "region": request.region, "asynchronous": asynchronous,
                          "log_drain_token": tokens.mask(drain_token),
                          "log_input": request.log_input_url is not None})
            if request.first_source is not None:
                source = sources.insert(conn, resource_id, request.first_source,
                                        vault.encrypt(request.first_source["api_token"]))
                audit.record(conn, resource_id, actor, "source.created",
                             {"source_id": str(source["id"]), "app_id": source["app_id"],
                              "environment_id": source["environment_id"]})
        else:
            resource = resources.get(conn, resource_id)
            if resource is None:
                # The insert conflicted, but not on this id: the drain token is taken.
                raise RequestRefused(422, "log_drain_token is already used by another resource")

    if resource["partner_id"] != partner.id:
        raise RequestRefused(409, "uuid is already used by another partner's resource")
    if resource["state"] == "deprovisioned":
        raise RequestRefused(410, "this resource was deprovisioned")
    if resource["state"] == "failed":
        raise RequestRefused(422, f"provisioning failed: {resource['provision_error']}")
    if created and asynchronous:
        try:
            jobs.enqueue_provision(redis_connection, str(resource_id))
        except redis.RedisError:
            # The clock's tick enqueues due provisions, so this only delays it.
            log.warning("provision resource=%s not enqueued: redis unavailable", resource_id)
    if created:
        log.info("provision resource=%s partner=%s plan=%s state=%s", resource_id, partner.id,
                 request.plan.name, state)
    return Provisioned(resource, issued)


def _optional_text(body: dict, key: str, limit: int = MAX_TEXT) -> str | None:
    """A printable string of at most ``limit`` characters: no NUL, line break or other control
    character, and no lone surrogate (valid JSON, but not text PostgreSQL can store)."""
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > limit or not value.isprintable() or not _is_text(value):
        raise RequestRefused(422, f"{key} must be printable text of at most {limit} characters")
    return value


def _is_text(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _callback_url(body: dict) -> str | None:
    """Heroku's callback_url is only recorded, never called: an http(s) URL with a host, no spaces."""
    value = _optional_text(body, "callback_url", MAX_URL)
    if value is None:
        return None
    try:
        parts = urlsplit(value)
        ok = parts.scheme in ("https", "http") and bool(parts.hostname) and " " not in value
    except ValueError:
        ok = False
    if not ok:
        raise RequestRefused(422, "callback_url must be an http(s) URL")
    return value


def _uuid(body: dict) -> uuid.UUID:
    value = body.get("uuid")
    if value is None or value == "":
        raise RequestRefused(422, "uuid is required")
    message = "uuid must be a UUID such as 01234567-89ab-cdef-0123-456789abcdef"
    if not isinstance(value, str):
        raise RequestRefused(422, message)
    try:
        return uuid.UUID(value)
    except ValueError:
        raise RequestRefused(422, message) from None


def _plan(body: dict) -> plans.Plan:
    value = body.get("plan")
    if value is None or value == "":
        raise RequestRefused(422, "plan is required")
    plan = plans.get(value)
    if plan is None:
        shown = value if isinstance(value, str) and len(value) <= 40 else "given"
        raise RequestRefused(422, f"unknown plan {shown!r}; plans are {plans.names()}")
    return plan


def _region(body: dict) -> str | None:
    value = body.get("region")
    if value is None:
        return None
    if not isinstance(value, str) or value not in REGIONS:
        raise RequestRefused(422, "region is not supported; supported regions are amazon-web-services::"
                                  "<us-east-1, eu-west-1, …> (Heroku's names) or us, eu")
    return value


def _drain_token(body: dict) -> str | None:
    value = body.get("log_drain_token")
    if value is None:
        return None
    if not isinstance(value, str) or not DRAIN_TOKEN.match(value):
        raise RequestRefused(422, "log_drain_token must be 1 to 200 printable characters without spaces")
    return value


def _log_input_url(body: dict, allow_private_drains: bool) -> str | None:
    value = body.get("log_input_url")
    if value is None:
        return None
    try:
        parts = urlsplit(value) if isinstance(value, str) else None
        schemes = ("https", "http") if allow_private_drains else ("https",)
        ok = (parts is not None and parts.scheme in schemes and bool(parts.hostname)
              and value.isprintable() and " " not in value)
    except ValueError:
        ok = False
    if not ok or len(value) > MAX_URL:
        # Plain http only where private drains are allowed (tests, private networks), like every drain.
        raise RequestRefused(422, "log_input_url must be an http(s) URL" if allow_private_drains
                             else "log_input_url must be an https URL")
    return value


def _grant(body: dict) -> tuple[str, datetime] | None:
    value = body.get("oauth_grant")
    if value is None:
        return None
    if not isinstance(value, dict):
        raise RequestRefused(422, "oauth_grant must be an object with code and expires_at")
    code, expires = value.get("code"), value.get("expires_at")
    if not isinstance(code, str) or not code or len(code) > 1024 or not (code.isascii() and code.isprintable()):
        raise RequestRefused(422, "oauth_grant.code must be a non-empty string of printable ASCII")
    try:
        expires_at = datetime.fromisoformat(expires.replace("Z", "+00:00"))
        if expires_at.tzinfo is None:
            raise ValueError
    except (AttributeError, ValueError, TypeError):
        raise RequestRefused(422, "oauth_grant.expires_at must be an ISO 8601 time with a zone") from None
    return code, expires_at


def _options(body: dict) -> dict:
    value = body.get("options")
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RequestRefused(422, "options must be an object")
    return value


def _first_source(options: dict) -> dict | None:
    """Forge credentials passed as provisioning options (``heroku addons:create forgedrain
    --app_id=… --environment_id=… --email=… --api_token=…``), validated; None when absent."""
    given = {k: options[k] for k in FORGE_OPTIONS if options.get(k) not in (None, "")}
    if not given:
        return None
    missing = [k for k in FORGE_OPTIONS if k not in given]
    if missing:
        raise RequestRefused(422, "options " + ", ".join(FORGE_OPTIONS) + " go together to register a "
                                  "Forge source; missing: " + ", ".join(missing))
    try:
        return sources.validate(given).values
    except InputError as exc:
        raise RequestRefused(422, f"options: {exc.message}") from None


# --- 2. complete an asynchronous provision ------------------------------------------------

def complete(connect, settings: Settings, vault: Vault, session: requests.Session,
             resource_id: uuid.UUID | str) -> str:
    """Drive one resource's asynchronous provisioning as far as it goes; return the outcome.

    ``connect`` opens a database connection; none is held across HTTP calls.
    """
    with connect() as conn:
        row = resources.get(conn, resource_id)
        if row is None or row["state"] != "provisioning":
            return "nothing-to-do"
        timing = resources.provision_timing(conn, resource_id, DEADLINE_HOURS, REFRESH_MARGIN_SECONDS)
    if timing["overdue"]:
        return _fail(connect, resource_id, f"not completed within {DEADLINE_HOURS} hours")

    generation = row["api_token_generation"]
    try:
        access = _access_token(connect, settings, vault, session, row, timing)
        if access is None:
            return _fail(connect, resource_id, "the OAuth grant expired before it could be exchanged")
        heroku.update_config(session, settings, str(resource_id), access,
                             resource_config(settings, resource_id, generation))
        heroku.mark_provisioned(session, settings, str(resource_id), access)
    except HerokuError as exc:
        if not exc.retryable:
            return _fail(connect, resource_id, str(exc))
        delay = backoff_seconds(row["provision_attempts"])
        with connect() as conn, conn.transaction():
            resources.provision_retry_later(conn, resource_id, delay, str(exc))
        log.warning("provision resource=%s retry_in=%.0fs reason=%s", resource_id, delay, exc)
        return "retry"

    with connect() as conn, conn.transaction():
        if resources.provision_done(conn, resource_id):
            audit.record(conn, resource_id, "broker", "provision.completed", {})
        # Heroku has this generation's config now; a rotation since stays pending.
        resources.config_push_done(conn, resource_id, generation)
    log.info("provision resource=%s completed", resource_id)
    return "provisioned"


def log_drain_url(settings: Settings) -> str:
    """Where Heroku's logplex sends the app's own logs: the provision answer's ``log_drain_url``."""
    return f"{settings.public_url}/ingest/logplex"


def access_token(connect, settings: Settings, vault: Vault, session: requests.Session,
                 resource_id: uuid.UUID | str) -> str | None:
    """The resource's usable Heroku access token, refreshed when stale; None when it has none."""
    with connect() as conn:
        row = resources.get(conn, resource_id)
        timing = resources.provision_timing(conn, resource_id, DEADLINE_HOURS, REFRESH_MARGIN_SECONDS)
    if row is None or row["oauth_access_token_enc"] is None:
        return None
    return _access_token(connect, settings, vault, session, row, timing)


def _access_token(connect, settings: Settings, vault: Vault, session: requests.Session,
                  row: dict, timing: dict) -> str | None:
    """A usable access token, exchanging the grant or refreshing as needed; None if the grant expired."""
    resource_id = row["id"]
    if row["oauth_access_token_enc"] is None:
        if row["oauth_grant_code_enc"] is None or timing["grant_expired"]:
            return None
        token_set = heroku.exchange_grant(session, settings, vault.decrypt(row["oauth_grant_code_enc"]))
    elif timing["token_stale"] and row["oauth_refresh_token_enc"]:
        token_set = heroku.refresh(session, settings, vault.decrypt(row["oauth_refresh_token_enc"]))
    else:
        return vault.decrypt(row["oauth_access_token_enc"])
    with connect() as conn, conn.transaction():
        resources.store_oauth_tokens(
            conn, resource_id, vault.encrypt(token_set.access_token),
            vault.encrypt(token_set.refresh_token) if token_set.refresh_token else None,
            token_set.expires_in,
        )
    return token_set.access_token


def _fail(connect, resource_id: uuid.UUID | str, reason: str) -> str:
    with connect() as conn, conn.transaction():
        if resources.provision_failed(conn, resource_id, reason):
            audit.record(conn, resource_id, "broker", "provision.failed", {"reason": reason})
    log.warning("provision resource=%s failed reason=%s", resource_id, reason)
    return "failed"


# --- 3. push the config after a token rotation ---------------------------------------------

def push_config(connect, settings: Settings, vault: Vault, session: requests.Session,
                resource_id: uuid.UUID | str) -> str:
    """Send the resource's current config to Heroku if a push is due; return the outcome.

    Only resources Heroku provisioned with an OAuth grant have a token to do
    this with; integrators receive the new token in the rotation's answer.
    The push is done only for the generation Heroku accepted: a rotation while
    it was on its way stays pending. A transient failure is tried again after a
    growing delay (the tick enqueues it); a refusal stops it, with the reason in
    the audit log, until the next rotation.
    """
    with connect() as conn:
        due = resources.due_config_push(conn, resource_id)
        if due is None:
            return "nothing-to-do"
        row = resources.get(conn, resource_id)
        timing = resources.provision_timing(conn, resource_id, DEADLINE_HOURS, REFRESH_MARGIN_SECONDS)
    generation = due["generation"]
    try:
        access = _access_token(connect, settings, vault, session, row, timing)
        if access is None:  # deprovisioned since
            return "nothing-to-do"
        heroku.update_config(session, settings, str(resource_id), access,
                             resource_config(settings, resource_id, generation))
    except HerokuError as exc:
        if exc.retryable:
            delay = backoff_seconds(due["attempts"])
            with connect() as conn, conn.transaction():
                resources.config_push_retry_later(conn, resource_id, generation, delay, str(exc))
            log.warning("config push resource=%s generation=%d retry_in=%.0fs reason=%s", resource_id,
                        generation, delay, exc)
            return "retry"
        with connect() as conn, conn.transaction():
            if resources.config_push_refused(conn, resource_id, generation, str(exc)):
                audit.record(conn, resource_id, "broker", "config_push.refused",
                             {"generation": generation, "reason": str(exc)})
        log.warning("config push resource=%s generation=%d refused reason=%s", resource_id, generation, exc)
        return "refused"
    with connect() as conn, conn.transaction():
        newer = resources.config_push_done(conn, resource_id, generation)
    log.info("config push resource=%s generation=%d%s", resource_id, generation,
             " (a newer rotation is pending)" if newer else "")
    return "pushed"


# --- 4. change plan, deprovision ---------------------------------------------------------

@dataclass(frozen=True)
class PlanChange:
    plan: str
    changed: bool  # False: the resource was on that plan already


def change_plan(connect: Connect, partner: Partner, resource_id: str, body: dict) -> PlanChange:
    """Move the partner's resource to the plan ``body`` names if its sources and drains fit
    (:class:`RequestRefused` otherwise)."""
    plan = _plan(body)
    with connect() as conn, conn.transaction():
        row = _owned(conn, resource_id, partner)
        if row["plan"] == plan.name:
            return PlanChange(plan.name, changed=False)
        source_count, drain_count = resources.usage(conn, row["id"])
        excess = plans.excess(plan, source_count, drain_count)
        if excess:
            raise RequestRefused(422, f"plan {plan.name} is too small for this resource: remove "
                                      + " and ".join(excess) + " first")
        resources.set_plan(conn, row["id"], plan.name)
        audit.record(conn, row["id"], f"partner:{partner.id}", "resource.plan_changed",
                     {"from": row["plan"], "to": plan.name})
    log.info("plan change resource=%s from=%s to=%s", row["id"], row["plan"], plan.name)
    return PlanChange(plan.name, changed=True)


def deprovision(connect: Connect, partner: Partner, resource_id: str) -> None:
    """Deprovision the partner's resource: every secret erased, rows kept for the audit trail."""
    with connect() as conn, conn.transaction():
        row = _owned(conn, resource_id, partner, gone="this resource was already deprovisioned")
        resources.deprovision(conn, row["id"])
        audit.record(conn, row["id"], f"partner:{partner.id}", "resource.deprovisioned", {})
    log.info("deprovision resource=%s partner=%s", row["id"], partner.id)


def _owned(conn: psycopg.Connection, resource_id: str, partner: Partner,
           gone: str = "this resource was deprovisioned") -> dict:
    """The partner's live resource, locked for the change: 404 when it does not exist or belongs to
    another partner (which must not learn it exists), 410 with ``gone`` when deprovisioned."""
    try:
        parsed = uuid.UUID(resource_id)
    except ValueError:
        raise RequestRefused(404, "no such resource") from None
    row = resources.get_for_update(conn, parsed)
    if row is None or row["partner_id"] != partner.id:
        raise RequestRefused(404, "no such resource")
    if row["state"] == "deprovisioned":
        raise RequestRefused(410, gone)
    return row
