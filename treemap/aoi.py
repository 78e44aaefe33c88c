"""Read and validate an area of interest: a GeoJSON Polygon or MultiPolygon in EPSG:4326."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import shapely
from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry

from treemap.documents import read_json
from treemap.errors import AOIError

_POLYGONAL = ("Polygon", "MultiPolygon")


@dataclass(frozen=True)
class AOI:
    """A validated area of interest (longitude/latitude, EPSG:4326)."""

    geometry: BaseGeometry
    source: str = "<memory>"

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        return tuple(self.geometry.bounds)  # type: ignore[return-value]

    def to_geojson(self) -> dict:
        return shapely.geometry.mapping(self.geometry)


def _geometries(doc: object, source: str, label: str = "") -> list[tuple[str, dict]]:
    """The geometries of a GeoJSON object, each with where it sits (" (feature 2)") for messages."""
    if not isinstance(doc, dict) or "type" not in doc:
        raise AOIError(f"{source}{label}: not a GeoJSON object (no 'type' member)")
    kind = doc["type"]
    if kind in ("FeatureCollection", "GeometryCollection"):
        key, item = ("features", "feature") if kind == "FeatureCollection" else ("geometries", "geometry")
        members = doc.get(key)
        if not isinstance(members, list) or not members:
            raise AOIError(f"{source}{label}: {kind} has no {key}" + (
                f" ('{key}' is {type(members).__name__}, not a list)" if members is not None and
                not isinstance(members, list) else ""))
        out: list[tuple[str, dict]] = []
        for i, member in enumerate(members, start=1):
            inner = f"{label[:-1]}, {item} {i})" if label else f" ({item} {i})"
            out.extend(_geometries(member, source, inner if len(members) > 1 else label))
        return out
    if kind == "Feature":
        geometry = doc.get("geometry")
        if geometry is None:
            raise AOIError(f"{source}{label}: Feature has no geometry")
        return _geometries(geometry, source, label)
    return [(label, doc)]


def _polygon(geom: dict, source: str, label: str) -> BaseGeometry:
    """One Polygon or MultiPolygon, checked: not empty, in longitude/latitude, valid."""
    kind = geom.get("type")
    if kind not in _POLYGONAL:
        raise AOIError(f"{source}{label}: geometry type {kind} is not a Polygon or MultiPolygon")
    try:
        polygon = shape(geom)
    except (ValueError, TypeError, AttributeError, IndexError, KeyError, shapely.errors.GEOSException) as exc:
        why = f"no {exc} member" if isinstance(exc, KeyError) else str(exc)
        raise AOIError(f"{source}{label}: invalid {kind} coordinates ({why})") from None
    if polygon.is_empty:
        raise AOIError(f"{source}{label}: the AOI polygon is empty (it has no coordinates)")
    minx, miny, maxx, maxy = polygon.bounds
    if minx < -180 or maxx > 180 or miny < -90 or maxy > 90:
        raise AOIError(f"{source}{label}: coordinates are not longitude/latitude (EPSG:4326); reproject the AOI")
    if not polygon.is_valid:
        if polygon.convex_hull.area == 0:
            raise AOIError(f"{source}{label}: the AOI polygon has no area (its points lie on one line)")
        reason = shapely.is_valid_reason(polygon)
        match = re.fullmatch(r"(.*?)\[(\S+) (\S+)\]", reason)
        what, at = (match.group(1), f" at lon {float(match.group(2)):.6g}, lat {float(match.group(3)):.6g}") \
            if match else (reason, "")
        what = "it is self-intersecting" if "self-intersection" in what.lower() else what[:1].lower() + what[1:]
        raise AOIError(f"{source}{label}: the AOI polygon is not valid: {what}{at} (repair it, e.g. with QGIS "
                       f"'Fix geometries' or shapely.make_valid)")
    if polygon.area == 0:
        raise AOIError(f"{source}{label}: the AOI polygon has no area")
    return polygon


def aoi_from_geojson(doc: object, source: str = "<memory>") -> AOI:
    """Validate a parsed GeoJSON document (Feature, FeatureCollection or Geometry) as an AOI."""
    parts = [_polygon(geom, source, label) for label, geom in _geometries(doc, source)]
    try:
        geometry = shapely.union_all(parts) if len(parts) > 1 else parts[0]
    except shapely.errors.GEOSException as exc:
        raise AOIError(f"{source}: the AOI polygons cannot be merged ({str(exc).splitlines()[0]})") from None
    return AOI(geometry=geometry, source=source)


def read_aoi(path: str | Path) -> AOI:
    """Read an AOI file; every problem becomes an AOIError with one line (AOINotFoundError for a missing file)."""
    path = Path(path)
    doc = read_json(path, what="AOI file", kind="GeoJSON", error=AOIError)
    return aoi_from_geojson(doc, source=str(path))
