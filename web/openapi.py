"""The OpenAPI 3.1 document for everything under ``/v1``.

Written by hand next to the routes it describes; a test checks that every
``/v1`` route is documented and that responses match their schemas.
"""

from __future__ import annotations

from broker import rules

ERROR = {
    "type": "object",
    "required": ["error", "message"],
    "properties": {
        "error": {"type": "string", "description": "Stable machine-readable code."},
        "message": {"type": "string", "description": "What went wrong, for a human."},
        "field": {"type": "string", "description": "The field at fault (422)."},
        "problems": {"type": "array", "description": "invalid_rules: every problem of the submitted rules.",
                     "items": {"type": "object", "required": ["field", "message"], "properties": {
                         "field": {"type": "string"}, "message": {"type": "string"}}}},
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
        "config_push": {
            "type": ["object", "null"],
            "description": "Whether Heroku has the resource's current config (FORGEDRAIN_TOKEN) after a rotation; "
                           "null when the broker pushes no config for it.",
            "properties": {
                "pending": {"type": "boolean"},
                "error": {"type": ["string", "null"],
                          "description": "Why Heroku refused the last push; retried at the next rotation."},
                "next_attempt_at": {"type": ["string", "null"], "format": "date-time"},
            },
        },
        "ingest": {
            "type": "object",
            "description": "What the Heroku app's log drain sent to log_drain_url over the last 24 hours "
                           "(GET /v1/resources/{id} only).",
            "properties": {
                "hours": {"type": "integer"}, "batches": {"type": "integer"}, "frames": {"type": "integer"},
                "stored": {"type": "integer", "description": "Records stored for delivery to the drains."},
                "own_dropped": {"type": "integer",
                                "description": "Frames the broker itself wrote into the app's log stream, "
                                               "dropped so nothing loops."},
                "replays": {"type": "integer", "description": "Batches sent again with the same "
                                                              "Logplex-Frame-Id, stored once."},
                "last_received_at": {"type": ["string", "null"], "format": "date-time"},
                "throttled": {"type": "integer",
                              "description": "429 answers over the plan's ingest volume (frames and bytes a "
                                             "minute); nothing of a refused batch is stored."},
                "refused_batches": {"type": "integer", "description": "Batches refused over the volume, "
                                                                      "each Logplex-Frame-Id once."},
                "refused_frames": {"type": "integer"},
                "refused_bytes": {"type": "integer", "description": "Bytes of refused batches, after gzip."},
                "last_throttled_at": {"type": ["string", "null"], "format": "date-time"},
            },
        },
    },
}

OTLP_GUIDE = {
    "url": {"type": "string", "description": "POST OTLP/HTTP logs here (protobuf or JSON, gzip or not): "
                                             "<PUBLIC_URL>/ingest/otlp/v1/logs."},
    "endpoint": {"type": "string", "description": "The same without /v1/logs, for senders that append it "
                                                  "(a Collector's otlphttp exporter, OTEL_EXPORTER_OTLP_ENDPOINT, "
                                                  "heroku telemetry:add); both paths take logs."},
    "header": {"type": "string", "description": "The header carrying the ingest token "
                                                "(Authorization: Bearer works too)."},
    "command": {"type": "string", "description": "The exact heroku telemetry:add command."},
}
RESOURCE["properties"]["otlp_ingest"] = {
    "type": "object",
    "description": "How an app sends its logs over OTLP (Heroku Fir telemetry drains, any SDK or Collector), "
                   "and what came in over the last 24 hours (GET /v1/resources/{id} only). The ingest token "
                   "itself is shown only where it is issued: the provision answer's message and "
                   "POST /v1/resources/{id}/ingest-token.",
    "properties": {
        **OTLP_GUIDE,
        "token": {"type": "string", "description": "Where the ingest token is shown."},
        "token_generation": {"type": "integer"},
        "received": {"type": "object", "description": "As ingest, for OTLP requests: batches are requests, "
                                                      "frames records, own_dropped the broker's own records "
                                                      "refused with partial success; the refusals are the "
                                                      "resource's (one volume limit for both ingests)."},
    },
}


