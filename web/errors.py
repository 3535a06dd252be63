"""JSON in and out of the resource API: bodies read as JSON objects of storable text, and error
bodies with a stable code and a human message (SPEC §2).

Views raise; they do not answer errors themselves. A bad body or field is an
:class:`InputError` and a refused use case an :class:`~broker.operations.OperationError` (a
subclass names its own ``http_status`` and ``code``); :func:`invalid` and :func:`refused` turn them
into answers, registered once on the resource API's blueprint (``web.api``). A missing source or
drain is :func:`owned`'s JSON 404.
"""

from __future__ import annotations

import json
import math
import uuid
from typing import NoReturn

from flask import Response, abort, g, request

from broker import operations
from broker.validation import InputError
from web import services

JSON = "application/json"


def json_response(body: dict, status: int = 200, content_type: str = JSON,
                  headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(body, separators=(",", ":"), default=str), status=status,
                    content_type=content_type, headers=headers)


def error(status: int, code: str, message: str, content_type: str = JSON,
          headers: dict[str, str] | None = None) -> Response:
    return json_response({"error": code, "message": message}, status, content_type, headers)


def retry_after_header(seconds: float | None) -> dict[str, str] | None:
    """``Retry-After`` in whole seconds, rounded up (at least 1), or None without a wait."""
    if seconds is None or seconds <= 0:
        return None
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


def not_found(what: str) -> NoReturn:
    """Answer the JSON 404 ``no such <what>`` now (the same for a missing id and an unparseable one)."""
    abort(error(404, "not_found", f"no such {what}"))


def owned(lookup, child_id: str, noun: str) -> dict:
    """The authenticated resource's (``g.resource``) child ``child_id``, as ``lookup(conn, resource
    id, child id)`` finds it; :func:`not_found` otherwise. Flaskr's ``get_post(id)``."""
    try:
        parsed = str(uuid.UUID(child_id))
    except ValueError:
        not_found(noun)
    with services().db.connection() as conn:
        row = lookup(conn, g.resource["id"], parsed)
    if row is None:
        not_found(noun)
    return row


def json_object_body() -> dict:
    """The request's JSON body, a JSON object whose every string (keys included) is text that can
    be stored and sent: :class:`InputError` otherwise, naming where (``body`` when unreadable)."""
    if not request.get_data(cache=True):
        raise InputError("body", "request body must be a JSON object")
    try:
        body = request.get_json(force=True, silent=False, cache=True)
    except Exception:
        raise InputError("body", "request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise InputError("body", "request body must be a JSON object")
    _check_text(body, "")
    return body


def test_message() -> str | None:
    """The optional ``{"message": …}`` body of "send a test record / notice": None without a body
    (the operation's own words), the message otherwise; :class:`InputError` for any other field."""
    if not request.get_data(cache=True):
        return None
    body = json_object_body()
    if set(body) - {"message"}:
        raise InputError(sorted(set(body) - {"message"})[0], "the only field is message")
    return body.get("message")


def _check_text(value, where: str) -> None:
    """Refuse NUL characters and lone surrogates (``"\\ud800"`` is valid JSON but not text):
    PostgreSQL, the vault and HTTP headers each fail on them later."""
    if isinstance(value, str):
        if "\x00" in value:
            raise InputError(where or "body", f"{where or 'a value'} contains a NUL character")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InputError(where or "body", f"{where or 'a value'} is not valid Unicode text "
                                              "(a lone surrogate)") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_text(key, f"{where}.{key!r}" if where else "a field name")
            _check_text(item, f"{where}.{key}" if where else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_text(item, f"{where}[{index}]")


def invalid(exc: InputError) -> Response:
    """400 for an unreadable body, 422 naming the bad field otherwise."""
    return json_response({"error": "invalid", "message": exc.message, "field": exc.field},
                         400 if exc.field == "body" else 422)


def refused(exc: operations.OperationError) -> Response:
    """A refused :mod:`broker.operations` call: its own status, code and message, and ``Retry-After``
    when a :class:`~broker.operations.Refused` says when to try again."""
    headers = retry_after_header(exc.refusal.retry_after) if isinstance(exc, operations.Refused) else None
    return error(exc.http_status, exc.code, exc.message, headers=headers)
