"""OTLP/HTTP log requests received (``POST /ingest/otlp/v1/logs``): checked, then stored as they came,
and read into records of the broker's model at delivery (research otlp-syslog-forge.md §1).

An ``ExportLogsServiceRequest`` comes as binary protobuf (``application/x-protobuf``) or as OTLP/JSON
(``application/json``). Ingest keeps its work small (:func:`parse`): protobuf is parsed by the
generated classes (upb, in C); JSON is decoded and its structure walked; the records are counted and
the broker's own resources set aside. The payload stored is the body itself behind a one-byte tag
(``P`` protobuf, ``J`` JSON) — re-encoded only when some resources were set aside. Delivery turns a
payload into records (:func:`records`): each a Forge-shaped record (``timeUnixNano``,
``severityNumber``, ``body`` AnyValue, ``attributes`` KeyValues, hex ``traceId``/``spanId``) with an
``otlp`` part the formats use: the resource's attributes, the scope, and ``service.name``::

    {"timeUnixNano": "…", "observedTimeUnixNano": "…", "severityNumber": 9, "severityText": "INFO",
     "body": {"stringValue": "…"}, "attributes": [{"key": "http.route", "value": {"stringValue": "/"}}],
     "otlp": {"resource": [{"key": "service.name", …}], "scope": {"name": "…", "version": "…"},
              "service": "web"}}

**No loop.** A resource whose ``service.name`` is :data:`OWN_APP_NAME` (the broker's own lines, as it
writes them into an app's stream) or that carries ``forgedrain.drain.token`` (records that already
left through a Forge Drain OTLP drain: a drain pointed at this URL) is dropped and counted, so what
the broker sends never comes back in.

**Malformed** means what a receiver cannot read at all: protobuf that does not decode, JSON that is
not an object of the OTLP shape (lists where OTLP has lists, objects where it has messages, times as
integers or decimal strings, ``severityNumber`` an integer — OTLP/JSON forbids enum names). Values
inside (bodies, attribute values, ids) are read tolerantly, as the formats read Forge's: an invalid
trace id is kept as an attribute by the OTLP drain format, a bare JSON value becomes its AnyValue.
Unknown keys are ignored, as OTLP/JSON asks of receivers; snake_case keys are such keys.
"""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass

import orjson
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from broker.formats import fields
from broker.formats.logplex import OWN_APP_NAME

PROTOBUF, JSON = b"P", b"J"
# Records from a Forge Drain OTLP drain carry this resource attribute (broker/formats/otlp.py).
DRAIN_TOKEN_KEY = "forgedrain.drain.token"
UINT64 = 2**64


class Malformed(Exception):
    """The body is not an OTLP logs request; the message says where."""


@dataclass(frozen=True)
class Parsed:
    payload: bytes  # what to store (before compression): tag + the body, or re-encoded without own resources
    records: int    # log records in the request
    own: int        # of them, the broker's own (dropped)

    @property
    def stored(self) -> int:
        return self.records - self.own


def _own_pb(resource) -> bool:
    for kv in resource.attributes:
        if kv.key == DRAIN_TOKEN_KEY or (kv.key == "service.name" and kv.value.string_value == OWN_APP_NAME):
            return True
    return False


def _own_json(attributes: list) -> bool:
    for kv in attributes:
        key = kv.get("key")
        if key == DRAIN_TOKEN_KEY:
            return True
        if key == "service.name":
            value = kv.get("value")
            if type(value) is dict and value.get("stringValue") == OWN_APP_NAME:
                return True
    return False