LEVELS = ["TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL"]

SOURCE_INPUT = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "app_id": {"type": "string", "description": "Forge app id (developer console); an "
                                                     "ari:cloud:ecosystem::app/<id> is accepted too."},
        "environment_id": {"type": "string"},
        "email": {"type": "string", "format": "email",
                  "description": "Account that owns the API token (a bot account is best)."},
        "api_token": {"type": "string", "writeOnly": True,
                      "description": "Atlassian API token; stored encrypted, never returned."},
        "levels": {"type": "array", "items": {"type": "string", "enum": LEVELS},
                   "description": "Only these levels; empty means all."},
        "installation_contexts": {"type": "array", "maxItems": 50, "items": {"type": "string"},
                                  "description": "Only these sites (ARIs); empty means all."},
        "service_name": {"type": ["string", "null"], "maxLength": 100},
        "environment_label": {"type": ["string", "null"], "maxLength": 100},
        "include_arguments": {"type": "boolean",
                              "description": "Forward Forge's `arguments` attribute (off by default)."},
    },
}

SOURCE = {
    "type": "object",
    "required": ["id", "app_id", "environment_id", "email", "api_token", "levels",
                 "installation_contexts", "include_arguments", "state", "created_at", "updated_at",
                 "capacity", "unreadable"],
    "properties": {
        **{k: v for k, v in SOURCE_INPUT["properties"].items() if k != "api_token"},
        "id": {"type": "string", "format": "uuid"},
        "api_token": {"type": ["string", "null"], "description": "Masked: the last four characters."},
        "state": {"type": "string", "enum": ["active", "paused"]},
        "pause_reason": {"type": ["string", "null"], "enum": ["auth_failed", "not_found", "bad_request", None]},
        "last_error": {"type": ["string", "null"]},
        "verified_at": {"type": ["string", "null"], "format": "date-time"},
        "created_at": {"type": "string", "format": "date-time"},
        "updated_at": {"type": "string", "format": "date-time"},
        "polling": {
            "type": "object",
            "description": "Where polling stands: every record before `checkpoint` is stored.",
            "properties": {
                "checkpoint": {"type": "string", "format": "date-time"},
                "settled_until": {"type": "string", "format": "date-time",
                                  "description": "Every record before this has been read again once it was "
                                                 "`FORGE_POLL_OVERLAP_SECONDS` old, so records that reached the "
                                                 "API late are stored too."},
                "lag_seconds": {"type": ["number", "null"],
                                "description": "How long before now this source's fresh windows end, when "
                                               "Atlassian was seen to show its records later than the "
                                               "configured lag; null means the configured lag."},
                "next_poll_at": {"type": "string", "format": "date-time"},
                "last_poll_at": {"type": ["string", "null"], "format": "date-time"},
                "last_success_at": {"type": ["string", "null"], "format": "date-time"},
                "consecutive_failures": {"type": "integer"},
                "backfill": {"type": ["object", "null"], "properties": {
                    "from": {"type": "string", "format": "date-time"},
                    "until": {"type": "string", "format": "date-time"},
                    "progress": {"type": "number", "minimum": 0, "maximum": 1}}},
            },
        },
        "capacity": {
            "type": "object",
            "required": ["over_capacity", "since", "density_per_minute", "capacity_per_minute",
                         "records_per_page"],
            "description": "Whether the app logs more than the App logs API lets Forge Drain export "
                           "(its share of Atlassian's 30 calls a minute per app × records per page). "
                           "Over capacity, the source keeps polling as fast as the budget allows but "
                           "falls behind; what falls past 14 days is recorded in `gaps`. Fewer `levels`, "
                           "`installation_contexts` filters or less logging bring it back.",
            "properties": {
                "over_capacity": {"type": "boolean"},
                "since": {"type": ["string", "null"], "format": "date-time",
                          "description": "When the source went over capacity (null when it is not)."},
                "density_per_minute": {"type": ["number", "null"],
                                       "description": "Records the app logs per minute, as measured "
                                                      "(null until measured)."},
                "capacity_per_minute": {"type": ["number", "null"],
                                        "description": "The most records a minute Forge Drain can export "
                                                       "for this app (null until measured)."},
                "records_per_page": {"type": ["integer", "null"],
                                     "description": "The App logs API's page size as this source has seen it."},
            },
        },
        "unreadable": {
            "type": "object",
            "required": ["count", "sample", "last_seen_at"],
            "description": "Records the App logs API returned that could not be decoded: counted and "
                           "skipped so the rest of their window is stored.",
            "properties": {
                "count": {"type": "integer", "minimum": 0, "description": "Since the source was created."},
                "sample": {"type": ["string", "null"],
                           "description": "The latest one, redacted and shortened, to show what went wrong."},
                "last_seen_at": {"type": ["string", "null"], "format": "date-time"},
            },
        },
        "gaps": {
            "type": "array",
            "description": "Time ranges whose logs could not be fetched (single-source reads only).",
            "items": {"type": "object", "properties": {
                "from": {"type": "string", "format": "date-time"},
                "until": {"type": "string", "format": "date-time"},
                "reason": {"type": "string"},
                "recorded_at": {"type": "string", "format": "date-time"}}},
        },
    },
}


