"""The years treemap works in: the Sentinel-2 era (from 2015, Sentinel-2A's launch) to next year, computed when asked
so the range moves on with the calendar. One rule for every command, recipe and API request."""

from __future__ import annotations

from datetime import date

from treemap.errors import DateRangeError

SENTINEL2_FIRST_YEAR = 2015  # Sentinel-2A's launch: no L2A scene is older
ERA = "the Sentinel-2 era to next year"


def year_range() -> tuple[int, int]:
    """(first, last) year accepted anywhere: 2015 .. the current year + 1."""
    return SENTINEL2_FIRST_YEAR, date.today().year + 1


def in_era(year: int) -> bool:
    first, last = year_range()
    return first <= year <= last


def check_year(year: int, what: str = "year") -> int:
    """``year`` when it lies in :func:`year_range`, else a one-line :class:`DateRangeError`."""
    first, last = year_range()
    if not first <= year <= last:
        raise DateRangeError(f"{what} {year} is outside {first}..{last} ({ERA})")
    return year


def default_year(catalog: str) -> int:
    """The year a run maps when no dates are given: the demo world's year for the demo catalog, else last year
    (the latest complete one)."""
    if catalog == "demo":
        from treemap.demo import WorldSpec

        return WorldSpec().year
    return date.today().year - 1
