"""Read and validate an area of interest: a GeoJSON Polygon or MultiPolygon in EPSG:4326."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import shapely
from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry

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


def _geometries(doc: object, source: str) -> list[dict]:
    if not isinstance(doc, dict) or "type" not in doc:
        raise AOIError(f"{source}: not a GeoJSON object (no 'type' member)")
    kind = doc["type"]
    if kind == "FeatureCollection":
        features = doc.get("features")
        if not isinstance(features, list) or not features:
            raise AOIError(f"{source}: FeatureCollection has no features")
        out: list[dict] = []
        for feature in features:
            out.extend(_geometries(feature, source))
        return out
    if kind == "Feature":
        geometry = doc.get("geometry")
        if geometry is None:
            raise AOIError(f"{source}: Feature has no geometry")
        return _geometries(geometry, source)
    if kind == "GeometryCollection":
        return [g for sub in doc.get("geometries", []) for g in _geometries(sub, source)]
    return [doc]


def aoi_from_geojson(doc: object, source: str = "<memory>") -> AOI:
    """Validate a parsed GeoJSON document (Feature, FeatureCollection or Geometry) as an AOI."""
    parts = []
    for geom in _geometries(doc, source):
        kind = geom.get("type")
        if kind not in _POLYGONAL:
            raise AOIError(f"{source}: geometry type {kind} is not a Polygon or MultiPolygon")
        try:
            parts.append(shape(geom))
        except (ValueError, TypeError, AttributeError, IndexError, shapely.errors.GEOSException) as exc:
            raise AOIError(f"{source}: invalid {kind} coordinates ({exc})") from exc
    if not parts:
        raise AOIError(f"{source}: no polygon in the GeoJSON")
    geometry = shapely.union_all(parts) if len(parts) > 1 else parts[0]
    if geometry.is_empty or geometry.area == 0:
        raise AOIError(f"{source}: the AOI polygon is empty")
    if not geometry.is_valid:
        reason = shapely.is_valid_reason(geometry)
        raise AOIError(f"{source}: the AOI polygon is not valid ({reason})")
    minx, miny, maxx, maxy = geometry.bounds
    if minx < -180 or maxx > 180 or miny < -90 or maxy > 90:
        raise AOIError(f"{source}: coordinates are not longitude/latitude (EPSG:4326); reproject the AOI")
    return AOI(geometry=geometry, source=source)


def read_aoi(path: str | Path) -> AOI:
    """Read an AOI file; every problem becomes an AOIError with one line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise AOIError(f"AOI file not found: {path}") from None
    except IsADirectoryError:
        raise AOIError(f"AOI path is a folder, not a GeoJSON file: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise AOIError(f"cannot read AOI file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise AOIError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    return aoi_from_geojson(doc, source=str(path))
