"""HTTP sinks: logplex-style drains (``logplex`` and the app's own ``heroku`` stream), OTLP/HTTP, and the alert webhook.

Each send returns a :class:`Result` that says what the delivery loop must do
(research otlp-syslog-forge.md decision 12; heroku-addon-and-logplex.md §7.3):

- logplex: 2xx delivered; 429, 5xx, timeouts and connection errors retried with
  the same ``Logplex-Frame-Id``; any other 4xx drops the batch (it would never
  be accepted), counted.
- Redirects are never followed (a POST would turn into a GET, and custom
  headers could reach another host): a 3xx is retried with the reason, as is a
  destination the SSRF guard refuses or cannot resolve — the owner fixes the
  drain and nothing is lost meanwhile (the plan's backlog bounds the wait).
- OTLP: 2xx delivered — with ``partialSuccess.rejectedLogRecords`` counted as
  rejected, never retried; 429/502/503/504 and network errors retried
  (``Retry-After`` honoured); 413 asks for the batch to be split; other
  statuses drop it, counted.

The destination is checked by the SSRF guard on every new connection of a
:func:`new_session` session (the only sessions the senders accept), which
connects to the address it checked — never to the name a second time, so a
name re-pointed at a private address between check and connect (DNS
rebinding) reaches nothing. A kept-alive connection was checked when it was
made, so a send costs no DNS lookup of its own. Secrets (URL passwords, OTLP headers) never
appear in a Result.

A receiver is a stranger's server, so a send is bounded in time and memory
(PITFALLS: ``requests`` un-gzips bodies as it reads them and its read timeout
is per socket read):

- One deadline for the whole send — connect, write, answer — not per read
  (:mod:`broker.sinks.deadline`; :data:`DEADLINE_SECONDS`, OpenTelemetry's
  exporter default). Every socket the send uses, new or kept alive, is cut
  when it passes, and the batch is retried with the reason: a receiver that
  trickles its answer, never answers or never reads the body costs a worker at
  most that long, and nothing is lost. Name resolution is the one step it
  cannot interrupt (see that module).
- At most :data:`ANSWER_BYTES` of the answer are read, as sent (never
  un-gzipped by ``requests``), and the response is closed: an unread rest
  only costs the connection. OTLP's ``partialSuccess`` is parsed from that
  prefix, inflated to at most the same size; an unreadable or cut-off success
  body is still a success, with nothing counted as rejected.
- The request goes through the drain adapter directly, not ``Session.send``:
  with redirects off, ``requests`` still reads (and un-gzips) a redirect's
  whole body, and would pick up proxies from the environment — which would
  carry the request past the guard's connections — and ``~/.netrc``
  credentials for the drain's host. The trust store stays the one
  ``requests`` reads: ``REQUESTS_CA_BUNDLE`` (or ``CURL_CA_BUNDLE``), else
  certifi's; the session's response hooks still run, on what was read.
"""

from __future__ import annotations

import gzip
import os
import zlib
from http.client import HTTPException
from urllib.parse import urlsplit, urlunsplit

import orjson
import requests
from requests.adapters import HTTPAdapter
from requests.hooks import dispatch_hook
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import HTTPError, NewConnectionError, ReadTimeoutError

from broker.forge import parse_retry_after
from broker.sinks import Result
from broker.sinks.deadline import DEFAULT_SECONDS, attach, connect_timeout, within
from broker.sinks.guard import BlockedDestination, resolve

# Logplex gives a drain 5 s; OTLP exporters 10–30 s. Connect fast either way. Per socket operation:
# an extra bound inside the send's deadline.
LOGPLEX_TIMEOUT = (3.05, 10)
OTLP_TIMEOUT = (3.05, 30)
DEADLINE_SECONDS = DEFAULT_SECONDS  # the whole send: connect, write, answer
ANSWER_BYTES = 64 * 1024  # the most of an answer read (and, for OTLP, inflated): enough for any partialSuccess
USER_AGENT = "forgedrain/1 (+log-drain broker)"


