"""Provider adapters: turn a STAC item dict (Earth Search, Planetary Computer, Copernicus Data Space, or any item
following one of their layouts) into a :class:`Scene` with canonical band names, CRS and reflectance scale/offset.

Reflectance = DN * scale + offset. The offset follows the processing baseline (04.00 and later add +1000 DN, so the
offset is -0.1); metadata that contradicts the baseline is logged and overruled.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from types import MappingProxyType
from typing import Mapping
from urllib.parse import urljoin

log = logging.getLogger("treemap.stac")

#: The ten reflectance bands in Sentinel-2 order, then the scene classification.
BANDS: tuple[str, ...] = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")
SCL = "SCL"
RESOLUTION = {"B02": 10, "B03": 10, "B04": 10, "B08": 10, "B05": 20, "B06": 20, "B07": 20, "B8A": 20,
              "B11": 20, "B12": 20, "SCL": 20}
_COMMON = {"blue": "B02", "green": "B03", "red": "B04", "rededge1": "B05", "rededge2": "B06", "rededge3": "B07",
           "nir": "B08", "nir08": "B8A", "swir16": "B11", "swir22": "B12", "scl": "SCL"}
BASELINE_04_START = datetime(2022, 1, 25, tzinfo=timezone.utc)
_DEFAULT_SCALE = 1e-4
_BOA_OFFSET = -0.1


@dataclass(frozen=True)
class Scene:
    """One Sentinel-2 L2A acquisition on one MGRS tile, normalised across providers."""

    id: str
    datetime: datetime
    cloud_cover: float | None
    mgrs_tile: str | None
    epsg: int
    bands: Mapping[str, str]
    scale: float
    offset: float
    bbox: tuple[float, float, float, float]
    platform: str | None = None
    processing_baseline: str | None = None
    collection: str | None = None
    band_grids: Mapping[str, tuple] = field(default_factory=dict)

    def to_record(self) -> dict:
        """The JSON record `treemap search --json` prints."""
        return {
            "id": self.id,
            "datetime": self.datetime.isoformat().replace("+00:00", "Z"),
            "cloud_cover": self.cloud_cover,
            "mgrs_tile": self.mgrs_tile,
            "epsg": self.epsg,
            "bands": dict(self.bands),
            "scale": self.scale,
            "offset": self.offset,
            "processing_baseline": self.processing_baseline,
            "platform": self.platform,
            "collection": self.collection,
        }

    def to_stac(self) -> dict:
        """A canonical STAC item (asset keys = band names, ``proj:epsg``) for stackstac."""
        assets = {}
        for name, href in self.bands.items():
            asset = {"href": href, "type": "image/tiff; application=geotiff", "roles": ["data"]}
            grid = self.band_grids.get(name)
            if grid:
                asset["proj:shape"], asset["proj:transform"] = list(grid[0]), list(grid[1])
            assets[name] = asset
        west, south, east, north = self.bbox
        return {
            "type": "Feature",
            "stac_version": "1.0.0",
            "stac_extensions": ["https://stac-extensions.github.io/projection/v1.1.0/schema.json"],
            "id": self.id,
            "bbox": list(self.bbox),
            "geometry": {"type": "Polygon", "coordinates": [[[west, south], [east, south], [east, north],
                                                               [west, north], [west, south]]]},
            "properties": {"datetime": self.datetime.isoformat(), "proj:epsg": self.epsg},
            "assets": assets,
            "links": [],
        }


class ItemError(ValueError):
    """An item that is not a usable Sentinel-2 L2A scene (missing bands, no CRS, ...)."""


def _parse_datetime(value: str) -> datetime:
    dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def _epsg(props: Mapping, assets: Mapping) -> int:
    for source in [props] + [a for a in assets.values() if isinstance(a, Mapping)]:
        if source.get("proj:epsg"):
            return int(source["proj:epsg"])
        code = source.get("proj:code")
        if isinstance(code, str) and code.upper().startswith("EPSG:"):
            return int(code.split(":", 1)[1])
    raise ItemError("no proj:epsg or proj:code")


def _band_key(key: str, asset: Mapping) -> str | None:
    """The canonical band name of an asset key, or None for assets treemap does not read."""
    lowered = key.lower()
    if lowered in _COMMON:
        return _COMMON[lowered]
    m = re.fullmatch(r"(B\d\d|B8A|SCL)(?:_(\d+)m)?", key, flags=re.IGNORECASE)
    if m:
        name = m.group(1).upper()
        res = m.group(2)
        if name in RESOLUTION and (res is None or int(res) == RESOLUTION[name]):
            return name
    return None


def _is_cog(asset: Mapping) -> bool:
    media = str(asset.get("type", ""))
    href = str(asset.get("href", ""))
    return "jp2" not in media and not href.lower().endswith(".jp2")


def _mgrs(props: Mapping, item_id: str) -> str | None:
    if props.get("s2:mgrs_tile"):
        return str(props["s2:mgrs_tile"])
    if props.get("grid:code", "").startswith("MGRS-"):
        return props["grid:code"][5:]
    if "mgrs:utm_zone" in props:
        return f"{props['mgrs:utm_zone']}{props.get('mgrs:latitude_band', '')}{props.get('mgrs:grid_square', '')}"
    m = re.search(r"_T?(\d{2}[C-X][A-Z]{2})_", item_id)
    return m.group(1) if m else None


def _baseline_has_offset(baseline: str | None, when: datetime) -> bool:
    if baseline:
        try:
            return float(baseline) >= 4.0
        except ValueError:
            pass
    return when >= BASELINE_04_START


def _metadata_scale_offset(asset: Mapping) -> tuple[float | None, float | None]:
    bands = asset.get("raster:bands")
    if isinstance(bands, list) and bands and isinstance(bands[0], Mapping):
        return bands[0].get("scale"), bands[0].get("offset")
    return asset.get("raster:scale"), asset.get("raster:offset")


def _bbox2d(bbox) -> tuple[float, float, float, float]:
    values = [float(v) for v in bbox]
    return (values[0], values[1], values[3], values[4]) if len(values) == 6 else tuple(values[:4])  # type: ignore


def normalise_item(item: Mapping, base_href: str | None = None) -> Scene:
    """Normalise one STAC item dict. ``base_href`` resolves relative asset hrefs (local catalogs)."""
    item_id = str(item.get("id", "?"))
    props = item.get("properties") or {}
    assets = item.get("assets") or {}
    if not props.get("datetime"):
        raise ItemError(f"item {item_id} has no datetime")
    when = _parse_datetime(props["datetime"])
    epsg = _epsg(props, assets)
    bands: dict[str, str] = {}
    grids: dict[str, tuple] = {}
    reflectance_asset: Mapping | None = None
    for key, asset in assets.items():
        if not isinstance(asset, Mapping) or not _is_cog(asset):
            continue
        name = _band_key(key, asset)
        if name is None or name in bands:
            continue
        href = str(asset["href"])
        if base_href and not re.match(r"^[a-z][a-z0-9+.-]*://", href) and not href.startswith("/"):
            href = urljoin(base_href, href)
            if href.startswith("file://"):
                href = href[len("file://"):]
        bands[name] = href
        if asset.get("proj:shape") and asset.get("proj:transform"):
            grids[name] = (tuple(asset["proj:shape"]), tuple(asset["proj:transform"])[:6])
        if name == "B04":
            reflectance_asset = asset
    missing = [b for b in BANDS + (SCL,) if b not in bands]
    if missing:
        raise ItemError(f"item {item_id} lacks bands {', '.join(missing)}")

    baseline = props.get("s2:processing_baseline")
    expect_offset = _baseline_has_offset(baseline, when)
    offset = _BOA_OFFSET if expect_offset else 0.0
    meta_scale, meta_offset = _metadata_scale_offset(reflectance_asset or {})
    scale = float(meta_scale) if meta_scale else _DEFAULT_SCALE
    if meta_offset is not None and abs(float(meta_offset) - offset) > 1e-9:
        log.warning("item %s: metadata offset %s disagrees with processing baseline %s; using %s",
                    item_id, meta_offset, baseline or "(by date)", offset)
    flag = props.get("earthsearch:boa_offset_applied")
    if flag is not None and bool(flag) != expect_offset:
        log.warning("item %s: earthsearch:boa_offset_applied=%s disagrees with baseline %s; ignored",
                    item_id, flag, baseline)

    bbox = item.get("bbox")
    if not bbox or len(bbox) < 4:
        raise ItemError(f"item {item_id} has no bbox")
    cloud = props.get("eo:cloud_cover")
    return Scene(
        id=item_id,
        datetime=when,
        cloud_cover=None if cloud is None else float(cloud),
        mgrs_tile=_mgrs(props, item_id),
        epsg=epsg,
        bands=MappingProxyType(bands),
        scale=scale,
        offset=offset,
        bbox=_bbox2d(bbox),
        platform=props.get("platform"),
        processing_baseline=baseline,
        collection=item.get("collection"),
        band_grids=MappingProxyType(grids),
    )
