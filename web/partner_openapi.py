"""The OpenAPI 3.1 document of the partner's view, ``/partner/v1`` (issue 17 item 2).

Written by hand next to the routes it describes (web/partner.py); a test checks every route is
documented and that answers match their schemas.
"""

from __future__ import annotations

from broker import fleet, plans, usage

ERROR = {
    "type": "object",
    "required": ["error", "message"],
    "properties": {
        "error": {"type": "string", "description": "Stable machine-readable code."},
        "message": {"type": "string", "description": "What went wrong, for a human."},
        "parameter": {"type": "string", "description": "The query parameter at fault (400)."},
    },
}

TIME = {"type": ["string", "null"], "format": "date-time"}
COUNT = {"type": "integer", "minimum": 0}

RESOURCE = {
    "type": "object",
    "required": ["id", "name", "state", "plan", "region", "created_at", "provisioned_at", "deprovisioned_at",
                 "health"],
    "properties": {
        "id": {"type": "string", "format": "uuid"},
        "name": {"type": ["string", "null"]},
        "state": {"enum": list(fleet.STATES)},
        "plan": {"type": "string"},
        "region": {"type": ["string", "null"]},
        "created_at": {"type": "string", "format": "date-time"},
        "provisioned_at": TIME,
        "deprovisioned_at": TIME,
        "health": {
            "type": "object",
            "required": ["status", "problems", "sources", "drains", "oldest_undelivered_at"],
            "properties": {
                "status": {"enum": list(fleet.HEALTH),
                           "description": "ok: provisioned and nothing needs a look; attention: a source paused "
                                          "or over capacity, a drain failing, or delivery more than "
                                          f"{fleet.BEHIND_MINUTES} minutes behind; inactive: not provisioned."},
                "problems": {"type": "array", "items": {"type": "string"},
                             "description": "What needs a look, in words."},
                "sources": {"type": "object", "required": ["active", "paused", "over_capacity"],
                            "properties": {"active": COUNT, "paused": COUNT, "over_capacity": COUNT}},
                "drains": {"type": "object", "required": ["total", "enabled", "failing"],
                           "properties": {"total": COUNT, "enabled": COUNT, "failing": COUNT}},
                "oldest_undelivered_at": {**TIME, "description": "When the oldest batch an enabled drain has "
                                                                 "not yet received was stored; null when none."},
            },
        },
    },
}

BY_KIND = {"type": "object", "required": list(usage.DRAIN_KINDS),
           "properties": {kind: COUNT for kind in usage.DRAIN_KINDS}}
RECEIVED = {"type": "object", "required": ["records", "bytes"], "properties": {"records": COUNT, "bytes": COUNT}}

USAGE = {
    "type": "object",
    "required": ["from", "to", "next_after", "days"],
    "properties": {
        "from": {"type": "string", "format": "date"},
        "to": {"type": "string", "format": "date"},
        "next_after": {"type": ["string", "null"],
                       "description": "Pass as `after` for the next page of resources; null on the last."},
        "days": {"type": "array", "items": {
            "type": "object",
            "required": ["resource_id", "day", "received", "delivered", "dropped"],
            "properties": {
                "resource_id": {"type": "string", "format": "uuid"},
                "day": {"type": "string", "format": "date", "description": "A UTC day with any usage."},
                "received": {"type": "object", "required": ["forge", "ingest"],
                             "properties": {"forge": RECEIVED, "ingest": RECEIVED},
                             "description": "Records stored: Forge pages (bytes as JSON), and what the app sent "
                                            "to drain ingest (logplex frames and OTLP requests, bytes as "
                                            "received)."},
                "delivered": {**BY_KIND, "description": "Records receivers accepted, per drain kind."},
                "dropped": {**BY_KIND, "description": "Records given up on, per drain kind: older than the "
                                                      "plan's backlog, or refused for good by the receiver."},
            },
        }},
    },
}


def _query(name: str, description: str, schema: dict) -> dict:
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema}


def _error(description: str) -> dict:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


