"""Asynchronous provisioning: finish what a 202 answer promised Heroku.

When Heroku provisions with an ``oauth_grant``, the partner API answers 202
at once and this module completes the add-on (research heroku-addon-and-logplex
§2.3):

1. exchange the grant code for tokens before it expires (minutes), store them
   encrypted;
2. push ``FORGEDRAIN_URL`` / ``FORGEDRAIN_TOKEN`` with ``PATCH /addons/<id>/config``
   (harmless if the 202 body's config was already applied; it makes sure it is);
3. ``POST /addons/<id>/actions/provision``, which makes Heroku release the app.

Each step is idempotent, so a crash anywhere is repaired by running
:func:`complete` again. A transient failure records the attempt and a
back-off time in PostgreSQL; the clock's tick re-enqueues resources whose
time has come. A refusal that cannot heal (the grant was rejected or expired,
or Heroku's 12-hour limit passed) marks the resource ``failed`` with the
reason, visible in the audit log and the resource API.

After a token rotation :func:`push_config` sends the new config to Heroku. The
pending push is stored in PostgreSQL (the resource's token generation is ahead
of the one Heroku accepted), so a flushed Redis loses nothing: the tick
enqueues due pushes like due provisions.
"""

from __future__ import annotations

import logging
import random
import uuid

import requests

from broker import audit, heroku, resources, tokens
from broker.config import Settings
from broker.heroku import HerokuError
from broker.vault import Vault

log = logging.getLogger(__name__)

# Heroku deletes an add-on that answered 202 and never reported "provisioned"
# after 12 hours (Dev Center getting-started-with-asynchronous-provisioning).
DEADLINE_HOURS = 12
# Refresh an access token this long before it expires, so no call races expiry.
REFRESH_MARGIN_SECONDS = 300
BACKOFF_BASE_SECONDS = 5
BACKOFF_MAX_SECONDS = 600

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