class RefusedDestination(NewConnectionError):
    """The SSRF guard refused a new connection's destination (or could not resolve it)."""

    def __init__(self, conn, reason: str):
        self.detail = f"destination refused: {reason}"
        super().__init__(conn, self.detail)


def _guarded(base: type, allow_private: bool) -> type:
    class Guarded(base):
        def _new_conn(self):
            try:
                addresses = resolve(self._dns_host, self.port, allow_private=allow_private)
            except BlockedDestination as exc:
                raise RefusedDestination(self, str(exc)) from None
            name, timeout, failure = self._dns_host, self.timeout, None
            try:
                for address in addresses:
                    self._dns_host = address  # the socket goes to the checked address; TLS still checks the name
                    self.timeout = connect_timeout(timeout)  # connecting cannot be cut: never past the deadline
                    try:
                        sock = super()._new_conn()
                    except NewConnectionError as exc:
                        failure = exc
                        continue
                    attach(sock)  # before the TLS handshake, which the deadline also bounds
                    return sock
            finally:
                self._dns_host, self.timeout = name, timeout
            raise failure

        def connect(self):
            super().connect()
            attach(self.sock)  # the socket as wrapped by TLS (the same connection: attached once)

        def request(self, *args, **kwargs):
            if self.sock is not None:
                attach(self.sock)  # a kept-alive connection, checked when made, bounded by this send
            return super().request(*args, **kwargs)

    Guarded.__name__ = f"Guarded{base.__name__}"
    return Guarded


class GuardedAdapter(HTTPAdapter):
    """Connections that pass the SSRF guard at connect time and go to the address it checked."""

    def __init__(self, allow_private: bool, **kwargs):
        self.allow_private = allow_private
        super().__init__(**kwargs)

    def init_poolmanager(self, *args, **kwargs):
        super().init_poolmanager(*args, **kwargs)
        allow = self.allow_private

        class Plain(HTTPConnectionPool):
            ConnectionCls = _guarded(HTTPConnection, allow)

        class Secure(HTTPSConnectionPool):
            ConnectionCls = _guarded(HTTPSConnection, allow)

        self.poolmanager.pool_classes_by_scheme = {"http": Plain, "https": Secure}


def new_session(allow_private: bool) -> requests.Session:
    """A keep-alive session for drains: every new connection is checked by the SSRF guard."""
    session = requests.Session()
    session.trust_env = False  # no proxy past the guard, no ~/.netrc credentials sent to a drain
    adapter = GuardedAdapter(allow_private, pool_connections=4, pool_maxsize=4)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def _target(url: str) -> tuple[str, tuple[str, str] | None]:
    """The URL without userinfo, and the userinfo as Basic-auth credentials."""
    parts = urlsplit(url)
    auth = None
    if parts.username is not None or parts.password is not None:
        from urllib.parse import unquote

        auth = (unquote(parts.username or ""), unquote(parts.password or ""))
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = f"{host}:{parts.port}" if parts.port else host
        url = urlunsplit(parts._replace(netloc=netloc))
    return url, auth


def _guarded_session(session: requests.Session, url: str, allow_private: bool) -> None:
    """The guard lives in the session's connections: refuse a session that does not carry it."""
    adapter = session.get_adapter(url)
    if not isinstance(adapter, GuardedAdapter) or (adapter.allow_private and not allow_private):
        raise TypeError("drain sessions must come from broker.sinks.http.new_session()")


