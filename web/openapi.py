"""The OpenAPI 3.1 document for everything under ``/v1``.

Written by hand next to the routes it describes; a test checks that every
``/v1`` route is documented and that responses match their schemas.
"""

from __future__ import annotations

ERROR = {
    "type": "object",
    "required": ["error", "message"],
    "properties": {
        "error": {"type": "string", "description": "Stable machine-readable code."},
        "message": {"type": "string", "description": "What went wrong, for a human."},
    },
}

LIMITS = {
    "type": "object",
    "required": ["max_sources", "max_drains", "poll_interval_seconds", "backlog_hours"],
    "properties": {
        "max_sources": {"type": "integer"},
        "max_drains": {"type": "integer", "description": "Not counting the built-in heroku drain."},
        "poll_interval_seconds": {"type": "integer"},
        "backlog_hours": {"type": "integer"},
    },
}

DRAIN = {
    "type": "object",
    "required": ["id", "kind", "token", "enabled"],
    "properties": {
        "id": {"type": "string", "format": "uuid"},
        "kind": {"type": "string", "enum": ["heroku", "logplex", "syslog", "otlp"]},
        "token": {"type": "string", "description": "Broker-issued d.<uuid> identifying the drain."},
        "enabled": {"type": "boolean"},
    },
}

RESOURCE = {
    "type": "object",
    "required": ["id", "plan", "limits", "state", "drains", "created_at"],
    "properties": {
        "id": {"type": "string", "format": "uuid"},
        "name": {"type": ["string", "null"]},
        "plan": {"type": "string", "enum": ["test", "basic", "pro"]},
        "limits": LIMITS,
        "state": {"type": "string", "enum": ["provisioning", "provisioned", "failed"]},
        "region": {"type": ["string", "null"]},
        "provision_error": {"type": ["string", "null"]},
        "log_drain_token": {"type": ["string", "null"],
                            "description": "Heroku's drain token for this resource, masked."},
        "drains": {"type": "array", "items": DRAIN},
        "created_at": {"type": "string", "format": "date-time"},
        "provisioned_at": {"type": ["string", "null"], "format": "date-time"},
    },
}


def _error_response(description: str) -> dict:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def document(public_url: str) -> dict:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Forge Drain resource API",
            "version": "1",
            "description": "Manage one Forge Drain resource with its FORGEDRAIN_TOKEN. "
                           "FORGEDRAIN_URL is this API's base for the resource: "
                           "<server>/v1/resources/<id>.",
        },
        "servers": [{"url": public_url}],
        "security": [{"bearer": []}],
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "The resource's FORGEDRAIN_TOKEN."}},
            "schemas": {"Error": ERROR, "Resource": RESOURCE, "Limits": LIMITS, "Drain": DRAIN},
        },
        "paths": {
            "/v1/resources/{id}": {
                "get": {
                    "operationId": "getResource",
                    "summary": "The resource: plan, limits, state and drains.",
                    "parameters": [{"name": "id", "in": "path", "required": True,
                                    "schema": {"type": "string"}}],
                    "responses": {
                        "200": {"description": "The resource.",
                                "content": {"application/json": {
                                    "schema": {"$ref": "#/components/schemas/Resource"}}}},
                        "401": _error_response("Missing or invalid bearer token."),
                        "404": _error_response("No such resource for this token."),
                    },
                }
            },
            "/v1/resources/{id}/token": {
                "post": {
                    "operationId": "rotateToken",
                    "summary": "Issue a new FORGEDRAIN_TOKEN (shown once). The previous token keeps "
                               "working for two hours; Heroku apps get the new one in their config.",
                    "parameters": [{"name": "id", "in": "path", "required": True,
                                    "schema": {"type": "string"}}],
                    "responses": {
                        "200": {"description": "The new token.",
                                "content": {"application/json": {"schema": {
                                    "type": "object",
                                    "required": ["token", "previous_token_valid_until"],
                                    "properties": {
                                        "token": {"type": "string"},
                                        "previous_token_valid_until": {"type": "string",
                                                                       "format": "date-time"},
                                    }}}}},
                        "401": _error_response("Missing or invalid bearer token."),
                        "404": _error_response("No such resource for this token."),
                    },
                }
            },
            "/v1/openapi.json": {
                "get": {
                    "operationId": "getOpenAPI",
                    "summary": "This document.",
                    "security": [],
                    "responses": {"200": {"description": "The OpenAPI document.",
                                          "content": {"application/json": {"schema": {"type": "object"}}}}},
                }
            },
        },
    }
