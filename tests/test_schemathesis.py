"""Schemathesis against ``/v1/openapi.json``: cases generated from the published schema, in process.

Every operation gets a bounded number of cases, valid and invalid by the schema, with the
caller's real ``FORGEDRAIN_TOKEN`` and its own resource id (so the cases reach the views, not the
404 of a stranger's id); a ``source_id`` or ``drain_id`` is the resource's own source or drain (made
again when a case deleted it) or whatever schemathesis generated. Schemathesis'
``not_a_server_error`` check runs on every answer: the one 5xx that is an answer rather than a
failure is a drain test whose receiver did not take the record (502 ``test_failed``), which the
schema documents. Nothing leaves this machine: names and addresses resolve only when they are
loopback (see :func:`tests.test_fuzz.loopback_only`), Forge is the fake on loopback.
"""

from __future__ import annotations

import zlib
from collections import Counter

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from tests.test_fuzz import children, owner  # noqa: F401 (owner is a fixture)

# Cases per operation and generation mode (valid, invalid by the schema): 13 operations × 2 × 30.
MAX_EXAMPLES = 30
CASES = settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
                 suppress_health_check=list(HealthCheck))


def answered_test_failed(response) -> bool:
    """A drain test whose receiver did not take the record: 502 ``test_failed``, as documented."""
    try:
        return response.status_code == 502 and response.json().get("error") == "test_failed"
    except ValueError:
        return False


@pytest.mark.timeout(900)  # ~30 s alone; CPU-bound, so several times that beside 7 other workers under load
def test_no_request_generated_from_the_openapi_schema_gets_a_5xx(owner, conn):  # noqa: F811
    """schemathesis' pytest plugin does not run under pytest 9 (it sets ``Function._nodeid``), so its
    strategies are driven here: one Hypothesis run per operation and mode, failures collected."""
    schema = schemathesis.openapi.from_wsgi("/v1/openapi.json", owner["client"].application)
    failures: list[str] = []
    statuses: Counter = Counter()
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 13, [op.label for op in operations]
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            strategy = operation.as_strategy(generation_mode=mode)

            @CASES
            @given(case=strategy)
            def run(case):
                source, drain = children(owner, conn)
                parameters = case.path_parameters if case.path_parameters is not None else {}
                if "id" in parameters:
                    parameters["id"] = owner["rid"]
                for name, own in (("source_id", source), ("drain_id", drain)):
                    if name in parameters and zlib.crc32(repr(parameters[name]).encode()) % 4:
                        parameters[name] = own
                response = case.call(headers=owner["auth"])
                statuses[response.status_code // 100 * 100] += 1
                if not answered_test_failed(response):
                    case.validate_response(response, checks=[not_a_server_error])
                if operation.path == "/v1/resources/{id}/token" and response.status_code == 200:
                    owner["auth"] = {"Authorization": f"Bearer {response.json()['token']}"}

            try:
                run()
            except AssertionError as exc:  # schemathesis' failures are AssertionErrors, shrunk
                failures.append(f"{operation.label} ({mode.value}): {exc}")
    assert not failures, "\n\n".join(failures)
    # The cases reached the views: some were taken, many refused with a precise 4xx.
    assert statuses[200] >= 20 and statuses[400] >= 100, statuses