def _json(schema_ref: str, description: str) -> dict:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema_ref}"}}}}


def _source_paths() -> dict:
    resource_param = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
    source_param = {"name": "source_id", "in": "path", "required": True, "schema": {"type": "string"}}
    common = {"401": _error_response("Missing or invalid bearer token."),
              "404": _error_response("No such resource or source for this token.")}
    refusals = {
        "400": _error_response("The body is not a JSON object."),
        "422": _error_response("A field is invalid, the plan limit is reached, or Atlassian refused "
                               "the credentials or ids (the message says which)."),
        "502": _error_response("Atlassian's API could not be reached; nothing was saved."),
        "503": _error_response("Atlassian is rate limiting the app (`rate_limited`), or the app's shared "
                               "call budget is spent (`forge_budget_spent`: nothing was sent to Atlassian); "
                               "nothing was saved. `Retry-After` says when to try again.",
                               headers=RETRY_AFTER),
    }
    body = {"required": True, "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/SourceInput"}}}}
    return {
        "/v1/resources/{id}/sources": {
            "parameters": [resource_param],
            "get": {"operationId": "listSources", "summary": "The resource's Forge sources.",
                    "responses": {"200": {"description": "The sources.", "content": {"application/json": {
                        "schema": {"type": "object", "required": ["sources"], "properties": {
                            "sources": {"type": "array", "items": {"$ref": "#/components/schemas/Source"}}}}}}},
                        **common}},
            "post": {"operationId": "createSource",
                     "summary": "Register a Forge source; the credentials are verified first "
                                "(app_id, environment_id, email and api_token are required).",
                     "requestBody": body,
                     "responses": {"201": _json("Source", "The source."), **common, **refusals,
                                   "409": _error_response("That app environment is already a source.")}},
        },
        "/v1/resources/{id}/sources/{source_id}": {
            "parameters": [resource_param, source_param],
            "get": {"operationId": "getSource", "summary": "One source.",
                    "responses": {"200": _json("Source", "The source."), **common}},
            "patch": {"operationId": "updateSource",
                      "summary": "Change fields; new credentials or ids are verified first, and a "
                                 "paused source resumes once they are.",
                      "requestBody": body,
                      "responses": {"200": _json("Source", "The source."), **common, **refusals,
                                    "409": _error_response("That app environment is already a source.")}},
            "delete": {"operationId": "deleteSource", "summary": "Stop pulling this source.",
                       "responses": {"204": {"description": "Deleted."}, **common}},
        },
        "/v1/resources/{id}/sources/{source_id}/backfill": {
            "parameters": [resource_param, source_param],
            "post": {"operationId": "backfillSource",
                     "summary": "Re-poll from a past time (at most 14 days back); records in that range "
                                "are delivered again. Progress shows in polling.backfill.",
                     "requestBody": {"required": True, "content": {"application/json": {"schema": {
                         "type": "object", "required": ["from"],
                         "properties": {"from": {"type": "string", "format": "date-time"}}}}}},
                     "responses": {"202": _json("Source", "Backfill started."), **common,
                                   "400": refusals["400"],
                                   "422": _error_response("from is not a past time within 14 days.")}},
        },
        "/v1/resources/{id}/sources/{source_id}/verify": {
            "parameters": [resource_param, source_param],
            "post": {"operationId": "verifySource",
                     "summary": "Check the stored credentials now: success resumes a paused source, "
                                "a refusal pauses it with the reason.",
                     "responses": {"200": {"description": "The outcome.", "content": {"application/json": {
                         "schema": {"type": "object", "required": ["source", "verification"], "properties": {
                             "source": {"$ref": "#/components/schemas/Source"},
                             "verification": {"type": "object", "required": ["ok", "message"], "properties": {
                                 "ok": {"type": "boolean"}, "message": {"type": "string"}}}}}}}},
                         **common,
                         "502": refusals["502"], "503": refusals["503"]}},
        },
    }


