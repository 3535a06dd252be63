"""A partner's view of its fleet (issue 17 item 2, SPEC §11): its resources with their health, a page at a time.

Health comes from the same state the dashboard and ``status`` show: sources
active, paused (Atlassian refused them) or over capacity (the app logs more than
the App logs API lets the broker export); enabled drains failing (their last
attempt failed); and the oldest outbox batch some enabled drain has not yet
received, which says how far behind delivery is. A resource is ``ok`` when it is
provisioned and none of these needs a look, ``attention`` when one does, and
``inactive`` when it is not provisioned (provisioning, failed, deprovisioned).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import psycopg

from broker.outbox import RECEIVES

STATES = ("provisioning", "provisioned", "failed", "deprovisioned")
HEALTH = ("ok", "attention", "inactive")
# A delivery behind by more than this needs a look, even when no attempt failed.
BEHIND_MINUTES = 15

RESOURCES = f"""
SELECT * FROM (
    SELECT r.id, r.name, r.state, r.plan, r.region, r.created_at, r.provisioned_at, r.deprovisioned_at,
           s.active, s.paused, s.over_capacity, d.drains, d.enabled, d.failing, b.oldest_undelivered,
           CASE WHEN r.state <> 'provisioned' THEN 'inactive'
                WHEN s.paused > 0 OR s.over_capacity > 0 OR d.failing > 0
                     OR b.oldest_undelivered < now() - make_interval(mins => %(behind)s) THEN 'attention'
                ELSE 'ok' END AS health
    FROM resources r
    CROSS JOIN LATERAL (
        SELECT count(*) FILTER (WHERE state = 'active' AND over_capacity_since IS NULL) AS active,
               count(*) FILTER (WHERE state = 'paused') AS paused,
               count(*) FILTER (WHERE state = 'active' AND over_capacity_since IS NOT NULL) AS over_capacity
        FROM sources WHERE resource_id = r.id) s
    CROSS JOIN LATERAL (
        SELECT count(*) AS drains, count(*) FILTER (WHERE enabled) AS enabled,
               count(*) FILTER (WHERE enabled AND (consecutive_failures > 0 OR secret_lost_at IS NOT NULL))
                   AS failing
        FROM drains WHERE resource_id = r.id) d
    CROSS JOIN LATERAL (
        SELECT min(first.created_at) AS oldest_undelivered
        FROM drains d
        CROSS JOIN LATERAL (SELECT o.created_at FROM outbox o
                            WHERE o.resource_id = d.resource_id AND o.id > d.cursor AND {RECEIVES}
                            ORDER BY o.id LIMIT 1) first
        WHERE d.resource_id = r.id AND d.enabled AND r.state = 'provisioned') b
    WHERE r.partner_id = %(partner)s
      AND (%(resource)s::uuid IS NULL OR r.id = %(resource)s::uuid)
      AND (%(state)s::text IS NULL OR r.state = %(state)s::text)
      AND (%(plan)s::text IS NULL OR r.plan = %(plan)s::text)
      AND (%(after)s::uuid IS NULL OR r.id > %(after)s::uuid)
) resource
WHERE %(health)s::text IS NULL OR health = %(health)s::text
ORDER BY id
LIMIT %(limit)s
"""


@dataclass(frozen=True)
class Resource:
    id: uuid.UUID
    name: str | None
    state: str
    plan: str
    region: str | None
    created_at: datetime
    provisioned_at: datetime | None
    deprovisioned_at: datetime | None
    health: str
    sources_active: int
    sources_paused: int
    sources_over_capacity: int
    drains: int
    drains_enabled: int
    drains_failing: int
    oldest_undelivered: datetime | None

    def problems(self) -> list[str]:
        """What needs a look, in words."""
        said = []
        for count, words in ((self.sources_paused, "source paused"),
                             (self.sources_over_capacity, "source over capacity"),
                             (self.drains_failing, "drain failing")):
            if count:
                said.append(f"{count} {words}" if count == 1 else f"{count} {words.replace(' ', 's ', 1)}")
        if self.health == "attention" and not said:
            said.append(f"delivery more than {BEHIND_MINUTES} minutes behind")
        return said


def page(conn: psycopg.Connection, partner_id: str, *, limit: int, after: uuid.UUID | None = None,
         state: str | None = None, plan: str | None = None, health: str | None = None,
         resource_id: uuid.UUID | None = None) -> list[Resource]:
    """The partner's resources by id after ``after``, at most ``limit``, filtered by state, plan and health."""
    rows = conn.execute(RESOURCES, {"partner": partner_id, "resource": resource_id, "state": state, "plan": plan,
                                    "health": health, "after": after, "limit": limit,
                                    "behind": BEHIND_MINUTES}).fetchall()
    return [Resource(r["id"], r["name"], r["state"], r["plan"], r["region"], r["created_at"], r["provisioned_at"],
                     r["deprovisioned_at"], r["health"], r["active"], r["paused"], r["over_capacity"], r["drains"],
                     r["enabled"], r["failing"], r["oldest_undelivered"]) for r in rows]


def owned(conn: psycopg.Connection, partner_id: str, resource_ids: list[uuid.UUID]) -> list[uuid.UUID]:
    """Those of ``resource_ids`` that belong to the partner."""
    return [r["id"] for r in conn.execute("SELECT id FROM resources WHERE partner_id = %s AND id = ANY(%s) "
                                          "ORDER BY id", (partner_id, resource_ids))]


def ids(conn: psycopg.Connection, partner_id: str, *, limit: int, after: uuid.UUID | None) -> list[uuid.UUID]:
    """The partner's resource ids after ``after``, at most ``limit``."""
    return [r["id"] for r in conn.execute(
        "SELECT id FROM resources WHERE partner_id = %s AND (%s::uuid IS NULL OR id > %s::uuid) ORDER BY id LIMIT %s",
        (partner_id, after, after, limit))]
