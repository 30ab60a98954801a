"""Cron schedules in settings: checked where they are set, not deep inside Airflow.

A schedule is a cron expression (five fields) or one of the presets Airflow's cron
timetables take (`@hourly`, `@daily`, `@weekly`, `@monthly`, `@yearly`), read in an
IANA time zone. Both are checked when the settings load, so a bad value is an import
error of the DAG naming the setting and an example. croniter (Airflow's) checks the
expression fully where it is installed; the trader's environment has no Airflow and
checks the shape only (it never schedules).
"""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

PRESETS = ("@hourly", "@daily", "@midnight", "@weekly", "@monthly", "@yearly", "@annually")


def check_cron(value: str, example: str) -> str:
    """`value` stripped if it is a valid cron expression or preset; else ValueError."""
    value = value.strip()
    problem = _cron_problem(value)
    if problem:
        raise ValueError(
            f"{value!r} is not a cron schedule ({problem}): write five fields "
            f"(minute hour day-of-month month day-of-week), e.g. {example!r}, or one of "
            f"{', '.join(PRESETS[:5])}"
        )
    return value


def _cron_problem(value: str) -> str | None:
    if value.startswith("@"):
        return None if value in PRESETS else "unknown preset"
    if len(value.split()) != 5:
        return f"{len(value.split())} fields"
    try:
        from croniter import croniter
    except ImportError:  # the trader's environment: no scheduler, the shape is enough
        return None
    return None if croniter.is_valid(value) else "a field is out of range or malformed"


def check_timezone(value: str) -> str:
    """`value` if it names an IANA time zone; else ValueError with examples."""
    value = value.strip()
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"{value!r} is not an IANA time zone: e.g. 'UTC', 'America/New_York' or 'Europe/London'"
        ) from None
    return value


def fires_off_the_hour(cron: str, timezone: str, count: int = 48) -> datetime | None:
    """The first of the next `count` times `cron` fires in `timezone` (from now) that is
    not a whole hour in UTC, or None (also when croniter is not installed)."""
    try:
        from croniter import croniter
    except ImportError:
        return None
    zone = ZoneInfo(timezone)
    times = croniter(cron, datetime.now(zone))  # croniter expands the presets itself
    for _ in range(count):
        fired = times.get_next(datetime).astimezone(UTC)
        if fired.minute or fired.second:
            return fired
    return None


def schedule_doc(cron: str, timezone: str, setting: str) -> str:
    """A paragraph for a DAG's docs in the UI: its schedule and the settings that set it."""
    env = "CRYPTOBOTS_" + setting.upper().replace(".", "__")
    return (
        f"\n**Schedule:** `{cron}` in {timezone}, from the settings `{setting}` and "
        f"`{setting}_timezone` (`{env}`, `{env}_TIMEZONE`, or the YAML file of "
        '`CRYPTOBOTS_CONFIG`); the README\'s "Schedules" says how to change it.\n'
    )
