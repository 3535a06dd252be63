"""Drain receivers that check what they get as the real ones do.

- :func:`logplex_receiver`: parses exactly as Vector's ``heroku_logs`` source
  (research heroku-addon-and-logplex.md §7.4): ``Logplex-Msg-Count``,
  ``Logplex-Frame-Id`` and ``Logplex-Drain-Token`` required (400 otherwise),
  body split on LF, eight space-separated fields per line, the count must
  equal the header (400 otherwise); octet counts are checked too.
- :func:`otlp_receiver`: ``POST /v1/logs`` as a Collector answers it: JSON
  (hex ids checked, then decoded with the official schema) or protobuf,
  optional gzip; 400 on an undecodable body.

Both record what they accepted and can be told to fail the next requests.
"""

from __future__ import annotations

import base64
import gzip
import re
import threading
from dataclasses import dataclass, field

import orjson
from flask import Flask, Response, request


@dataclass
class Inbox:
    requests: list[dict] = field(default_factory=list)   # accepted requests
    refused: list[str] = field(default_factory=list)      # why requests were refused
    failures: list[list] = field(default_factory=list)    # [status, remaining, retry_after]
    lock: threading.Lock = field(default_factory=threading.Lock)

    def fail(self, status: int, times: int = 1, retry_after: str | None = None) -> None:
        self.failures.append([status, times, retry_after])

    def _injected(self) -> Response | None:
        with self.lock:
            for failure in self.failures:
                if failure[1] > 0:
                    failure[1] -= 1
                    headers = {"Retry-After": failure[2]} if failure[2] else {}
                    return Response("injected", failure[0], headers=headers)
        return None


def _octet_counted(data: bytes) -> list[bytes]:
    messages, i = [], 0
    while i < len(data):
        match = re.match(rb"[1-9][0-9]*", data[i:])
        if not match:
            raise ValueError(f"no frame length at byte {i}")
        length = int(match.group())
        i += len(match.group())
        if data[i:i + 1] != b" " or i + 1 + length > len(data):
            raise ValueError("bad frame")
        messages.append(data[i + 1:i + 1 + length])
        i += 1 + length
    return messages


def logplex_receiver() -> tuple[Flask, Inbox]:
    app, inbox = Flask("logplex-receiver"), Inbox()

    @app.post("/<path:path>")
    @app.post("/")
    def receive(path: str = ""):
        for name in ("Logplex-Msg-Count", "Logplex-Frame-Id", "Logplex-Drain-Token"):
            if not request.headers.get(name):
                inbox.refused.append(f"missing {name}")
                return Response("Invalid request header", 400)
        injected = inbox._injected()
        if injected is not None:
            return injected
        body = request.get_data()
        try:
            count = int(request.headers["Logplex-Msg-Count"])
            frames = _octet_counted(body)
        except ValueError as exc:
            inbox.refused.append(str(exc))
            return Response("bad frames", 400)
        events = []
        for line in (line for line in body.split(b"\n") if line):
            parts = line.split(b" ", 7)
            if len(parts) < 8:
                events.append({"raw": line})
                continue
            events.append({"pri": parts[1], "timestamp": parts[2], "host": parts[3], "app": parts[4],
                           "procid": parts[5], "msgid": parts[6], "message": parts[7].decode("utf-8")})
        if len(events) != count or len(frames) != count:
            inbox.refused.append(f"count {count} but {len(events)} events, {len(frames)} frames")
            return Response("Logplex-Msg-Count mismatch", 400)
        auth = request.authorization
        with inbox.lock:
            inbox.requests.append({"frame_id": request.headers["Logplex-Frame-Id"],
                                   "token": request.headers["Logplex-Drain-Token"],
                                   "auth": (auth.username, auth.password) if auth else None,
                                   "events": events, "frames": frames, "path": request.path})
        return Response(status=200)

    return app, inbox


HEX = {"traceId": 32, "spanId": 16}


def otlp_receiver() -> tuple[Flask, Inbox]:
    from google.protobuf import json_format
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (ExportLogsServiceRequest,
                                                                         ExportLogsServiceResponse)

    app, inbox = Flask("otlp-receiver"), Inbox()
    app.config["partial"] = 0

    @app.post("/v1/logs")
    def receive():
        injected = inbox._injected()
        if injected is not None:
            return injected
        data = request.get_data()
        if request.headers.get("Content-Encoding") == "gzip":
            data = gzip.decompress(data)
        kind = request.headers.get("Content-Type", "")
        try:
            if kind == "application/json":
                document = orjson.loads(data)
                for resource_logs in document["resourceLogs"]:
                    for scope_logs in resource_logs["scopeLogs"]:
                        for log in scope_logs["logRecords"]:
                            for key, size in HEX.items():
                                if key in log:
                                    if not re.fullmatch(f"[0-9a-f]{{{size}}}", log[key]):
                                        raise ValueError(f"{key} is not {size} hex digits")
                                    log[key] = base64.b64encode(bytes.fromhex(log[key])).decode()
                message = json_format.ParseDict(document, ExportLogsServiceRequest())
            elif kind == "application/x-protobuf":
                message = ExportLogsServiceRequest.FromString(data)
            else:
                return Response("unsupported content type", 415)
        except Exception as exc:  # noqa: BLE001 — a Collector answers 400 to anything undecodable
            inbox.refused.append(str(exc))
            return Response("bad request", 400)
        with inbox.lock:
            inbox.requests.append({"message": message, "headers": dict(request.headers), "kind": kind})
        response = ExportLogsServiceResponse()
        if app.config["partial"]:
            response.partial_success.rejected_log_records = app.config["partial"]
            response.partial_success.error_message = "some records refused"
        if kind == "application/json":
            body = {"partialSuccess": {"rejectedLogRecords": str(app.config["partial"]),
                                       "errorMessage": "some records refused"}} if app.config["partial"] else {}
            return Response(orjson.dumps(body), 200, content_type="application/json")
        return Response(response.SerializeToString(), 200, content_type="application/x-protobuf")

    return app, inbox
