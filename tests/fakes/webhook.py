"""An alert webhook receiver that checks signatures with the README's own recipe.

:func:`readme_verify` takes the Python block after the ``<!-- webhook-verify`` marker in the
README and runs it, so the recipe owners copy is the one the tests prove. The receiver answers
401 to a notice whose signature does not verify (recorded in ``refused``), can be told to fail
the next requests (:meth:`Inbox.fail`), and can hold the first request until released (to kill
its sender meanwhile).
"""

from __future__ import annotations

import re
import threading
from pathlib import Path

import orjson
from flask import Flask, Response, request

from tests.fakes.receivers import Inbox

README = Path(__file__).resolve().parent.parent.parent / "README.md"


def readme_verify():
    """The ``verify(secret, headers, body)`` function of the README."""
    text = README.read_text(encoding="utf-8")
    match = re.search(r"<!-- webhook-verify[^>]*-->\n```python\n(.*?)```", text, re.S)
    assert match, "the README has no webhook verification recipe"
    scope: dict = {}
    exec(compile(match.group(1), "README.md", "exec"), scope)  # noqa: S102 — our own README
    return scope["verify"]


def webhook_receiver(secret: str | None = None, *, hold_first: bool = False) -> tuple[Flask, Inbox]:
    """``app.config["secret"]`` is the signing secret to verify with (set it once the PUT told it)."""
    app, inbox, verify = Flask("webhook-receiver"), Inbox(), readme_verify()
    app.config.update(secret=secret, arrived=threading.Event(), release=threading.Event())
    seen = [0]

    @app.post("/<path:path>")
    @app.post("/")
    def receive(path: str = ""):
        body = request.get_data()
        with inbox.lock:
            seen[0] += 1
            first = seen[0] == 1
        if not verify(app.config["secret"] or "", request.headers, body):
            inbox.refused.append(f"bad signature {request.headers.get('X-Forgedrain-Signature')!r}")
            return Response("bad signature", 401)
        injected = inbox._injected()
        if injected is not None:
            return injected
        notice = orjson.loads(body)
        with inbox.lock:
            inbox.requests.append({"body": notice, "headers": dict(request.headers), "raw": body,
                                   "path": request.path})
        if hold_first and first:  # read and recorded; the answer waits until the sender is dead
            app.config["arrived"].set()
            app.config["release"].wait(30)
        return Response(status=200)

    return app, inbox
