"""Plans and their limits (SPEC §1)."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Plan:
    name: str
    max_sources: int
    # Drains the owner adds; the built-in `heroku` drain (the app's own log
    # stream, made from log_input_url) does not count.
    max_drains: int
    poll_interval_seconds: int
    backlog_hours: int
    # Drain ingest volume per minute (records = logplex frames, bytes as inflated), counted per
    # resource over a sliding minute: the cap on what one drain token can make the broker store
    # (broker.ingest.VolumeLimit). Far above a normal app: a web app at 100 requests/s makes
    # ~6,000 router lines a minute of ~300 bytes each; the bytes allow ~1 KiB per frame.
    # INGEST_LIMIT_SCALE multiplies both for every plan.
    ingest_frames_per_minute: int
    ingest_bytes_per_minute: int

    def limits(self) -> dict[str, int]:
        """What the resource API shows as ``limits`` (ingest volume is shown with ingest)."""
        data = asdict(self)
        for key in ("name", "ingest_frames_per_minute", "ingest_bytes_per_minute"):
            data.pop(key)
        return data


MIB = 1024 * 1024

PLANS = {
    plan.name: plan
    for plan in (
        Plan("test", max_sources=1, max_drains=2, poll_interval_seconds=300, backlog_hours=24,
             ingest_frames_per_minute=6_000, ingest_bytes_per_minute=6 * MIB),
        Plan("basic", max_sources=5, max_drains=5, poll_interval_seconds=60, backlog_hours=72,
             ingest_frames_per_minute=60_000, ingest_bytes_per_minute=60 * MIB),
        Plan("pro", max_sources=25, max_drains=25, poll_interval_seconds=60, backlog_hours=168,
             ingest_frames_per_minute=300_000, ingest_bytes_per_minute=300 * MIB),
    )
}


def get(name: object) -> Plan | None:
    return PLANS.get(name) if isinstance(name, str) else None


def names() -> str:
    return ", ".join(PLANS)


def excess(plan: Plan, sources: int, drains: int) -> list[str]:
    """What must be removed for a resource with this usage to fit ``plan`` (empty when it fits)."""
    problems = []
    if sources > plan.max_sources:
        extra = sources - plan.max_sources
        problems.append(f"{extra} source{'s' if extra > 1 else ''} "
                        f"(plan {plan.name} allows {plan.max_sources}, the resource has {sources})")
    if drains > plan.max_drains:
        extra = drains - plan.max_drains
        problems.append(f"{extra} drain{'s' if extra > 1 else ''} "
                        f"(plan {plan.name} allows {plan.max_drains}, the resource has {drains})")
    return problems
