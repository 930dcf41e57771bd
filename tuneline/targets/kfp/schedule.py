"""A pipeline's `schedule:` as a KFP recurring-run definition.

KFP takes six-field cron (seconds first) and runs it in UTC, so a non-UTC schedule is shifted to UTC (standard
time: a daylight-saving zone runs an hour off in summer, which the definition says in its `note`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from ...spec.models import Schedule
from .. import CompileError


def _standard_offset_hours(zone: str) -> float:
    offset = datetime(2025, 1, 15, 12, tzinfo=ZoneInfo(zone)).utcoffset()
    return offset.total_seconds() / 3600 if offset else 0.0


def kfp_cron(schedule: Schedule) -> tuple[str, str | None]:
    """Six-field UTC cron for KFP, and a note when the time zone was converted."""
    minute, hour, day, month, weekday = schedule.cron.split()
    offset = _standard_offset_hours(schedule.timezone)
    if offset == 0:
        return f"0 {minute} {hour} {day} {month} {weekday}", None
    if not offset.is_integer() or not all(p.isdigit() for p in hour.split(",")):
        raise CompileError(f"cannot shift cron '{schedule.cron}' from {schedule.timezone} to UTC for KFP; "
                           f"write the schedule in UTC")
    hours = [int(h) - int(offset) for h in hour.split(",")]
    if any(h < 0 or h > 23 for h in hours) and (day, month, weekday) != ("*", "*", "*"):
        raise CompileError(f"cron '{schedule.cron}' in {schedule.timezone} falls on another day in UTC; write "
                           f"the schedule in UTC")
    utc_hours = ",".join(str(h % 24) for h in sorted(hours, key=lambda h: h % 24))
    note = (f"converted from '{schedule.cron}' {schedule.timezone} at UTC{offset:+g} (standard time); during "
            f"daylight saving time it runs an hour later in local time")
    return f"0 {minute} {utc_hours} {day} {month} {weekday}", note


@dataclass
class RecurringRun:
    """Arguments of kfp.Client.create_recurring_run, apart from the experiment id and the package path."""
    job_name: str
    description: str
    cron_expression: str
    max_concurrency: int = 1
    no_catchup: bool = True
    enabled: bool = True
    enable_caching: bool | None = None
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def kfp_recurring_run(schedule: Schedule, pipeline_name: str, no_cache: bool = False) -> RecurringRun:
    cron, note = kfp_cron(schedule)
    return RecurringRun(job_name=f"{pipeline_name}-schedule",
                        description=f"{pipeline_name} on '{schedule.cron}' ({schedule.timezone})",
                        cron_expression=cron, enable_caching=False if no_cache else None, note=note)
