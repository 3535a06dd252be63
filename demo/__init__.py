"""``./scripts/run --demo``: the whole service against local stand-ins, with logs visibly flowing.

- :mod:`demo.forge` serves the Forge App logs fake (``tests/fakes/forge.py``) with one demo app
  whose functions log continuously;
- :mod:`demo.receiver` is a logplex drain receiver that checks each request as Vector's
  ``heroku_logs`` source does and prints what it got;
- :mod:`demo.setup` provisions a resource through the Partner API (its options register the
  demo app as a source), adds a logplex drain pointing at the receiver, prints a banner, and
  serves the dashboard's sign-in link.

Demo tooling only: nothing under ``broker/``, ``web/`` or ``worker/`` imports it.
"""

# The demo app on the Forge fake, and the credentials the fake accepts for it.
APP_ID = "0d3e5a7c-4f1b-4c2e-9a10-5f0f8a4e1d2c"
ENVIRONMENT_ID = "demo-production"
EMAIL = "demo@forgedrain.test"
API_TOKEN = "ATATT-forgedrain-demo-token"
RECORDS_PER_MINUTE = 30.0
# What the broker processes run with in the demo (scripts/run exports them).
POLL_LAG_SECONDS = 30
DRAIN_NAME = "demo receiver"
PLAN = "basic"
