"""Client for Heroku's identity service and Platform API (what a partner calls).

Research: heroku-addon-and-logplex.md §2. Every call has a (connect, read)
timeout; every failure becomes a :class:`HerokuError` that says whether a
later attempt could succeed. Messages never carry tokens, codes or secrets.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from urllib.parse import quote

import requests

from broker.config import Settings

# Connect quickly or give up; Heroku answers these calls in well under a second.
TIMEOUT = (3.05, 10)
USER_AGENT = "forgedrain/1 (+add-on partner)"
PLATFORM_ACCEPT = "application/vnd.heroku+json; version=3"


class HerokuError(Exception):
    def __init__(self, message: str, *, retryable: bool, status: int | None = None):
        super().__init__(message)
        self.retryable = retryable
        self.status = status


@dataclass(frozen=True)
class TokenSet:
    access_token: str
    refresh_token: str | None
    expires_in: int


def _classify(response: requests.Response, what: str) -> None:
    if response.status_code < 400:
        return
    retryable = response.status_code == 429 or response.status_code >= 500
    raise HerokuError(f"{what}: HTTP {response.status_code}", retryable=retryable,
                      status=response.status_code)


def _send(session: requests.Session, method: str, url: str, what: str, **kwargs) -> requests.Response:
    try:
        response = session.request(method, url, timeout=TIMEOUT, **kwargs)
    except requests.RequestException as exc:
        raise HerokuError(f"{what}: {type(exc).__name__}", retryable=True) from None
    _classify(response, what)
    return response


def _token_set(response: requests.Response, what: str) -> TokenSet:
    try:
        body = response.json()
        access = body["access_token"]
        expires_in = int(body.get("expires_in", 28800))
        refresh = body.get("refresh_token")
        if not isinstance(access, str) or not access or (refresh is not None and not isinstance(refresh, str)):
            raise ValueError
    except (ValueError, KeyError, TypeError):
        raise HerokuError(f"{what}: malformed token response", retryable=True) from None
    return TokenSet(access, refresh, max(expires_in, 0))


def _token_request(session: requests.Session, settings: Settings, what: str, form: dict) -> TokenSet:
    response = _send(
        session, "POST", f"{settings.heroku_id_url}/oauth/token", what,
        data={**form, "client_secret": settings.heroku_client_secret},
        headers={"User-Agent": USER_AGENT, "Accept": "application/json"},
    )
    return _token_set(response, what)


def exchange_grant(session: requests.Session, settings: Settings, code: str) -> TokenSet:
    """Trade a provisioning ``oauth_grant`` code for tokens (it expires in minutes)."""
    return _token_request(session, settings, "grant exchange",
                          {"grant_type": "authorization_code", "code": code})


def refresh(session: requests.Session, settings: Settings, refresh_token: str) -> TokenSet:
    return _token_request(session, settings, "token refresh",
                          {"grant_type": "refresh_token", "refresh_token": refresh_token})


def _platform_headers(access_token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {access_token}", "Accept": PLATFORM_ACCEPT,
            "User-Agent": USER_AGENT}


def update_config(session: requests.Session, settings: Settings, addon_id: str,
                  access_token: str, config: dict[str, str]) -> None:
    _send(
        session, "PATCH", f"{settings.heroku_api_url}/addons/{addon_id}/config", "config update",
        json={"config": [{"name": k, "value": v} for k, v in config.items()]},
        headers=_platform_headers(access_token),
    )


def mark_provisioned(session: requests.Session, settings: Settings, addon_id: str,
                     access_token: str) -> None:
    _send(
        session, "POST", f"{settings.heroku_api_url}/addons/{addon_id}/actions/provision",
        "provision action", headers=_platform_headers(access_token),
    )


# An add-on has one or two log drains; a listing past this is not Heroku's answer.
MAX_LISTING_BYTES = 1 << 20


def log_drains(session: requests.Session, settings: Settings, addon_id: str, access_token: str) -> list[dict]:
    """The add-on's log drains (``id``, ``url``, ``token``, …), read at most :data:`MAX_LISTING_BYTES`."""
    what = "log drain listing"
    response = _send(session, "GET", f"{settings.heroku_api_url}/addons/{addon_id}/log-drains", what,
                     headers=_platform_headers(access_token), stream=True)
    with response:
        body = response.raw.read(MAX_LISTING_BYTES + 1, decode_content=True)
    if len(body) > MAX_LISTING_BYTES:
        raise HerokuError(f"{what}: answer larger than {MAX_LISTING_BYTES} bytes", retryable=False)
    try:
        drains = json.loads(body)
        if not isinstance(drains, list) or not all(isinstance(d, dict) for d in drains):
            raise ValueError
    except ValueError:
        raise HerokuError(f"{what}: malformed answer", retryable=True) from None
    return drains


def move_log_drain(session: requests.Session, settings: Settings, addon_id: str, access_token: str,
                   drain_token: str, url: str) -> None:
    """Point the add-on's drain (found by its ``d.…`` token) at ``url``."""
    _send(session, "PUT", f"{settings.heroku_api_url}/addons/{addon_id}/log-drains/{quote(drain_token, safe='')}",
          "log drain update", json={"url": url}, headers=_platform_headers(access_token))