def _names(maximum: int, length: int, description: str) -> dict:
    return {"type": "array", "maxItems": maximum, "description": description,
            "items": {"type": "string", "minLength": 1, "maxLength": length}}


RULES = {
    "type": "object",
    "additionalProperties": False,
    "description": "Which records this drain receives and what is redacted from them, applied at delivery "
                   "after decoding and before formatting. A record is kept when it passes every rule given; "
                   "an empty list, or leaving a rule out, keeps everything. Changes apply from the drain's "
                   "next delivery turn. Counted per drain as delivery.filtered and delivery.redacted.",
    "properties": {
        "origins": {"type": "array", "items": {"type": "string", "enum": list(rules.ORIGINS)},
                    "description": "forge: records polled from the App logs API; heroku: the Heroku app's own "
                                   "logs (drain ingest)."},
        "sources": {"type": "array", "maxItems": rules.MAX_ENTRIES,
                    "items": {"type": "string", "format": "uuid"},
                    "description": "Forge records only from these sources of this resource."},
        "heroku_apps": _names(rules.MAX_ENTRIES, 48, "Heroku lines only with these APP-NAMEs (app, heroku)."),
        "processes": _names(rules.MAX_ENTRIES, 48, "Heroku lines only from these process types: PROCID "
                                                   "before its first '.' (web of web.1, router)."),
        "min_severity": {"type": ["string", "null"], "enum": [*rules.LEVELS, None],
                         "description": "Only records at this level or above (a record without a level "
                                        "counts as INFO). Not with levels."},
        "levels": {"type": "array", "items": {"type": "string", "enum": list(rules.LEVELS)},
                   "description": "Only records at these levels. Not with min_severity."},
        "services": _names(rules.MAX_GLOBS, rules.MAX_GLOB_CHARS,
                           "Globs (*, ?, [seq], [!seq]; case-sensitive) on service.name: the source's service "
                           "name, else forge-app-<app id>; a Heroku line's APP-NAME."),
        "redact": {
            "type": "object",
            "additionalProperties": False,
            "description": "Applied to bodies and to every string attribute value; a match becomes "
                           "[redacted:<detector or pattern name>].",
            "properties": {
                "detectors": {"type": "array", "items": {"type": "string", "enum": list(rules.DETECTORS)},
                              "description": "email; bearer (Authorization bearer tokens); jwt; "
                                             "atlassian_token (ATATT…/ATCTT…); card (13–19 digits passing "
                                             "the Luhn check); ipv4; ipv6."},
                "patterns": {"type": "array", "maxItems": rules.MAX_PATTERNS, "items": {
                    "type": "object", "required": ["name", "regex"], "additionalProperties": False,
                    "properties": {
                        "name": {"type": "string", "pattern": "^[a-z0-9_-]{1,32}$"},
                        "regex": {"type": "string", "minLength": 1, "maxLength": rules.MAX_PATTERN_CHARS,
                                  "description": "RE2 syntax (linear time): no backreferences or "
                                                 "lookaround."}}},
                    "description": "The owner's patterns, replaced by [redacted:<name>]."},
                "drop_attributes": _names(rules.MAX_ENTRIES, rules.MAX_ATTRIBUTE_CHARS,
                                          "Attribute keys to remove: Forge's (installationContext) or as OTLP "
                                          "drains show them (forge.installation_context)."),
            },
        },
    },
}

