"""Time as the service writes it: one format for every timestamp it stores or shows.

ISO 8601 in UTC with milliseconds and a `Z` ("2025-11-25T17:00:00.500Z"). Strings in
this format sort in time order, which the database relies on (retention's cutoff).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta


def iso(when: datetime) -> str:
    """An aware datetime as the service writes it."""
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def now_iso() -> str:
    return iso(datetime.now(UTC))


def iso_from_unix(unix_seconds: float) -> str:
    """1764090000.5 -> "2025-11-25T17:00:00.500Z"."""
    return iso(datetime.fromtimestamp(unix_seconds, UTC))


def iso_days_before(now: datetime, days: int) -> str:
    """The timestamp `days` days before `now`."""
    return iso(now - timedelta(days=days))
