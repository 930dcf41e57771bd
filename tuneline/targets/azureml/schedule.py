"""A pipeline's `schedule:` as an Azure ML schedule YAML: five-field cron and a Windows time-zone name."""

from __future__ import annotations

from typing import Any

from ...spec.models import Schedule
from .. import CompileError

# IANA name -> the Windows name Azure ML schedules expect (azure.ai.ml.constants.TimeZone values).
WINDOWS_TIME_ZONES = {
    "UTC": "UTC", "Etc/UTC": "UTC", "GMT": "UTC",
    "Europe/London": "GMT Standard Time", "Europe/Dublin": "GMT Standard Time",
    "Europe/Paris": "Romance Standard Time", "Europe/Brussels": "Romance Standard Time",
    "Europe/Madrid": "Romance Standard Time", "Europe/Berlin": "W. Europe Standard Time",
    "Europe/Amsterdam": "W. Europe Standard Time", "Europe/Rome": "W. Europe Standard Time",
    "Europe/Zurich": "W. Europe Standard Time", "Europe/Stockholm": "W. Europe Standard Time",
    "Europe/Warsaw": "Central European Standard Time", "Europe/Helsinki": "FLE Standard Time",
    "America/New_York": "Eastern Standard Time", "America/Chicago": "Central Standard Time",
    "America/Denver": "Mountain Standard Time", "America/Los_Angeles": "Pacific Standard Time",
    "America/Sao_Paulo": "E. South America Standard Time", "Asia/Tokyo": "Tokyo Standard Time",
    "Asia/Kolkata": "India Standard Time", "Asia/Shanghai": "China Standard Time",
    "Asia/Singapore": "Singapore Standard Time", "Australia/Sydney": "AUS Eastern Standard Time",
}

AZUREML_SCHEDULE_SCHEMA = "https://azuremlschemas.azureedge.net/latest/schedule.schema.json"


def windows_time_zone(name: str) -> str:
    try:
        return WINDOWS_TIME_ZONES[name]
    except KeyError:
        raise CompileError(f"schedule timezone '{name}' has no Azure ML equivalent known to tuneline; use one of "
                           f"{', '.join(sorted(WINDOWS_TIME_ZONES))}") from None


def azureml_schedule(schedule: Schedule, pipeline_name: str, job_file: str) -> dict[str, Any]:
    return {
        "$schema": AZUREML_SCHEDULE_SCHEMA,
        "name": f"{pipeline_name}-schedule",
        "display_name": f"{pipeline_name} ({schedule.cron} {schedule.timezone})",
        "trigger": {"type": "cron", "expression": schedule.cron,
                    "time_zone": windows_time_zone(schedule.timezone)},
        "create_job": job_file,
    }