def _post(session: requests.Session, url: str, body: bytes, auth, headers: dict[str, str],
          timeout: tuple[float, float], seconds: float) -> tuple[requests.Response, bytes] | Result:
    """POST within ``seconds`` in all, without following redirects; the answer and at most
    :data:`ANSWER_BYTES` of its body as sent, or a Result when there was no usable answer."""
    with within(seconds) as limit:
        try:
            request = session.prepare_request(requests.Request("POST", url, data=body, headers=headers, auth=auth))
            response = session.get_adapter(url).send(request, stream=True, timeout=timeout,
                                                     verify=_trust(session), cert=session.cert, proxies={})
        except (requests.RequestException, UnicodeError, ValueError) as exc:
            return _too_slow(seconds) if limit.expired else _transport_failure(exc)
        try:
            answer = response.raw.read(ANSWER_BYTES, decode_content=False) or b""
        except (HTTPError, HTTPException, OSError) as exc:
            return _too_slow(seconds) if limit.expired else _broken_answer(exc)
        finally:
            response.close()  # a body left unread closes the connection instead of returning it
        if limit.expired:
            return _too_slow(seconds)  # whatever came, the deadline cut it short
    # Response hooks (tests observe a drain session with them) run as Session.send would run them,
    # but see only what was read: ``content`` is the prefix, as sent, and never touches the socket.
    response._content, response._content_consumed = answer, True
    response = dispatch_hook("response", request.hooks, response)
    if 300 <= response.status_code < 400:
        return _redirected(response)
    return response, answer


def _trust(session: requests.Session):
    """The CA bundle ``requests`` would use: the session's, else the environment's, else certifi's."""
    if session.verify is not True:
        return session.verify
    return os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True


def _too_slow(seconds: float) -> Result:
    return Result("retry", detail=f"no complete answer within {seconds:g} s: the receiver is too slow "
                                  "or stalled; retrying")


def _broken_answer(exc: Exception) -> Result:
    kind = "timeout" if isinstance(exc, (ReadTimeoutError, TimeoutError)) else type(exc).__name__
    return Result("retry", detail=f"could not read the receiver's answer ({kind})")


def _transport_failure(exc: Exception) -> Result:
    if isinstance(exc, (UnicodeError, ValueError)) and not isinstance(exc, requests.RequestException):
        return Result("retry", detail="could not send the request: a header value of the drain is not "
                                      "plain ASCII; change the drain's headers")
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    if isinstance(reason, RefusedDestination):
        # Retried, not dropped: a name that does not resolve now (or points somewhere private)
        # is the owner's to fix, and the records wait — the plan's backlog bounds how long.
        return Result("retry", detail=reason.detail)
    kind = "timeout" if isinstance(exc, requests.Timeout) else type(exc).__name__
    return Result("retry", detail=f"could not deliver ({kind})")


def _redirected(response: requests.Response) -> Result:
    """A 3xx: never followed (a POST would become a GET, and headers could reach another host)."""
    where = urlsplit(response.headers.get("Location", "")).hostname or "another URL"
    return Result("retry", response.status_code,
                  f"HTTP {response.status_code}: the receiver redirects to {where}; "
                  "point the drain at the final URL")


def send_logplex(session: requests.Session, url: str, body: bytes, *, count: int, frame_id: str,
                 drain_token: str, allow_private: bool, deadline: float = DEADLINE_SECONDS) -> Result:
    _guarded_session(session, url, allow_private)
    target, auth = _target(url)
    answered = _post(session, target, body, auth, {
        "Content-Type": "application/logplex-1", "Logplex-Msg-Count": str(count),
        "Logplex-Frame-Id": frame_id, "Logplex-Drain-Token": drain_token, "User-Agent": USER_AGENT,
    }, LOGPLEX_TIMEOUT, deadline)
    return _settled(answered, "batch")


def _settled(answered: tuple[requests.Response, bytes] | Result, what: str) -> Result:
    """Logplex's classes of an answer: 2xx delivered; 429 and 5xx retried (``Retry-After``
    honoured); any other 4xx drops ``what`` — it would never be accepted."""
    if isinstance(answered, Result):
        return answered
    response, _ = answered
    status = response.status_code
    if 200 <= status < 300:
        return Result("delivered", status)
    if status == 429 or status >= 500:
        return Result("retry", status, f"HTTP {status}", parse_retry_after(response.headers.get("Retry-After")))
    return Result("drop", status, f"HTTP {status}: the receiver refused the {what}")


WEBHOOK_TIMEOUT = LOGPLEX_TIMEOUT  # a notice is a few hundred bytes: a receiver answers at once or not at all


