"""A sender per drain kind: records in, requests out, and what each send settled (SPEC §4).

One class per kind, in the manner of healthchecks' transports:

- :class:`HerokuSender` writes into the app's own log stream (its
  ``log_input_url``) in logplex's dialect, under the reserved APP-NAME
  ``forgedrain`` so drain ingest recognises the frames when Heroku sends them
  back, and never sends the app's own records there; it alone carries alert
  lines (outbox origin ``alert``, :mod:`broker.alerts`);
- :class:`LogplexSender` posts logplex frames to an HTTPS drain;
- :class:`OtlpSender` posts OTLP/HTTP (protobuf or JSON), splitting a part
  the receiver finds too large (413);
- :class:`SyslogSender` writes RFC 5424 frames over TLS, ~1 MiB per
  confirmed send, carrying several outbox batches at once.

A sender is given the drain's outbox batches in order (:class:`Pending`,
each with the records it still lacks) and yields a :class:`Step` after every
send: the position it reached (a batch, or a number of records into one),
with what was delivered, dropped or rejected. The delivery loop
(:mod:`broker.delivery`) writes these positions to the drain's row (each
completed batch, and wherever the turn ends), so a crash resends only what
was not written — with the same ``Logplex-Frame-Id``, derived from drain,
batch and record offset. A send that
must wait (timeout, refusal, 5xx, 429) ends the stream with a :class:`Halt`.

"Send a test record" uses :meth:`Sender.probe`: the same formats and wire,
no cursor, no database.
"""

from __future__ import annotations

import hashlib
import ssl
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Iterable, Iterator

import orjson
import requests

from broker import outbox
from broker.formats import logplex, otlp, syslog5424
from broker.sinks import Result, http, syslog
from broker.vault import Vault, VaultError

# Heroku's drains aim at ~100 KB per request; OTLP at ≤ 1,000 records or ~1 MiB.
LOGPLEX_TARGET_BYTES = 100 * 1024
OTLP_MAX_RECORDS = 1000
OTLP_TARGET_BYTES = 1024 * 1024
# A syslog send (one connection, one confirmed close) carries up to ~1 MiB.
SYSLOG_TARGET_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Source:
    """What a record's source adds to its formatting (names, ids, whether arguments are kept)."""

    app_id: str = ""
    environment_id: str = ""
    service_name: str | None = None
    environment_label: str | None = None
    include_arguments: bool = False
    id: object = None  # the source's id: a drain's rules may take only some sources' records

    @classmethod
    def of(cls, row: dict | None) -> "Source":
        row = row or {}
        return cls(app_id=row.get("app_id") or "", environment_id=row.get("environment_id") or "",
                   service_name=row.get("service_name"), environment_label=row.get("environment_label"),
                   include_arguments=bool(row.get("include_arguments")), id=row.get("id"))


@dataclass(frozen=True)
class Drain:
    """What a sender needs to know of a drain (never its secrets: those come decrypted, apart)."""

    id: object
    kind: str
    token: str
    settings: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Destination:
    """A drain's decrypted secrets: where to send, and the headers to send with (OTLP)."""

    url: str
    headers: dict


SECRET_LOST_ERROR = ("the drain's URL or headers can no longer be decrypted (the encryption key they were saved "
                     "with is not in FERNET_KEYS any more): re-enter the drain's URL and headers; records wait "
                     "within the plan's backlog")


class SecretLost(Exception):
    """A drain's URL or headers cannot be decrypted with the keys configured now."""


def destination(url_enc: str | None, headers_enc: str | None, vault: Vault) -> Destination | None:
    """The drain's secrets, decrypted; None when it has no URL. :class:`SecretLost` when they
    cannot be decrypted (FERNET_KEYS no longer holds the key they were written with)."""
    try:
        url = vault.decrypt(url_enc) if url_enc else None
        headers = orjson.loads(vault.decrypt(headers_enc)) if headers_enc else {}
    except (VaultError, orjson.JSONDecodeError) as exc:
        raise SecretLost(str(exc)) from None
    return Destination(url, headers) if url else None


