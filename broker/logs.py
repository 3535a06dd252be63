"""One-line ``key=value`` logs (logfmt), the format Heroku's router and tools use.

Every line carries ``at``, ``level``, ``logger`` and ``msg``; ``request_id`` and
``job_id`` are added when a request or job is being served, so one grep follows
a request through web and worker. Messages are written by our code with ids,
never secrets; values are quoted when they contain spaces or quotes.
"""

from __future__ import annotations

import contextvars
import logging
import sys
import time

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
job_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("job_id", default=None)


def _quote(value: object) -> str:
    text = str(value)
    if text == "" or any(c in text for c in ' "=\\') or not text.isprintable():
        escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{escaped}"'
    return text


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        fields = [
            ("at", f"{stamp}.{int(record.msecs):03d}Z"),
            ("level", record.levelname.lower()),
            ("logger", record.name),
        ]
        rid, jid = request_id.get(), job_id.get()
        if rid:
            fields.append(("request_id", rid))
        if jid:
            fields.append(("job_id", jid))
        fields.append(("msg", record.getMessage()))
        if record.exc_info and record.exc_info[0] is not None:
            # The exception's class and where it was raised, not its message:
            # messages of third-party errors can quote URLs with credentials.
            fields.append(("error", record.exc_info[0].__name__))
            tb = record.exc_info[2]
            while tb is not None and tb.tb_next is not None:
                tb = tb.tb_next
            if tb is not None:
                code = tb.tb_frame.f_code
                fields.append(("where", f"{code.co_filename.rsplit('/', 1)[-1]}:{tb.tb_lineno}:{code.co_name}"))
        return " ".join(f"{k}={_quote(v)}" for k, v in fields)


def configure(level: str = "INFO") -> None:
    """Send every logger to stderr in logfmt; safe to call more than once."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogfmtFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