RULES_INPUT = {**RULES, "type": ["object", "null"], "description": RULES["description"] + " null: no rules."}

DRAIN_INPUT = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "kind": {"type": "string", "enum": ["logplex", "syslog", "otlp"],
                 "description": "Fixed once created."},
        "url": {"type": "string", "writeOnly": True,
                "description": "logplex: https://[user:pass@]host/path; syslog: syslog+tls://host:port; "
                               "otlp: an https base URL or the full /v1/logs URL."},
        "name": {"type": ["string", "null"], "maxLength": 100},
        "enabled": {"type": "boolean"},
        "encoding": {"type": "string", "enum": ["json", "protobuf"], "description": "otlp only"},
        "gzip": {"type": "boolean", "description": "otlp only"},
        "headers": {"type": "object", "additionalProperties": {"type": "string"}, "writeOnly": True,
                    "description": "otlp only: custom headers (API keys), stored encrypted."},
        "sd_id": {"type": ["string", "null"], "description": "syslog only: SD-ID name@<PEN> for Forge metadata."},
        "rules": {"$ref": "#/components/schemas/RulesInput"},
    },
}

DRAIN_FULL = {
    "type": "object",
    "required": ["id", "kind", "token", "enabled", "settings", "delivery", "created_at"],
    "properties": {
        "id": {"type": "string", "format": "uuid"},
        "kind": {"type": "string", "enum": ["heroku", "logplex", "syslog", "otlp"]},
        "name": {"type": ["string", "null"]},
        "url": {"type": ["string", "null"], "description": "Password masked; null for the heroku drain."},
        "token": {"type": "string", "description": "d.<uuid> identifying the drain to its receiver."},
        "enabled": {"type": "boolean"},
        "settings": {"type": "object"},
        "headers": {"type": "object", "description": "Header names, values masked."},
        "rules": {"$ref": "#/components/schemas/Rules"},
        "delivery": {"type": "object", "properties": {
            "delivered": {"type": "integer"}, "retried": {"type": "integer"}, "dropped": {"type": "integer"},
            "rejected": {"type": "integer"},
            "filtered": {"type": "integer", "description": "Records the drain's rules kept from it."},
            "redacted": {"type": "integer", "description": "Values the drain's rules redacted (matches "
                                                           "replaced, attributes dropped)."},
            "consecutive_failures": {"type": "integer"},
            "last_error": {"type": ["string", "null"]}, "backlog": {"type": "integer", "description": "Records stored that this drain will receive and has "
                                                           "not yet (the heroku drain never receives the app's own), "
                                                           "those its rules will filter out included: they are "
                                                           "known only as a batch is delivered."},
            "last_delivery_at": {"type": ["string", "null"], "format": "date-time"},
            "next_attempt_at": {"type": "string", "format": "date-time"},
            "secret_lost_at": {"type": ["string", "null"], "format": "date-time",
                               "description": "Set while the drain's URL or headers cannot be decrypted "
                                              "(their key left FERNET_KEYS): PATCH them again."}}},
        "created_at": {"type": "string", "format": "date-time"},
        "updated_at": {"type": "string", "format": "date-time"},
    },
}


