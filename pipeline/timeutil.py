"""Time, once: the lengths in milliseconds every module counts in, and how a moment prints."""

from __future__ import annotations

from datetime import UTC, datetime

HOUR_MS = 3_600_000
DAY_MS = 86_400_000
YEAR_MS = 365.25 * DAY_MS


def iso(ms: int) -> str:
    """A moment in ms since the epoch as UTC ISO text to the minute: 2020-01-01T06:00Z."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%MZ")
