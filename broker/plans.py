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

    def limits(self) -> dict[str, int]:
        data = asdict(self)
        data.pop("name")
        return data


PLANS = {
    plan.name: plan
    for plan in (
        Plan("test", max_sources=1, max_drains=2, poll_interval_seconds=300, backlog_hours=24),
        Plan("basic", max_sources=5, max_drains=5, poll_interval_seconds=60, backlog_hours=72),
        Plan("pro", max_sources=25, max_drains=25, poll_interval_seconds=60, backlog_hours=168),
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