@dataclass(frozen=True)
class Wire:
    """How senders reach receivers: this thread's HTTP session, the TLS trust for syslog, the SSRF
    rule, and the total time one send may take (connect + write + answer)."""

    session_for: Callable[[], requests.Session]
    allow_private: bool
    tls_context: ssl.SSLContext | None = None
    deadline_seconds: float = http.DEADLINE_SECONDS


@dataclass(frozen=True)
class Pending:
    """An outbox batch the drain lacks: ``records`` are those it still needs, from ``offset`` on
    (0 unless an earlier send already settled the batch's first records).

    Positions in a batch are always *raw*: the index of a record among all the batch's records,
    whatever the drain's rules keep. When rules removed some, ``positions`` holds each kept
    record's raw position (None: ``records`` are the raw records ``offset``, ``offset + 1``, …),
    so a position written after a send, and a ``Logplex-Frame-Id``, mean the same record if the
    owner changes the rules before the batch is complete.
    """

    batch: int
    records: list[dict]
    offset: int
    source: Source
    positions: list[int] | None = None

    def position(self, index: int) -> int:
        """The raw position of ``records[index]``."""
        return self.offset + index if self.positions is None else self.positions[index]

    def after(self, count: int) -> int:
        """The raw position just after the first ``count`` records: where the drain stands once
        they are settled (records the rules removed before the next kept one are settled with it)."""
        return self.offset + count if self.positions is None else self.positions[count - 1] + 1


@dataclass(frozen=True)
class Step:
    """Where the drain stands after a send: every batch before ``batch`` is settled, and of
    ``batch`` itself all records (``offset`` None) or the first ``offset`` (a raw position, see
    :class:`Pending`). ``filtered`` and ``redacted`` are what the drain's rules removed and
    redacted in what the step settled; the delivery loop fills them in."""

    batch: int
    offset: int | None
    delivered: int = 0
    dropped: int = 0
    rejected: int = 0
    error: str | None = None
    requests: int = 0
    seconds: float = 0.0   # the send's wall time
    filtered: int = 0
    redacted: int = 0


@dataclass(frozen=True)
class Halt:
    """The receiver cannot take more now: wait (back-off or Retry-After) and resend from the last step."""

    result: Result
    seconds: float = 0.0


def frame_id(drain_id, batch_id: int | str, offset: int) -> str:
    """Stable for a given drain, outbox batch and record offset: the same on every retry."""
    return hashlib.md5(f"{drain_id}:{batch_id}:{offset}".encode(), usedforsecurity=False).hexdigest().upper()


class Sender:
    """Turns a drain's pending batches into sends; one subclass per drain kind."""

    kind: ClassVar[str]

    def __init__(self, drain: Drain, destination: Destination, wire: Wire):
        self.drain = drain
        self.destination = destination
        self.wire = wire

    def deliver(self, pending: Iterable[Pending]) -> Iterator[Step | Halt]:
        raise NotImplementedError

    def probe(self, records: list[dict], source: Source) -> Result:
        """Send ``records`` now, as a delivery would, under a Frame-Id of their own (receivers that
        drop repeated Frame-Ids must not drop a second test)."""
        raise NotImplementedError

    def receives(self, record_origin: str) -> bool:
        """Whether this drain receives records of this origin (``forge``, ``heroku``, ``otlp`` or
        ``alert``): the heroku drain never the app's own logs, only the heroku drain alert lines."""
        return outbox.received_by(self.kind, record_origin)


