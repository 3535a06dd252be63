"""The order tests are handed out in: the slowest first.

``./scripts/test`` runs the suite on several pytest-xdist workers with ``--dist loadgroup``, which
hands tests out one at a time in collection order to whichever worker is free. A long test handed
out last ends the run alone while the other workers idle; handed out first, it overlaps everything
else. So the tests that take longest (measured with ``--durations``: the chaos run's short profile
alone takes ~3.5 min) are moved to the front, in this order; every other test keeps pytest's order.

Entries are node id prefixes: a whole file (``tests/test_x.py``), or a test in it
(``tests/test_x.py::test_y``, which covers each of its parameters). A prefix that matches nothing
costs nothing: only the order changes, never what runs.
"""

from __future__ import annotations

from typing import Sequence, TypeVar

# From ``./scripts/test --durations=60 -p no:xdist`` (2026-12-02), longest first.
SLOWEST = (
    "tests/test_chaos.py::test_short_chaos_run_loses_nothing",
    "tests/test_polling.py::test_a_15_day_outage_records_a_gap_and_recovers_the_rest",
    "tests/test_polling.py::test_consecutive_windows_with_late_records_lose_nothing_and_store_nothing_twice",
    "tests/test_schemathesis.py::test_no_request_generated_from_the_openapi_schema_gets_a_5xx",
    "tests/test_poll_jobs.py::test_four_workers_in_parallel_never_exceed_the_apps_limit",
    "tests/test_delivery_lanes.py::test_a_hostile_tenant_cannot_hold_back_a_healthy_one",
    "tests/test_polling_progress.py::test_a_window_whose_cursor_dies_shrinks_and_keeps_what_it_read",
    "tests/test_polling.py::test_a_source_whose_records_reach_the_api_late_polls_with_a_longer_lag",
    "tests/test_forge_fake.py::test_it_makes_a_deterministic_fraction_of_generated_records_awkward",
    "tests/test_poll_jobs.py::test_a_worker_killed_mid_poll_loses_nothing_and_stores_nothing_twice",
    "tests/test_fuzz.py::test_no_dashboard_form_causes_a_5xx_and_refusals_change_nothing",
    "tests/test_polling_progress.py::test_a_two_hour_backlog_arrives_complete_and_once_whatever_the_pages",
    "tests/test_forge_fake.py::test_it_serves_every_record_of_a_busy_app",
    "tests/test_migrate.py::test_the_command_exits_non_zero_on_a_changed_file",
    "tests/test_rules.py::test_detectors_that_need_a_literal_miss_nothing_when_whole_batches_are_looked_at_first",
    "tests/test_formats.py::test_any_typed_body_or_attribute_encodes_alike_in_otlp_json_and_both_protobuf_paths",
    "tests/test_polling_progress.py::test_the_busy_app_that_never_arrived_now_does",
    "tests/test_formats.py::test_any_record_gives_frames_a_strict_logplex_reader_accepts",
    "tests/test_demo.py::test_the_demo_brings_forge_records_to_the_receiver_and_signs_in",
    "tests/test_polling_edges.py::test_a_millisecond_no_poll_can_read_becomes_a_recorded_gap_and_the_rest_arrives",
    "tests/test_dashboard_browser.py",
)

T = TypeVar("T")


def rank(nodeid: str, slowest: Sequence[str] = SLOWEST) -> int:
    """The position of the first entry of ``slowest`` that ``nodeid`` falls under; after them all if none."""
    for position, prefix in enumerate(slowest):
        if nodeid == prefix or nodeid.startswith(prefix + "[") or nodeid.startswith(prefix + "::"):
            return position
    return len(slowest)


def slowest_first(items: list[T]) -> list[T]:
    """``items`` (pytest items) with the known slow ones first, the rest in their order (a stable sort)."""
    return sorted(items, key=lambda item: rank(item.nodeid))
