"""Drains that follow the service (issue 17 item 1, SPEC §11).

Heroku makes each add-on's log drain from the ``log_drain_url`` of the provision
answer, and nothing moves it afterwards: when ``PUBLIC_URL`` changes, every app
keeps posting to the old address. Drains tied to the add-on's token exist so that
the partner can move them with the Platform API (``PUT /addons/{addon}/log-drains/
{token}``, research heroku-addon-and-logplex.md §2.2 and §6), using the OAuth token
Heroku gave for the add-on.

:func:`sync` walks the Heroku partner's provisioned resources that have a drain
token and are not known to be at the current URL, reads the add-on's drains, and
moves the one carrying the resource's ``log_drain_token``. What Heroku holds is
recorded per resource (``resources.log_drain_url``), so an interrupted run, or a
second one, calls Heroku only for resources not yet there. Each move is audited.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Callable, Iterator

import requests

from broker import audit, heroku, provisioning, resources
from broker.config import Settings
from broker.heroku import HerokuError
from broker.vault import Vault

log = logging.getLogger(__name__)

PAGE = 200

MOVED, AT_URL, WOULD_MOVE, NO_TOKEN, NO_DRAIN, FAILED = (
    "moved", "already there", "would move", "no OAuth token", "no drain at Heroku", "failed")
# What the operator can do about each outcome that leaves a drain where it was.
WHAT_TO_DO = {
    NO_TOKEN: "Heroku gave the broker no OAuth token for this add-on (provisioned without a grant, or "
              "before HEROKU_CLIENT_SECRET was set), so the broker cannot move its drain: keep the old "
              "address answering /ingest/logplex until the owner removes and re-adds the add-on",
    NO_DRAIN: "Heroku lists no drain with this add-on's drain token: the app has no log drain from the "
              "add-on to move (it was removed, or the add-on was never attached to a drain)",
    FAILED: "run the command again later: the next run retries only the resources not yet moved",
}


@dataclass(frozen=True)
class Outcome:
    resource_id: uuid.UUID
    result: str
    previous_url: str | None = None
    reason: str | None = None


def pending(connect, settings: Settings) -> int:
    """How many resources are not known to have their drain at the current URL."""
    with connect() as conn:
        return resources.count_log_drains_to_sync(conn, settings.addon_id, provisioning.log_drain_url(settings))


def sync(connect, settings: Settings, vault: Vault, session: requests.Session, *, actor: str,
         dry_run: bool = False) -> Iterator[Outcome]:
    """Move every add-on's drain to the current ``log_drain_url``; yield one :class:`Outcome` per resource.

    With ``dry_run`` the drains are read (an access token may be refreshed) but
    nothing is moved or recorded.
    """
    url = provisioning.log_drain_url(settings)
    after = None
    while True:
        with connect() as conn:
            page = resources.log_drains_to_sync(conn, settings.addon_id, url, after, PAGE)
        for row in page:
            yield _one(connect, settings, vault, session, row, url, actor, dry_run)
        if len(page) < PAGE:
            return
        after = page[-1]["id"]


def _one(connect, settings: Settings, vault: Vault, session: requests.Session, row: dict, url: str,
         actor: str, dry_run: bool) -> Outcome:
    resource_id = row["id"]
    if not row["has_oauth"]:
        return Outcome(resource_id, NO_TOKEN)
    try:
        access = provisioning.access_token(connect, settings, vault, session, resource_id)
        if access is None:
            return Outcome(resource_id, NO_TOKEN)
        ours = [d for d in heroku.log_drains(session, settings, str(resource_id), access)
                if d.get("token") == row["log_drain_token"]]
        if not ours:
            return Outcome(resource_id, NO_DRAIN)
        previous = ours[0].get("url")
        if previous == url:
            if not dry_run:
                _record(connect, resource_id, url, None, actor)
            return Outcome(resource_id, AT_URL)
        if dry_run:
            return Outcome(resource_id, WOULD_MOVE, previous_url=previous)
        heroku.move_log_drain(session, settings, str(resource_id), access, row["log_drain_token"], url)
    except HerokuError as exc:
        log.warning("log drain sync resource=%s failed reason=%s", resource_id, exc)
        return Outcome(resource_id, FAILED, reason=str(exc))
    _record(connect, resource_id, url, previous, actor)
    log.info("log drain sync resource=%s moved", resource_id)
    return Outcome(resource_id, MOVED, previous_url=previous)


def _record(connect: Callable, resource_id: uuid.UUID, url: str, previous: str | None, actor: str) -> None:
    with connect() as conn, conn.transaction():
        resources.log_drain_seen(conn, resource_id, url)
        if previous is not None:
            audit.record(conn, resource_id, actor, "log_drain.moved", {"from": previous, "to": url})