class HttpSender(Sender):
    """One request per part of a batch; a part's records are settled when the receiver answers."""

    def parts(self, records: list[dict], source: Source) -> Iterator[tuple[int, bytes, int]]:
        """(records in the part, request body, frame count) for consecutive runs of ``records``."""
        raise NotImplementedError

    def body(self, records: list[dict], source: Source) -> tuple[bytes, int]:
        raise NotImplementedError

    def post(self, body: bytes, count: int, frame: str) -> Result:
        raise NotImplementedError

    def deliver(self, pending: Iterable[Pending]) -> Iterator[Step | Halt]:
        skipped: Pending | None = None  # batches with nothing to send are settled with the next step
        for item in pending:
            if not item.records:
                skipped = item
                continue
            if skipped is not None:
                yield Step(skipped.batch, None)
                skipped = None
            queue = [(n, body, count) for n, body, count in self.parts(item.records, item.source)]
            done = 0
            while queue:
                n, body, count = queue.pop(0)
                chunk = item.records[done:done + n]
                began = time.monotonic()
                result = self.post(body, count, frame_id(self.drain.id, item.batch, item.position(done)))
                seconds = time.monotonic() - began
                if result.outcome == "split" and n > 1:
                    half = n // 2
                    queue[:0] = [(half, *self.body(chunk[:half], item.source)),
                                 (n - half, *self.body(chunk[half:], item.source))]
                    continue
                if result.outcome == "retry":
                    yield Halt(result, seconds)
                    return
                done += n
                offset = item.after(done)
                whole = not queue
                if result.outcome == "delivered":
                    yield Step(item.batch, None if whole else offset, delivered=n - result.rejected,
                               rejected=result.rejected, requests=1, seconds=seconds)
                else:  # drop, or a single record the receiver finds too large: counted, and move on
                    yield Step(item.batch, None if whole else offset, dropped=n, error=result.detail,
                               requests=1, seconds=seconds)
        if skipped is not None:
            yield Step(skipped.batch, None)

    def probe(self, records: list[dict], source: Source) -> Result:
        result = Result("delivered")
        offset = 0
        test = f"test-{uuid.uuid4()}"
        for n, body, count in self.parts(records, source):
            result = self.post(body, count, frame_id(self.drain.id, test, offset))
            if result.outcome != "delivered":
                return result
            offset += n
        return result


class LogplexSender(HttpSender):
    """Logplex frames to an HTTPS drain, ~100 KB per request, the drain's token as HOSTNAME."""

    kind = "logplex"

    def identity(self, source: Source) -> logplex.Identity:
        return logplex.Identity(host=self.drain.token, app_name=source.service_name or "forge")

    def parts(self, records, source):
        who = self.identity(source)
        chunk: list[bytes] = []
        n = size = 0
        for record in records:
            frames = logplex.frames(record, who)
            frame_bytes = sum(len(f) for f in frames)
            if chunk and size + frame_bytes > LOGPLEX_TARGET_BYTES:
                yield n, b"".join(chunk), len(chunk)
                chunk, n, size = [], 0, 0
            chunk.extend(frames)
            n += 1
            size += frame_bytes
        if chunk:
            yield n, b"".join(chunk), len(chunk)

    def body(self, records, source):
        return logplex.batch(records, self.identity(source))

    def post(self, body, count, frame):
        return http.send_logplex(self.wire.session_for(), self.destination.url, body, count=count, frame_id=frame,
                                 drain_token=self.drain.token, allow_private=self.wire.allow_private,
                                 deadline=self.wire.deadline_seconds)


class HerokuSender(LogplexSender):
    """Into the app's own stream (``log_input_url``) under the reserved APP-NAME, PROCID
    ``<service>.<function>``: drain ingest drops these frames when they come back, so nothing loops."""

    kind = "heroku"

    def identity(self, source: Source) -> logplex.Identity:
        return logplex.Identity(host="forgedrain", app_name=logplex.OWN_APP_NAME,
                                procid_prefix=source.service_name or "forge")


def otlp_weight(record: dict) -> int:
    """About what a record adds to an OTLP request: its body, plus a fixed share for ids and attributes."""
    body = record.get("body")
    text = body.get("stringValue") if isinstance(body, dict) else None
    return 400 + (len(text) if isinstance(text, str) else 256)


