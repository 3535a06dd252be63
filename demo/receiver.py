"""``python -m demo.receiver --port N``: a logplex drain receiver that shows what it gets.

It accepts ``POST`` on any path and checks each request the way Vector's ``heroku_logs``
source does (research heroku-addon-and-logplex.md §7.4): the ``Logplex-Msg-Count``,
``Logplex-Frame-Id`` and ``Logplex-Drain-Token`` headers are required, the body is split on
LF, each line is read as eight space-separated fields, and the number of lines must equal
``Logplex-Msg-Count``; the octet counts are checked too (Vector ignores them; Heroku's include
the trailing LF). A request that fails a check is answered 400 and printed as refused; one
that passes is answered 200 and printed: a header line for the request, then one line per
message (all of them up to ``--max-lines``; a larger request, such as the backlog a new
source starts with, shows its first few and counts the rest), with control characters escaped and
long messages shortened so the terminal stays readable.

``GET /`` answers 200 with a one-line description (the demo's readiness probe).
"""

from __future__ import annotations

import argparse
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, TextIO

HEADERS = ("Logplex-Msg-Count", "Logplex-Frame-Id", "Logplex-Drain-Token")
SEVERITIES = ("EMERG", "ALERT", "CRIT", "ERROR", "WARN", "NOTICE", "INFO", "DEBUG")
FRAME_LENGTH = re.compile(rb"[1-9][0-9]*")
PRI = re.compile(r"<([0-9]{1,3})>1")
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_BODY = 16 * 1024 * 1024


class Refused(ValueError):
    pass


@dataclass(frozen=True)
class Message:
    severity: str
    timestamp: str
    host: str
    app: str
    procid: str
    msgid: str
    text: str


def octet_frames(body: bytes) -> list[bytes]:
    """The frames of an octet-counted body (``<len> <frame>``...); Refused if the counts are off."""
    frames, i = [], 0
    while i < len(body):
        match = FRAME_LENGTH.match(body, i)
        if not match:
            raise Refused(f"no frame length at byte {i}")
        length = int(match.group())
        i = match.end()
        if body[i:i + 1] != b" " or i + 1 + length > len(body):
            raise Refused(f"frame at byte {match.start()} claims {length} bytes that are not there")
        frames.append(body[i + 1:i + 1 + length])
        i += 1 + length
    return frames


