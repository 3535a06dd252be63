"""``python -m demo.forge --port N``: the Forge App logs fake serving the demo app.

The fake (``tests/fakes/forge.py``, used as is) generates each minute's records
deterministically, so the app has logged steadily for as long as anyone looks back: about
``--records-per-minute`` records a minute, every level, some multi-line stack traces, some
non-ASCII text. A record becomes visible to the API 0–30 s after its timestamp (no late
stragglers in the demo: ``late_fraction=0``). Each call the broker makes is printed as one
short line (window, page, status, records) instead of the raw request line with its cursor.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from urllib.parse import parse_qs

from demo import API_TOKEN, APP_ID, EMAIL, ENVIRONMENT_ID, RECORDS_PER_MINUTE
from tests.fakes.forge import ForgeFake


class CallLog:
    """WSGI middleware printing one line per App logs call."""

    def __init__(self, app, out=sys.stdout):
        self.app = app
        self.out = out
        self.pages: dict[tuple, int] = {}
        self.lock = threading.Lock()

    def __call__(self, environ, start_response):
        seen: dict = {}

        def capture(status, headers, exc_info=None):
            seen["status"] = status.split(" ", 1)[0]
            return start_response(status, headers, exc_info)

        body = b"".join(self.app(environ, capture))
        if not environ.get("PATH_INFO", "").startswith("/v1/app/logs/"):
            with self.lock:
                self.out.write(f"{environ['REQUEST_METHOD']} {environ.get('PATH_INFO', '')} "
                               f"-> {seen.get('status')}\n")
                self.out.flush()
            return [body]
        query = parse_qs(environ.get("QUERY_STRING", ""))
        window = (query.get("startDate", ["?"])[0], query.get("endDate", ["?"])[0])
        detail = ""
        if seen.get("status") == "200":
            try:
                page = json.loads(body)
                detail = f", {len(page['appLogs'])} records" + (", more pages" if "cursor" in page else "")
            except (ValueError, KeyError, TypeError):
                detail = ", an unreadable page"
        with self.lock:
            number = self.pages.get(window, 0) + 1 if "cursor" in query else 1
            self.pages[window] = number
            if len(self.pages) > 1000:
                self.pages.clear()
            self.out.write(f"{environ['REQUEST_METHOD']} {environ.get('PATH_INFO', '')} "
                           f"{window[0]} .. {window[1]} page {number} -> {seen.get('status')}{detail}\n")
            self.out.flush()
        return [body]


def main(argv: list[str] | None = None) -> None:
    from werkzeug.serving import WSGIRequestHandler, make_server

    parser = argparse.ArgumentParser(prog="python -m demo.forge", description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=8701)
    parser.add_argument("--records-per-minute", type=float, default=RECORDS_PER_MINUTE)
    opts = parser.parse_args(argv)

    fake = ForgeFake(seed=1)
    fake.add_app(APP_ID, [ENVIRONMENT_ID], EMAIL, API_TOKEN,
                 records_per_minute=opts.records_per_minute, late_fraction=0.0)

    class QuietHandler(WSGIRequestHandler):
        def log_request(self, *args, **kwargs):  # CallLog prints a shorter line
            pass

    server = make_server("127.0.0.1", opts.port, CallLog(fake.wsgi()), threaded=True,
                         request_handler=QuietHandler)
    print(f"Forge App logs fake on http://127.0.0.1:{server.server_port}: app {APP_ID}, environment "
          f"{ENVIRONMENT_ID}, about {opts.records_per_minute:g} records a minute", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
