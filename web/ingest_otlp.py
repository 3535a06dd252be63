"""OTLP ingest: ``POST /ingest/otlp/v1/logs`` takes an app's logs over OTLP/HTTP (SPEC §11) — a Heroku
Fir telemetry drain (``heroku telemetry:add``), any OpenTelemetry SDK or Collector.

The resource is found by its ingest token only (``X-Forgedrain-Ingest-Token``, or ``Authorization:
Bearer``; :func:`broker.tokens.ingest_token`), never by the URL. The request is answered as the OTLP
specification says (research otlp-syslog-forge.md §1.5), in the request's own content type
(protobuf ``google.rpc.Status`` / ``ExportLogsServiceResponse``, or their JSON):

- 200, with ``partialSuccess`` when records were refused (the broker's own: nothing loops);
- 400 a body that cannot be read, 401 no valid ingest token, 413 over the size limits (as sent and
  inflated), 415 a content type or encoding other than protobuf/JSON and gzip;
- 429 with ``Retry-After`` over the plan's ingest volume (the logplex ingest's own limit: records
  count as frames, bytes as bytes), 503 with ``Retry-After`` when PostgreSQL is unavailable.

Nothing is stored on any refusal. As with logplex (``web.ingest``), no pooled connection is held
while the body arrives: the token is checked on a connection given back at once, then the body is
read, inflated and parsed, the volume checked in Redis, and only then a connection taken to store.
"""

from __future__ import annotations

import hashlib
import logging

import orjson
import psycopg
from flask import Blueprint, Response, request
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse

from broker import ingest, tokens
from broker.formats import otlp_ingest
from web import services
from web.errors import retry_after_header
from web.ingest import MAX_INFLATED_BYTES, inflate, note_refusal, record_refusals, volume

log = logging.getLogger(__name__)

bp = Blueprint("ingest_otlp", __name__)

BASE_PATH = "/ingest/otlp"
PATH = BASE_PATH + "/v1/logs"
# The header a telemetry drain sends (``heroku telemetry:add … --headers '{"<HEADER>": "<token>"}'``).
HEADER = "X-Forgedrain-Ingest-Token"
CONTENT_TYPES = {"application/x-protobuf": "protobuf", "application/json": "json"}
# The app-wide limit (web.MAX_CONTENT_LENGTH, 1 MiB) applies to the body as sent; inflated, it may be
# as large as logplex's (4 MiB): an SDK's batch (512 records) is far below, a Collector's should be
# capped (``send_batch_max_size``) to a few thousand records.
MAX_INFLATED = MAX_INFLATED_BYTES
# When PostgreSQL is unavailable: a client (the SDK, a Collector) retries after this.
UNAVAILABLE_RETRY_SECONDS = 5
# google.rpc.Code for each answer (clients must not branch on it, but it should say the same thing).
GRPC_CODES = {400: 3, 401: 16, 413: 8, 415: 3, 429: 8, 503: 14}


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def status_protobuf(code: int, message: str) -> bytes:
    """A ``google.rpc.Status`` (code 1, message 2), written by hand: its generated class is not a
    runtime dependency."""
    text = message.encode()
    return b"\x08" + _varint(code) + b"\x12" + _varint(len(text)) + text


def _encoding() -> str | None:
    return CONTENT_TYPES.get(request.headers.get("Content-Type", "").split(";")[0].strip().lower())


def refuse(status: int, code: str, message: str, headers: dict | None = None) -> Response:
    """An OTLP failure in the request's content type (JSON when it is neither)."""
    grpc = GRPC_CODES.get(status, 2)
    if _encoding() == "protobuf":
        return Response(status_protobuf(grpc, message), status=status, headers=headers,
                        content_type="application/x-protobuf")
    return Response(orjson.dumps({"code": grpc, "message": message, "error": code}), status=status,
                    headers=headers, content_type="application/json")


def accept(encoding: str, rejected: int, message: str) -> Response:
    """200 with an ``ExportLogsServiceResponse``: ``partialSuccess`` only when records were refused."""
    if encoding == "protobuf":
        answer = ExportLogsServiceResponse()
        if rejected:
            answer.partial_success.rejected_log_records = rejected
            answer.partial_success.error_message = message
        return Response(answer.SerializeToString(), status=200, content_type="application/x-protobuf")
    body = {"partialSuccess": {"rejectedLogRecords": str(rejected), "errorMessage": message}} if rejected else {}
    return Response(orjson.dumps(body), status=200, content_type="application/json")


