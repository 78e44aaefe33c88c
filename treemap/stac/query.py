"""What a search asks for (:class:`Query`) and the filter every catalog applies to the items it finds.

An item matches a query when its datetime lies in the date range, its cloud cover is at most the ceiling, and its
footprint (the item's ``geometry``; its bbox when it has none) intersects the query's area: the AOI geometry when
the query carries one, else its lon/lat bbox. This is the rule of STAC API item search (``intersects``/``bbox`` are
tested against the item geometry), so a local catalog answers like an API: an AOI inside an item's bbox but
outside its footprint, e.g. in the nodata corner of a diagonal orbit swath, does not get that item.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from typing import Iterable, Mapping, Protocol

import pystac
import shapely
from shapely.geometry import box, shape
from shapely.geometry.base import BaseGeometry

from treemap.stac.scene import ItemError, Scene, normalise_item, parse_item

log = logging.getLogger("treemap.stac")


@dataclass(frozen=True)
class Query:
    """What to search: a lon/lat bbox, an inclusive date range, a cloud-cover ceiling (percent), and optionally the
    AOI geometry itself (shapely, EPSG:4326), which then decides the spatial match instead of the bbox."""

    bbox: tuple[float, float, float, float]
    start: date
    end: date
    max_cloud: float = 100.0
    geometry: BaseGeometry | None = None

    @property
    def start_dt(self) -> datetime:
        return datetime.combine(self.start, time.min, tzinfo=timezone.utc)

    @property
    def end_dt(self) -> datetime:
        return datetime.combine(self.end, time.max, tzinfo=timezone.utc)

    @property
    def area(self) -> BaseGeometry:
        """The lon/lat area items must intersect."""
        return self.geometry if self.geometry is not None else box(*self.bbox)


def date_window(start: date | None, end: date | None, default_year: int) -> tuple[date, date]:
    """Fill a missing end (or start) so the window spans one year; both missing: the whole ``default_year``.
    Same rule as ``treemap.run.resolve_dates``, without importing the model stack (``treemap search`` stays fast)."""
    from treemap.errors import DateRangeError

    if start is None and end is None:
        return date(default_year, 1, 1), date(default_year, 12, 31)

    def shift(day: date, years: int) -> date:
        return day.replace(year=day.year + years, day=min(day.day, 28) if (day.month, day.day) == (2, 29) else day.day)

    if start is None:
        start = shift(end, -1) + timedelta(days=1)
    if end is None:
        end = shift(start, 1) - timedelta(days=1)
    if start > end:
        raise DateRangeError(f"--start {start.isoformat()} is after --end {end.isoformat()}")
    return start, end


class Catalog(Protocol):
    name: str

    def search(self, query: Query) -> list[Scene]: ...


def footprint(item: pystac.Item, scene: Scene) -> BaseGeometry:
    """The item's footprint in lon/lat: its geometry (made valid if needed), or its bbox when it has none."""
    if item.geometry:
        try:
            geom = shape(item.geometry)
            if not geom.is_valid:
                geom = shapely.make_valid(geom)
            if not geom.is_empty:
                return geom
        except (shapely.errors.GEOSException, ValueError, TypeError, AttributeError, KeyError) as exc:
            log.debug("item %s: unusable geometry (%s); using its bbox", scene.id, exc)
    return box(*scene.bbox)


#: A normalised scene and its footprint.
Entry = tuple[Scene, BaseGeometry]


def normalise_all(items: Iterable[tuple[Mapping | pystac.Item, str | None]]) -> list[Entry]:
    """(scene, footprint) of every usable item of ``(item, base_href)`` pairs; the others are skipped with a
    warning naming them (a catalog with some broken items still serves the rest). Item dicts are the caller's
    own (read for this search): pystac may reuse them."""
    entries = []
    for raw, base in items:
        item_id = raw.id if isinstance(raw, pystac.Item) else (raw.get("id", "?") if isinstance(raw, Mapping) else "?")
        try:
            item = parse_item(raw, owned=True)
            scene = normalise_item(item, base_href=base)
        except (ItemError, KeyError, TypeError, ValueError) as exc:
            log.warning("skipping item %s: %s", item_id, exc)
            continue
        entries.append((scene, footprint(item, scene)))
    return entries


def select(entries: Iterable[Entry], query: Query) -> list[Scene]:
    """The scenes that match ``query`` (see the module docstring), in time order."""
    area = query.area
    shapely.prepare(area)
    chosen = []
    for scene, foot in entries:
        if not query.start_dt <= scene.datetime <= query.end_dt:
            continue
        if scene.cloud_cover is not None and scene.cloud_cover > query.max_cloud:
            continue
        if area.intersects(foot):
            chosen.append(scene)
    return sorted(chosen, key=lambda s: (s.datetime, s.id))
