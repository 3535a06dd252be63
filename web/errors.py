"""JSON error bodies with a stable code and a human message (SPEC §2)."""

from __future__ import annotations

import json
import math

from flask import Response

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