@bp.errorhandler(413)
def _too_large(exc):
    return refuse(413, "too_large", "the body is larger than 1 MiB as sent; send smaller batches")


@bp.errorhandler(psycopg.OperationalError)
def _unavailable(exc):
    log.warning("otlp ingest: database unavailable: %s", type(exc).__name__)
    return refuse(503, "unavailable", "temporarily unavailable; nothing was stored, retry",
                  headers=retry_after_header(UNAVAILABLE_RETRY_SECONDS))


def _token() -> str:
    token = request.headers.get(HEADER, "").strip()
    if not token:
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        token = value.strip() if scheme.lower() == "bearer" else ""
    return token


def guide(public_url: str, token: str | None = None) -> dict:
    """How to send a resource's logs over OTLP: the URL, the header, and the exact Heroku command
    (with the token when given; a placeholder otherwise)."""
    endpoint = f"{public_url}{BASE_PATH}"
    headers = orjson.dumps({HEADER: token or "<ingest token>"}, option=orjson.OPT_NON_STR_KEYS).decode()
    return {"url": f"{public_url}{PATH}", "endpoint": endpoint, "header": HEADER,
            "command": f"heroku telemetry:add {endpoint} --signals logs --transport http --headers '{headers}'"}


# Senders differ on whether they append /v1/logs to the endpoint they are given (a Collector's
# otlphttp exporter and the SDKs' OTEL_EXPORTER_OTLP_ENDPOINT do, OTEL_EXPORTER_OTLP_LOGS_ENDPOINT
# does not): both the base and the full path take logs.
@bp.post(BASE_PATH)
@bp.post(PATH)
def logs():
    encoding = _encoding()
    if encoding is None:
        return refuse(415, "unsupported_media_type", "Content-Type must be application/x-protobuf or application/json")
    content_encoding = request.headers.get("Content-Encoding", "").strip().lower()
    if content_encoding not in ("", "identity", "gzip"):
        return refuse(415, "unsupported_encoding", "Content-Encoding may only be gzip")
    token = _token()
    resource_id = tokens.ingest_token_resource(token) if token else None
    svc = services()
    resource = None
    if resource_id is not None:
        with svc.db.connection() as conn:
            resource = ingest.resource_for_ingest_token(conn, resource_id)
    if resource is None or not tokens.ingest_token_valid(svc.settings.secret_key, token, resource["id"],
                                                         resource["ingest_token_generation"]):
        return refuse(401, "unauthorized", f"a valid ingest token is required in {HEADER} "
                                           "(or Authorization: Bearer)",
                      headers={"WWW-Authenticate": 'Bearer realm="forgedrain-ingest"'})
    sent = request.get_data(cache=False)
    body = sent
    try:
        if content_encoding == "gzip":
            body = inflate(sent, MAX_INFLATED)
            if body is None:
                return refuse(413, "too_large", f"the body inflates to more than {MAX_INFLATED} bytes; "
                                                "send smaller batches")
        parsed = otlp_ingest.parse(body, encoding)
    except (ingest.Malformed, otlp_ingest.Malformed) as exc:
        log.info("otlp ingest refused resource=%s reason=malformed", resource["id"])
        return refuse(400, "malformed", str(exc))
    limit = volume()
    # The limit counts a refused batch once by its id; OTLP has none, so a retried body is known by its digest.
    batch_id = "otlp:" + hashlib.blake2b(sent, digest_size=16).hexdigest()
    verdict = limit.check(resource["id"], resource["plan"], batch_id, parsed.records, len(body))
    if not verdict.admitted:
        allowance = note_refusal(resource, limit, verdict)
        return refuse(429, "rate_limited",
                      f"over this resource's ingest limit of {allowance.frames_per_minute} records and "
                      f"{allowance.bytes_per_minute} bytes per minute; nothing was stored, retry later",
                      headers=retry_after_header(verdict.retry_after))
    with svc.db.connection() as conn:
        ingest.store_otlp(conn, resource["id"], parsed)
        if verdict.pending:
            record_refusals(conn, limit, resource["id"])
    log.debug("otlp ingest resource=%s records=%d stored=%d own=%d", resource["id"], parsed.records,
              parsed.stored, parsed.own)
    return accept(encoding, parsed.own,
                  f"{parsed.own} records were refused: they came from Forge Drain itself (service.name "
                  f"{otlp_ingest.OWN_APP_NAME} or a Forge Drain drain), and taking them back would loop"
                  if parsed.own else "")