def parse(body: bytes, encoding: str) -> Parsed:
    """Check a request (``encoding`` ``protobuf`` or ``json``), count its records and set the broker's
    own resources aside; :class:`Malformed` when it cannot be read."""
    if encoding == "protobuf":
        try:
            request = ExportLogsServiceRequest.FromString(body)
        except (DecodeError, RecursionError, ValueError) as exc:
            raise Malformed(f"the body is not a protobuf ExportLogsServiceRequest ({exc})") from None
        total = own = 0
        own_at = []
        for index, resource_logs in enumerate(request.resource_logs):
            count = sum(len(scope_logs.log_records) for scope_logs in resource_logs.scope_logs)
            total += count
            if _own_pb(resource_logs.resource):
                own += count
                own_at.append(index)
        if not own_at:
            return Parsed(PROTOBUF + body, total, 0)
        for index in reversed(own_at):
            del request.resource_logs[index]
        return Parsed(PROTOBUF + request.SerializeToString(), total, own)
    doc = _json_document(body)
    total = own = 0
    kept = []
    for resource_logs, attributes, scopes in _json_groups(doc):
        count = sum(len(records) for _, records in scopes)
        total += count
        if _own_json(attributes):
            own += count
        else:
            kept.append(resource_logs)
    if not own:
        return Parsed(JSON + body, total, 0)
    return Parsed(JSON + orjson.dumps({"resourceLogs": kept}), total, own)


# --- JSON: the structure, checked once and walked the same way at ingest and delivery ----------

def _json_document(body: bytes) -> dict:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise Malformed(f"the body is not valid JSON ({exc})") from None
    if type(doc) is not dict:
        raise Malformed("the body must be a JSON object (an ExportLogsServiceRequest)")
    return doc


def _list(parent: dict, key: str, where: str) -> list:
    value = parent.get(key)
    if value is None:
        return []
    if type(value) is not list:
        raise Malformed(f"{where}.{key} must be a list")
    return value


def _object(value, where: str) -> dict:
    if value is None:
        return {}
    if type(value) is not dict:
        raise Malformed(f"{where} must be an object")
    return value


def _json_groups(doc: dict):
    """(resourceLogs entry, resource attributes, [(scope, logRecords)]) for each entry, checked."""
    for i, resource_logs in enumerate(_list(doc, "resourceLogs", "body")):
        where = f"resourceLogs[{i}]"
        resource_logs = _object(resource_logs, where)
        resource = _object(resource_logs.get("resource"), f"{where}.resource")
        attributes = _attributes(resource, f"{where}.resource")
        scopes = []
        for j, scope_logs in enumerate(_list(resource_logs, "scopeLogs", where)):
            at = f"{where}.scopeLogs[{j}]"
            scope_logs = _object(scope_logs, at)
            scope = _object(scope_logs.get("scope"), f"{at}.scope")
            records = _list(scope_logs, "logRecords", at)
            for k, record in enumerate(records):
                _check_record(record, f"{at}.logRecords[{k}]")
            scopes.append((scope, records))
        yield resource_logs, attributes, scopes


def _attributes(parent: dict, where: str) -> list:
    items = _list(parent, "attributes", where)
    for n, item in enumerate(items):
        if type(item) is not dict or type(item.get("key")) is not str:
            raise Malformed(f"{where}.attributes[{n}] must be an object with a string key")
    return items


def _check_record(record, where: str) -> None:
    if type(record) is not dict:
        raise Malformed(f"{where} must be an object")
    for key in ("timeUnixNano", "observedTimeUnixNano"):
        value = record.get(key)
        if value is not None and _uint64(value) is None:
            raise Malformed(f"{where}.{key} must be a non-negative integer (a decimal string or a number)")
    number = record.get("severityNumber")
    if number is not None and (type(number) is not int or not 0 <= number < 2**31):
        raise Malformed(f"{where}.severityNumber must be an integer (OTLP/JSON forbids enum names)")
    for key in ("severityText", "traceId", "spanId", "eventName"):
        if record.get(key) is not None and type(record[key]) is not str:
            raise Malformed(f"{where}.{key} must be a string")
    _attributes(record, where)


def _uint64(value) -> int | None:
    if type(value) is str:
        if not (value.isascii() and value.isdigit()):
            return None
        value = int(value)
    elif type(value) is float and math.isfinite(value) and value.is_integer():
        value = int(value)
    if type(value) is not int or not 0 <= value < UINT64:
        return None
    return value


# --- delivery: a stored payload read into records ------------------------------------------------