def send_webhook(session: requests.Session, url: str, body: bytes, headers: dict[str, str], *,
                 allow_private: bool, deadline: float = DEADLINE_SECONDS) -> Result:
    """POST one alert notice (JSON) to a resource's webhook, classified as logplex drains are:
    2xx delivered; 429, 5xx, timeouts, network errors and redirects retried (``Retry-After``
    honoured); any other 4xx dropped — the receiver would never take that notice."""
    _guarded_session(session, url, allow_private)
    target, auth = _target(url)
    answered = _post(session, target, body, auth, {
        **headers, "Content-Type": "application/json", "User-Agent": USER_AGENT,
    }, WEBHOOK_TIMEOUT, deadline)
    return _settled(answered, "notice")


def otlp_url(url: str) -> str:
    """A base URL gets OTLP's default path; a full ``…/v1/logs`` URL is kept."""
    parts = urlsplit(url)
    if parts.path.rstrip("/").endswith("/v1/logs"):
        return url
    return urlunsplit(parts._replace(path=parts.path.rstrip("/") + "/v1/logs"))


def send_otlp(session: requests.Session, url: str, body: bytes, *, encoding: str, use_gzip: bool,
              headers: dict[str, str], allow_private: bool, deadline: float = DEADLINE_SECONDS) -> Result:
    _guarded_session(session, url, allow_private)
    target, auth = _target(otlp_url(url))
    content_type = "application/json" if encoding == "json" else "application/x-protobuf"
    # Accept-Encoding: only what _inflated reads (requests would also offer deflate, br, zstd).
    request_headers = {**headers, "Content-Type": content_type, "User-Agent": USER_AGENT,
                       "Accept-Encoding": "gzip"}
    if use_gzip:
        # Level 1: ~1.7x faster than 5 for ~23 % larger bodies; the worker's CPU is the bottleneck.
        body = gzip.compress(body, compresslevel=1)
        request_headers["Content-Encoding"] = "gzip"
    answered = _post(session, target, body, auth, request_headers, OTLP_TIMEOUT, deadline)
    if isinstance(answered, Result):
        return answered
    response, answer = answered
    status = response.status_code
    if 200 <= status < 300:
        return Result("delivered", status, rejected=rejected_count(answer, response.headers, encoding))
    if status in (429, 502, 503, 504):
        return Result("retry", status, f"HTTP {status}", parse_retry_after(response.headers.get("Retry-After")))
    if status == 413:
        return Result("split", status, "HTTP 413: batch too large for the receiver")
    return Result("drop", status, f"HTTP {status}: the receiver refused the batch")


def rejected_count(answer: bytes, headers, encoding: str) -> int:
    """``partialSuccess.rejectedLogRecords`` of an ExportLogsServiceResponse's first bytes (0 when absent).

    ``answer`` is the body as sent, at most :data:`ANSWER_BYTES`; a cut-off or unreadable
    one is still a success with nothing rejected.
    """
    body = _inflated(answer, headers.get("Content-Encoding", ""))
    if not body:
        return 0
    try:
        if "json" in headers.get("Content-Type", "") or encoding == "json":
            partial = orjson.loads(body).get("partialSuccess") or {}
            return max(0, int(partial.get("rejectedLogRecords") or 0))
        from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse

        return max(0, int(ExportLogsServiceResponse.FromString(body).partial_success.rejected_log_records))
    except Exception:  # noqa: BLE001 — an unreadable success body is still a success
        return 0


def _inflated(answer: bytes, content_encoding: str) -> bytes:
    """The answer un-gzipped to at most :data:`ANSWER_BYTES` (a gzip bomb stops there); b"" if unreadable."""
    coding = content_encoding.strip().lower()
    if coding in ("", "identity"):
        return answer
    if coding not in ("gzip", "x-gzip", "deflate"):
        return b""  # nothing we offered: not worth reading
    try:
        return zlib.decompressobj(wbits=47).decompress(answer, ANSWER_BYTES)  # 47: gzip or zlib header
    except zlib.error:
        return b""
