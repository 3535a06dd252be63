"""HTTP sessions for the broker's own calls out: Atlassian's App logs API and Heroku's APIs.

Environment settings are not trusted (``trust_env = False``): an ``HTTP(S)_PROXY`` or
``ALL_PROXY`` in the dyno's environment would route calls that carry the owners' Forge
API tokens and Heroku's OAuth tokens through a third party, and ``~/.netrc`` would attach
credentials nobody configured for these hosts. Drains use :func:`broker.sinks.http.new_session`,
which is stricter still (the SSRF guard).
"""

from __future__ import annotations

import requests


def session() -> requests.Session:
    """A session for calls to Atlassian or Heroku: no proxies or credentials from the environment."""
    made = requests.Session()
    made.trust_env = False
    return made