class OtlpSender(HttpSender):
    """OTLP/HTTP logs, protobuf or JSON, ≤ 1,000 records or ~1 MiB per request."""

    kind = "otlp"

    def parts(self, records, source):
        start, size = 0, 0
        for index, record in enumerate(records):
            weight = otlp_weight(record)
            if index > start and (index - start >= OTLP_MAX_RECORDS or size + weight > OTLP_TARGET_BYTES):
                yield index - start, *self.body(records[start:index], source)
                start, size = index, 0
            size += weight
        if start < len(records):
            yield len(records) - start, *self.body(records[start:], source)

    def body(self, records, source):
        origin = otlp.Origin(app_id=source.app_id, environment_id=source.environment_id,
                             drain_token=self.drain.token, service_name=source.service_name,
                             environment_label=source.environment_label,
                             include_arguments=source.include_arguments)
        if self.drain.settings.get("encoding", "protobuf") == "json":
            return otlp.to_json(otlp.request(records, origin, time.time_ns())), len(records)
        return otlp.protobuf_request(records, origin, time.time_ns()), len(records)

    def post(self, body, count, frame):
        settings = self.drain.settings
        return http.send_otlp(self.wire.session_for(), self.destination.url, body,
                              encoding=settings.get("encoding", "protobuf"), use_gzip=settings.get("gzip", True),
                              headers=self.destination.headers, allow_private=self.wire.allow_private,
                              deadline=self.wire.deadline_seconds)


class SyslogSender(Sender):
    """RFC 5424 frames over TLS: a send carries up to ~1 MiB, several batches or part of one,
    and counts as accepted when the receiver closed the connection after reading it."""

    kind = "syslog"

    def identity(self, source: Source) -> syslog5424.Identity:
        return syslog5424.Identity(host=self.drain.token, app_name=source.service_name or "forge",
                                   sd_id=self.drain.settings.get("sd_id"),
                                   include_arguments=source.include_arguments)

    def deliver(self, pending: Iterable[Pending]) -> Iterator[Step | Halt]:
        chunks: list[bytes] = []
        size = count = 0
        position: tuple[int, int | None] | None = None
        for item in pending:
            who = self.identity(item.source)
            if not item.records:
                position = (item.batch, None)
                continue
            for index, record in enumerate(item.records):
                frames = syslog5424.stream([record], who)
                if chunks and size + len(frames) > SYSLOG_TARGET_BYTES:
                    step = self._flush(chunks, count, position)
                    yield step
                    if isinstance(step, Halt):
                        return
                    chunks, size, count = [], 0, 0
                chunks.append(frames)
                size += len(frames)
                count += 1
                last = index == len(item.records) - 1
                position = (item.batch, None if last else item.after(index + 1))
        if position is not None:
            if chunks:
                yield self._flush(chunks, count, position)
            else:
                yield Step(position[0], position[1])

    def _flush(self, chunks: list[bytes], count: int, position) -> Step | Halt:
        began = time.monotonic()
        result = self._send([b"".join(chunks)])  # one write of ~1 MiB, not one per record
        seconds = time.monotonic() - began
        if result.outcome == "retry":
            return Halt(result, seconds)
        if result.outcome == "delivered":
            return Step(*position, delivered=count, requests=1, seconds=seconds)
        return Step(*position, dropped=count, error=result.detail, requests=1, seconds=seconds)

    def _send(self, chunks: list[bytes]) -> Result:
        return syslog.send(self.destination.url, chunks, context=self.wire.tls_context,
                           allow_private=self.wire.allow_private, deadline=self.wire.deadline_seconds)

    def probe(self, records: list[dict], source: Source) -> Result:
        return self._send([syslog5424.stream(records, self.identity(source))])


SENDERS: dict[str, type[Sender]] = {s.kind: s for s in (HerokuSender, LogplexSender, OtlpSender, SyslogSender)}
KINDS = tuple(SENDERS)


def sender_for(drain: Drain, destination: Destination, wire: Wire) -> Sender:
    return SENDERS[drain.kind](drain, destination, wire)