TEST_RESULT = {
    "type": "object",
    "required": ["delivered", "record"],
    "properties": {
        "delivered": {"type": "boolean"},
        "status": {"type": ["integer", "null"], "description": "The receiver's HTTP status, if any."},
        "error": {"type": "string"},
        "message": {"type": "string", "description": "Why it was not accepted."},
        "retryable": {"type": "boolean", "description": "Whether a delivery would retry (true) or drop (false)."},
        "record": {"type": "object", "properties": {
            "invocation_id": {"type": "string"},
            "message": {"type": "string", "description": "The message as sent: redacted by the drain's rules."},
            "time": {"type": "string", "format": "date-time"}}},
        "rules": {"type": "object", "description": "What the drain's rules did to the test record.",
                  "properties": {
                      "filtered": {"type": "boolean", "description": "The rules would keep this record from "
                                                                    "deliveries; the test sent it anyway."},
                      "redacted": {"type": "integer", "description": "Values the rules redacted in it."}}},
    },
}


# The optional body of "send a test record / notice".
TEST_BODY = {"required": False, "content": {"application/json": {"schema": {
    "type": "object", "additionalProperties": False,
    "properties": {"message": {"type": "string", "minLength": 1, "maxLength": 1000}}}}}}


def _drain_paths() -> dict:
    resource_param = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
    drain_param = {"name": "drain_id", "in": "path", "required": True, "schema": {"type": "string"}}
    common = {"401": _error_response("Missing or invalid bearer token."),
              "404": _error_response("No such resource or drain for this token.")}
    invalid = {"400": _error_response("The body is not a JSON object."),
               "422": _error_response("A field is invalid or the plan's drain limit is reached; "
                                      "`invalid_rules`: the rules have problems, each listed in `problems` "
                                      "with its field path (`rules.redact.patterns[0].regex`).")}
    body = {"required": True, "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/DrainInput"}}}}
    one = _json("DrainFull", "The drain.")
    return {
        "/v1/resources/{id}/drains": {
            "parameters": [resource_param],
            "get": {"operationId": "listDrains", "summary": "The resource's drains.",
                    "responses": {"200": {"description": "The drains.", "content": {"application/json": {
                        "schema": {"type": "object", "properties": {"drains": {
                            "type": "array", "items": {"$ref": "#/components/schemas/DrainFull"}}}}}}},
                        **common}},
            "post": {"operationId": "createDrain",
                     "summary": "Add a drain; it receives what is stored from now on.",
                     "requestBody": body, "responses": {"201": one, **common, **invalid}},
        },
        "/v1/resources/{id}/drains/{drain_id}": {
            "parameters": [resource_param, drain_param],
            "get": {"operationId": "getDrain", "summary": "One drain with its delivery counters and backlog.",
                    "responses": {"200": one, **common}},
            "patch": {"operationId": "updateDrain", "summary": "Change a drain (the heroku drain: name, "
                                                               "enabled and rules only).",
                      "requestBody": body, "responses": {"200": one, **common, **invalid}},
            "delete": {"operationId": "deleteDrain", "summary": "Remove a drain (not the heroku drain).",
                       "responses": {"204": {"description": "Deleted."}, **common,
                                     "422": _error_response("The heroku drain cannot be deleted.")}},
        },
        "/v1/resources/{id}/drains/{drain_id}/test": {
            "parameters": [resource_param, drain_param],
            "post": {"operationId": "testDrain",
                     "summary": "Send one test record through the drain now, in its own format; the "
                                "drain's cursor and counters do not change.",
                     "description": "The drain's rules redact the test record as they would a delivered "
                                    "one; a record they would filter out is sent anyway, and `rules.filtered` "
                                    "says so. `invalid_rules` (422): the drain's stored rules no longer "
                                    "compile; nothing was sent.",
                     "requestBody": TEST_BODY,
                     "responses": {
                         "200": {"description": "The receiver accepted the record.",
                                 "content": {"application/json": {"schema": TEST_RESULT}}},
                         "502": {"description": "The receiver did not accept it; message says why.",
                                 "content": {"application/json": {"schema": TEST_RESULT}}},
                         **common, **invalid}},
        },
        "/v1/resources/{id}/drains/{drain_id}/token": {
            "parameters": [resource_param, drain_param],
            "post": {"operationId": "rotateDrainToken", "summary": "Issue the drain a new d.<uuid> token.",
                     "responses": {"200": one, **common}},
        },
    }