def records(payload: bytes, received_nanos: int) -> list[dict]:
    """The records of a stored payload (:attr:`Parsed.payload`), in the broker's model (see above);
    a record with neither time nor observed time takes ``received_nanos``."""
    tag, body = payload[:1], payload[1:]
    out: list[dict] = []
    if tag == PROTOBUF:
        for resource_logs in ExportLogsServiceRequest.FromString(body).resource_logs:
            resource = [_pb_key_value(kv) for kv in resource_logs.resource.attributes]
            service = _service(resource)
            for scope_logs in resource_logs.scope_logs:
                part = {"resource": resource, "scope": _pb_scope(scope_logs.scope), "service": service}
                for log in scope_logs.log_records:
                    out.append(_pb_record(log, part, received_nanos))
        return out
    for _, attributes, scopes in _json_groups(_json_document(body)):
        resource = [pair for item in attributes if (pair := fields.key_value(item)) is not None]
        service = _service(resource)
        for scope, logs in scopes:
            part = {"resource": resource, "scope": _json_scope(scope), "service": service}
            for log in logs:
                out.append(_json_record(log, part, received_nanos))
    return out


def _service(resource: list[dict]) -> str | None:
    for kv in resource:
        if kv["key"] == "service.name":
            value = kv["value"]
            return fields.value_text(value) or None
    return None


def _record(time: int, observed: int, received: int, number: int, text: str, body: dict, attributes: list,
            trace: str, span: str, part: dict) -> dict:
    time = time or observed or received
    record = {"timeUnixNano": str(time), "observedTimeUnixNano": str(observed or received),
              "severityNumber": number, "body": body, "otlp": part}
    if text:
        record["severityText"] = text
    if attributes:
        record["attributes"] = attributes
    if trace:
        record["traceId"] = trace
    if span:
        record["spanId"] = span
    return record


def _json_scope(scope: dict) -> dict:
    out = {}
    for key in ("name", "version"):
        if type(scope.get(key)) is str and scope[key]:
            out[key] = scope[key]
    attributes = [pair for item in scope.get("attributes") or () if (pair := fields.key_value(item)) is not None] \
        if type(scope.get("attributes")) is list else []
    if attributes:
        out["attributes"] = attributes
    return out


def _json_record(log: dict, part: dict, received: int) -> dict:
    body = log.get("body")
    return _record(_uint64(log.get("timeUnixNano") or 0) or 0, _uint64(log.get("observedTimeUnixNano") or 0) or 0,
                   received, log.get("severityNumber") or 0, log.get("severityText") or "",
                   fields.any_value(body) if body is not None else {},
                   [pair for item in log.get("attributes") or () if (pair := fields.key_value(item)) is not None],
                   log.get("traceId") or "", log.get("spanId") or "", part)


def _pb_scope(scope) -> dict:
    out = {}
    if scope.name:
        out["name"] = scope.name
    if scope.version:
        out["version"] = scope.version
    if len(scope.attributes):
        out["attributes"] = [_pb_key_value(kv) for kv in scope.attributes]
    return out


def _pb_record(log, part: dict, received: int) -> dict:
    return _record(log.time_unix_nano, log.observed_time_unix_nano, received, log.severity_number,
                   log.severity_text, _pb_value(log.body) if log.HasField("body") else {},
                   [_pb_key_value(kv) for kv in log.attributes], log.trace_id.hex(), log.span_id.hex(), part)


def _pb_key_value(kv, depth: int = 0) -> dict:
    return {"key": kv.key, "value": _pb_value(kv.value, depth)}


def _pb_value(value, depth: int = 0) -> dict:
    """A generated ``AnyValue`` as the normalised OTLP/JSON AnyValue :func:`fields.any_value` makes."""
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return {"stringValue": value.string_value}
    if kind == "int_value":
        return {"intValue": str(value.int_value)}
    if kind == "bool_value":
        return {"boolValue": value.bool_value}
    if kind == "double_value":
        return fields.any_value(value.double_value)
    if kind == "bytes_value":
        return {"bytesValue": base64.b64encode(value.bytes_value).decode()}
    if kind is None:
        return {}
    if depth >= fields.MAX_DEPTH:  # as fields.any_value keeps Forge's: deeper levels become text
        return {"stringValue": fields.json_text(fields.plain(_pb_value(value, 0)))}
    if kind == "array_value":
        return {"arrayValue": {"values": [_pb_value(item, depth + 1) for item in value.array_value.values]}}
    return {"kvlistValue": {"values": [_pb_key_value(kv, depth + 1) for kv in value.kvlist_value.values]}}