AFTER = _query("after", "Resource id the previous page ended with (`next_after`).",
               {"type": "string", "format": "uuid"})
UNAUTHORIZED = _error("Missing or wrong partner credentials.")
BAD_PARAMETER = _error("A query parameter is unknown, repeated or out of range.")


def document(public_url: str) -> dict:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Forge Drain partner's view",
            "version": "1",
            "description": "A partner's resources with their health, and their usage per UTC day, for running "
                           "and billing the partner's own customers. The same HTTP Basic credentials as the Add-on "
                           "Partner API (/heroku/resources); a partner sees only its own resources.",
        },
        "servers": [{"url": public_url}],
        "security": [{"basic": []}],
        "components": {
            "securitySchemes": {"basic": {"type": "http", "scheme": "basic",
                                          "description": "Partner id and password (Heroku: ADDON_ID and one of "
                                                         "ADDON_PASSWORDS)."}},
            "schemas": {"Error": ERROR, "Resource": RESOURCE, "Usage": USAGE},
        },
        "paths": {
            "/partner/v1/resources": {"get": {
                "operationId": "listResources",
                "summary": "The partner's resources by id, a page at a time.",
                "parameters": [
                    _query("state", "Only resources in this state.", {"enum": list(fleet.STATES)}),
                    _query("plan", "Only resources on this plan.", {"enum": sorted(plans.PLANS)}),
                    _query("health", "Only resources of this health.", {"enum": list(fleet.HEALTH)}),
                    _query("limit", "At most this many (default 50).", {"type": "integer", "minimum": 1,
                                                                        "maximum": 200}),
                    AFTER,
                ],
                "responses": {
                    "200": {"description": "A page of resources.", "content": {"application/json": {"schema": {
                        "type": "object", "required": ["resources", "next_after"],
                        "properties": {"resources": {"type": "array",
                                                     "items": {"$ref": "#/components/schemas/Resource"}},
                                       "next_after": {"type": ["string", "null"]}}}}}},
                    "400": BAD_PARAMETER, "401": UNAUTHORIZED,
                },
            }},
            "/partner/v1/resources/{id}": {"get": {
                "operationId": "getResource",
                "summary": "One of the partner's resources.",
                "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {
                    "200": {"description": "The resource.", "content": {"application/json": {
                        "schema": {"$ref": "#/components/schemas/Resource"}}}},
                    "400": BAD_PARAMETER, "401": UNAUTHORIZED,
                    "404": _error("No such resource of this partner."),
                },
            }},
            "/partner/v1/usage": {"get": {
                "operationId": "getUsage",
                "summary": "Usage per resource and UTC day, as JSON or CSV (format=csv or Accept: text/csv). "
                           "Pages go by resource: `limit` resources (default 100), then `after`; the CSV answer "
                           "names the next page in a Link header (rel=next).",
                "parameters": [
                    _query("from", "First UTC day (default: 29 days before `to`).",
                           {"type": "string", "format": "date"}),
                    _query("to", "Last UTC day (default: today); at most 92 days in all.",
                           {"type": "string", "format": "date"}),
                    _query("resource_id", "Only this resource.", {"type": "string", "format": "uuid"}),
                    _query("limit", "Resources per page.", {"type": "integer", "minimum": 1, "maximum": 1000}),
                    AFTER,
                    _query("format", "json (default) or csv.", {"enum": ["json", "csv"]}),
                ],
                "responses": {
                    "200": {"description": "Usage days with any usage.", "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Usage"}},
                        "text/csv": {"schema": {"type": "string"}}}},
                    "400": BAD_PARAMETER, "401": UNAUTHORIZED,
                    "404": _error("No such resource of this partner."),
                },
            }},
            "/partner/v1/openapi.json": {"get": {
                "operationId": "getOpenAPI",
                "summary": "This document.",
                "responses": {"200": {"description": "The OpenAPI document.",
                                      "content": {"application/json": {"schema": {"type": "object"}}}},
                              "401": UNAUTHORIZED},
            }},
        },
    }