ALERT = {
    "type": "object",
    "required": ["id", "condition", "subject_id", "subject_name", "detail", "raised_at", "recovered_at", "message"],
    "properties": {
        "id": {"type": "integer"},
        "condition": {"type": "string", "enum": ["source_paused", "source_over_capacity", "drain_failing",
                                                 "drain_backlog", "records_dropped", "gap_recorded"]},
        "subject_id": {"type": "string", "format": "uuid", "description": "The source or drain it is about."},
        "subject_name": {"type": "string", "description": "How the owner knows the subject, as it was when raised."},
        "detail": {"type": ["string", "null"], "description": "A pause reason, a count, a backlog size."},
        "raised_at": {"type": "string", "format": "date-time"},
        "recovered_at": {"type": ["string", "null"], "format": "date-time", "description": "null while open."},
        "message": {"type": ["string", "null"], "description": "The words of its latest notice, with what to do."},
    },
}

ALERT_WEBHOOK = {
    "type": "object",
    "required": ["host", "delivery", "created_at", "updated_at"],
    "properties": {
        "host": {"type": ["string", "null"],
                 "description": "Where the webhook points (the URL itself is never shown: it is often a key); "
                                "null when it can no longer be decrypted: PUT it again."},
        "secret": {"type": "string", "description": "PUT only: the new signing secret, shown this once."},
        "delivery": {"type": "object", "properties": {
            "pending": {"type": "integer", "description": "Notices not delivered yet."},
            "delivered": {"type": "integer"},
            "dropped": {"type": "integer", "description": "Notices the receiver refused with a 4xx (not 429)."},
            "retried": {"type": "integer"}, "consecutive_failures": {"type": "integer"},
            "last_error": {"type": ["string", "null"]},
            "last_delivery_at": {"type": ["string", "null"], "format": "date-time"},
            "next_attempt_at": {"type": "string", "format": "date-time"}}},
        "created_at": {"type": "string", "format": "date-time"},
        "updated_at": {"type": "string", "format": "date-time"},
    },
}

WEBHOOK_TEST_RESULT = {**TEST_RESULT, "required": ["delivered"],
                       "properties": {k: v for k, v in TEST_RESULT["properties"].items() if k != "record"}}


def _alert_paths() -> dict:
    resource_param = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
    common = {"401": _error_response("Missing or invalid bearer token."),
              "404": _error_response("No such resource for this token, or no alert webhook is set.")}
    changes = {"403": _error_response("The previous token may only read."),
               "409": _error_response("The resource's provisioning failed: it takes no changes."),
               "410": _error_response("The resource was deprovisioned: it takes no changes.")}
    one = _json("AlertWebhook", "The alert webhook.")
    return {
        "/v1/resources/{id}/alerts": {
            "parameters": [resource_param],
            "get": {"operationId": "listAlerts",
                    "summary": "The resource's open alerts and its latest 50 (open or recovered), newest first.",
                    "responses": {"200": {"description": "The alerts.", "content": {"application/json": {
                        "schema": {"type": "object", "required": ["open", "recent"], "properties": {
                            "open": {"type": "array", "items": {"$ref": "#/components/schemas/Alert"}},
                            "recent": {"type": "array", "items": {"$ref": "#/components/schemas/Alert"}}}}}}},
                        **common}},
        },
        "/v1/resources/{id}/alert-webhook": {
            "parameters": [resource_param],
            "get": {"operationId": "getAlertWebhook", "summary": "Where the alert webhook points and how "
                                                                 "its delivery stands.",
                    "responses": {"200": one, **common}},
            "put": {"operationId": "setAlertWebhook",
                    "summary": "Set (201) or replace (200) the alert webhook, with a new signing secret shown "
                               "in this answer only. A new webhook gets the notices from now on.",
                    "requestBody": {"required": True, "content": {"application/json": {"schema": {
                        "type": "object", "required": ["url"], "additionalProperties": False,
                        "properties": {"url": {"type": "string", "writeOnly": True,
                                               "description": "https://… (stored encrypted)."}}}}}},
                    "responses": {"200": one, "201": one, **common, **changes,
                                  "400": _error_response("The body is not a JSON object."),
                                  "422": _error_response("The url is invalid.")}},
            "delete": {"operationId": "deleteAlertWebhook", "summary": "Remove the alert webhook.",
                       "responses": {"204": {"description": "Removed."}, **common, **changes}},
        },
        "/v1/resources/{id}/alert-webhook/test": {
            "parameters": [resource_param],
            "post": {"operationId": "testAlertWebhook",
                     "summary": "Send a signed test notice (change and condition `test`) now; the webhook's "
                                "cursor and counters do not change.",
                     "requestBody": TEST_BODY,
                     "responses": {
                         "200": {"description": "The receiver accepted the notice.",
                                 "content": {"application/json": {"schema": WEBHOOK_TEST_RESULT}}},
                         "502": {"description": "The receiver did not accept it; message says why.",
                                 "content": {"application/json": {"schema": WEBHOOK_TEST_RESULT}}},
                         "429": _error_response("Another test or verification of the resource is out, or its "
                                                "calls of the minute are spent; nothing was sent.",
                                                headers=RETRY_AFTER),
                         "400": _error_response("The body is not a JSON object."),
                         "422": _error_response("The message is invalid."),
                         **common, **changes}},
        },
    }