def parse(headers: Callable[[str], str | None], body: bytes) -> tuple[str, list[Message | str]]:
    """(frame id, events) of a request, or Refused with the reason a Vector source would give."""
    for name in HEADERS:
        if not headers(name):
            raise Refused(f"Invalid request header: {name} is missing")
    try:
        count = int(headers("Logplex-Msg-Count") or "")
    except ValueError:
        raise Refused("Invalid request header: Logplex-Msg-Count is not a number") from None
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Refused(f"body is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    events: list[Message | str] = []
    for line in (line for line in text.split("\n") if line):
        parts = line.split(" ", 7)
        if len(parts) < 8:
            events.append(line)  # Vector keeps such a line as a raw message
            continue
        pri = PRI.fullmatch(parts[1])
        severity = SEVERITIES[int(pri.group(1)) % 8] if pri else "?"
        events.append(Message(severity, parts[2], parts[3], parts[4], parts[5], parts[6], parts[7]))
    if len(events) != count:
        raise Refused(f"Logplex-Msg-Count is {count} but the body has {len(events)} lines")
    frames = octet_frames(body)
    if len(frames) != count:
        raise Refused(f"Logplex-Msg-Count is {count} but the body has {len(frames)} octet-counted frames")
    return headers("Logplex-Frame-Id") or "", events


def readable(text: str, limit: int) -> str:
    """One terminal line: control characters escaped (\\x1b, \\t ...), long text shortened."""
    shown = CONTROL.sub(lambda m: repr(m.group())[1:-1], text)
    if len(shown) > limit:
        extra = len(text.encode("utf-8")) - len(shown[:limit].encode("utf-8"))
        shown = f"{shown[:limit]}… (+{extra} bytes)"
    return shown


def describe(event: Message | str, width: int) -> str:
    if isinstance(event, str):
        return f"(raw) {readable(event, width)}"
    who = event.app if event.procid == "-" else f"{event.app}[{event.procid}]"
    msgid = "" if event.msgid == "-" else f"{event.msgid} "
    return f"{event.timestamp} {event.severity:<6} {who}: {msgid}{readable(event.text, width)}"


@dataclass
class Receiver:
    """The WSGI app; prints to ``out``. Thread-safe."""

    out: TextIO = sys.stdout
    max_lines: int = 40
    preview: int = 4
    width: int = 160
    requests: int = 0
    messages: int = 0
    refused: int = 0
    started: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, environ, start_response):
        method = environ["REQUEST_METHOD"]
        if method == "GET" and environ.get("PATH_INFO", "/") in ("", "/"):
            return self._reply(start_response, "200 OK",
                               b"Forge Drain demo: a logplex receiver; POST logplex frames to any path\n")
        if method != "POST":
            return self._reply(start_response, "405 Method Not Allowed", b"POST logplex frames here\n")
        try:
            size = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            size = -1
        if not 0 <= size <= MAX_BODY:
            return self._refuse(start_response, environ, "Content-Length missing or too large")
        body = environ["wsgi.input"].read(size) if size else b""

        def header(name: str) -> str | None:
            return environ.get("HTTP_" + name.upper().replace("-", "_"))

        try:
            frame_id, events = parse(header, body)
        except Refused as exc:
            return self._refuse(start_response, environ, str(exc))
        with self.lock:
            self.requests += 1
            self.messages += len(events)
            elapsed = time.monotonic() - self.started
            lines = [f"POST {environ.get('PATH_INFO', '/')} #{self.requests}: {len(events)} messages "
                     f"(Logplex-Msg-Count {len(events)}, frame {frame_id[:12]}) "
                     f"-> 200; {self.messages} in all, {elapsed:.0f} s after start"]
            shown = events if len(events) <= self.max_lines else events[:self.preview]
            lines += ["  " + describe(e, self.width) for e in shown]
            if len(shown) < len(events):
                lines.append(f"  … and {len(events) - len(shown)} more messages in this request")
            self.out.write("\n".join(lines) + "\n")
            self.out.flush()
        return self._reply(start_response, "200 OK", b"")

    def _refuse(self, start_response, environ, reason: str):
        with self.lock:
            self.refused += 1
            self.out.write(f"REFUSED POST {environ.get('PATH_INFO', '/')} -> 400: {reason}\n")
            self.out.flush()
        return self._reply(start_response, "400 Bad Request", (reason + "\n").encode())

    @staticmethod
    def _reply(start_response, status: str, body: bytes):
        start_response(status, [("Content-Type", "text/plain; charset=utf-8"),
                                ("Content-Length", str(len(body)))])
        return [body]


def main(argv: list[str] | None = None) -> None:
    from werkzeug.serving import WSGIRequestHandler, make_server

    parser = argparse.ArgumentParser(prog="python -m demo.receiver", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8702)
    parser.add_argument("--max-lines", type=int, default=40,
                        help="a request with more messages shows only its first few")
    parser.add_argument("--width", type=int, default=160, help="characters printed per message")
    opts = parser.parse_args(argv)

    class QuietHandler(WSGIRequestHandler):
        def log_request(self, *args, **kwargs):  # the receiver prints its own line per request
            pass

    receiver = Receiver(max_lines=opts.max_lines, width=opts.width)
    server = make_server(opts.host, opts.port, receiver, threaded=True, request_handler=QuietHandler)
    print(f"listening on http://{opts.host}:{server.server_port}: each accepted request is shown "
          f"here with its messages (the first {receiver.preview} of a request with more than "
          f"{opts.max_lines})", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