RETRY_AFTER = {"Retry-After": {"description": "Whole seconds to wait before trying again.",
                               "schema": {"type": "integer", "minimum": 1}}}


def _error_response(description: str, headers: dict | None = None) -> dict:
    response = {"description": description,
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    if headers:
        response["headers"] = headers
    return response


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
            "schemas": {"Error": ERROR, "Resource": RESOURCE, "Limits": LIMITS, "Drain": DRAIN,
                        "Source": SOURCE, "SourceInput": SOURCE_INPUT, "DrainInput": DRAIN_INPUT,
                        "DrainFull": DRAIN_FULL, "Rules": RULES, "RulesInput": RULES_INPUT,
                        "Alert": ALERT, "AlertWebhook": ALERT_WEBHOOK},
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
                               "reading (GET) for two hours, never changing anything; Heroku apps get the "
                               "new one in their config. Only the current token may rotate.",
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
                        "403": _error_response("The previous token may only read."),
                        "404": _error_response("No such resource for this token."),
                    },
                }
            },
            "/v1/resources/{id}/ingest-token": {
                "post": {
                    "operationId": "issueIngestToken",
                    "summary": "Issue a new OTLP ingest token (shown once, with the command that uses it); the "
                               "previous one stops at once. Only the current FORGEDRAIN_TOKEN may issue one.",
                    "parameters": [{"name": "id", "in": "path", "required": True,
                                    "schema": {"type": "string"}}],
                    "responses": {
                        "200": {"description": "The new ingest token and how to use it.",
                                "content": {"application/json": {"schema": {
                                    "type": "object",
                                    "required": ["token", "url", "endpoint", "header", "command"],
                                    "properties": {"token": {"type": "string"}, **OTLP_GUIDE}}}}},
                        "401": _error_response("Missing or invalid bearer token."),
                        "403": _error_response("The previous token may only read."),
                        "404": _error_response("No such resource for this token."),
                    },
                }
            },
            "/v1/resources/{id}/token/previous": {
                "delete": {
                    "operationId": "endTokenGrace",
                    "summary": "The previous FORGEDRAIN_TOKEN stops working now (after a leak, say).",
                    "parameters": [{"name": "id", "in": "path", "required": True,
                                    "schema": {"type": "string"}}],
                    "responses": {
                        "204": {"description": "The previous token no longer opens anything."},
                        "401": _error_response("Missing or invalid bearer token."),
                        "403": _error_response("The previous token may only read."),
                        "404": _error_response("No such resource, or no previous token in its grace period."),
                    },
                }
            },
            **_source_paths(),
            **_drain_paths(),
            **_alert_paths(),
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
