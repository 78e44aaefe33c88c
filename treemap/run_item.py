"""The STAC item of a run: one JSON file beside the products that says what they are, where, when and how.

:func:`run_item` builds a :class:`pystac.Item` from plain values (the products' paths, their
:class:`~treemap.outputs.ProductSpec`, the output grid, the period and the run's provenance), so it depends on nothing
else of the engine:

* ``geometry``/``bbox``: the grid's footprint in longitude/latitude (EPSG:4326), its edges densified before they are
  reprojected so the polygon follows the UTM grid; a footprint that crosses the antimeridian is split into a
  MultiPolygon and its ``bbox`` runs west to east across it (RFC 7946);
* ``datetime`` null with ``start_datetime``/``end_datetime`` (the whole first and last day) and ``created``;
* the projection extension (v2.0.0) on the item: ``proj:code``, ``proj:shape`` (rows, columns), ``proj:transform``,
  ``proj:bbox`` (in the grid's CRS);
* one asset per product (key: the product name), ``href`` relative to the item file (``./species_probability.tif``),
  COG media type, role ``data``, ``raster:bands`` (raster extension v1.1.0: one entry per band with its data type,
  nodata, scale/offset, resolution, unit where known, ``name``/``description``); a band with ``categories`` also
  carries ``classification:classes`` (classification extension v2.0.0: value, ``name`` as the extension's
  machine-readable token, ``title`` = the category, ``color_hint`` RRGGBB, and a ``nodata`` class), repeated on the
  asset for a single-band class map;
* sidecars found beside the products: ``<product>.qml`` QGIS styles, ``<product>.tif.aux.xml`` GDAL metadata,
  ``quicklook.png`` and ``treemap.log``;
* ``file:size`` and ``file:checksum`` (file extension v2.1.0; SHA2-256 multihash) on every asset;
* the run's provenance under ``treemap:`` in ``properties`` (see :func:`provenance_properties`).

:func:`write_run_item` writes it with :func:`treemap.durable.atomic_write_json`, without a ``self`` link and with
relative hrefs only, so the file stays right when its folder is renamed (the products are written into a staging
folder and renamed into place). Validating an item offline is :mod:`treemap.item_validation`'s.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from datetime import date, datetime, time, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping
from urllib.parse import urlsplit

import numpy as np
import pystac

from treemap import __version__
from treemap.durable import atomic_write_json
from treemap.errors import TreemapError

__all__ = ["Grid", "run_item", "write_run_item", "RunItemValidationError", "footprint", "provenance_properties", "ITEM_NAME",
           "PROJECTION_SCHEMA", "RASTER_SCHEMA", "CLASSIFICATION_SCHEMA", "FILE_SCHEMA"]

#: File name of the item beside the products.
ITEM_NAME = "item.json"

#: Extension schema versions the item is written for (the fields below follow these versions exactly).
PROJECTION_SCHEMA = "https://stac-extensions.github.io/projection/v2.0.0/schema.json"
RASTER_SCHEMA = "https://stac-extensions.github.io/raster/v1.1.0/schema.json"
CLASSIFICATION_SCHEMA = "https://stac-extensions.github.io/classification/v2.0.0/schema.json"
FILE_SCHEMA = "https://stac-extensions.github.io/file/v2.1.0/schema.json"

COG_MEDIA_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"
LOG_NAME = "treemap.log"
QUICKLOOK_NAME = "quicklook.png"
#: Other files a job may publish beside its products: name -> (asset key, title, media type, roles).
OTHER_SIDECARS = {
    "embedding_pca.safetensors": ("pca", "PCA projection of the embeddings (safetensors: mean, components)",
                                  "application/octet-stream", ["metadata"]),
}

#: Points per edge of the footprint before it is reprojected.
DENSIFY = 32

#: numpy dtype -> raster extension ``data_type``.
_DATA_TYPES = {"int8": "int8", "int16": "int16", "int32": "int32", "int64": "int64", "uint8": "uint8",
               "uint16": "uint16", "uint32": "uint32", "uint64": "uint64", "float16": "float16",
               "float32": "float32", "float64": "float64", "complex64": "cfloat32", "complex128": "cfloat64"}
_BAND_METADATA_SKIP = ("unit", "long_name")
_PROVENANCE_KEY = re.compile(r"[a-z][a-z0-9_]*")


class RunItemValidationError(TreemapError, ValueError):
    """A run item that fails its schemas or would not survive being moved; ``failures`` lists every problem."""

    def __init__(self, where: str, failures: list[str]):
        self.where = where
        self.failures = list(failures)
        shown = "; ".join(self.failures[:10]) + (f"; and {len(self.failures) - 10} more" if len(self.failures) > 10
                                                   else "")
        super().__init__(f"STAC item {where} is invalid ({len(self.failures)} problem"
                         f"{'s' if len(self.failures) != 1 else ''}): {shown}")


@dataclass(frozen=True)
class Grid:
    """The output grid: EPSG code, bounds (x0, y0, x1, y1) in its CRS, size in pixels and pixel size (metres)."""

    epsg: int
    bounds: tuple[float, float, float, float]
    width: int
    height: int
    resolution: float

    @classmethod
    def of(cls, plan: Any) -> "Grid":
        """A :class:`Grid` from anything with ``epsg``, ``bounds``, ``width``, ``height`` and ``resolution``
        (a :class:`treemap.grid.TilePlan`, a :class:`Grid`)."""
        grid = cls(int(plan.epsg), tuple(float(v) for v in plan.bounds), int(plan.width), int(plan.height),
                   float(plan.resolution))
        x0, y0, x1, y1 = grid.bounds
        if grid.width < 1 or grid.height < 1 or grid.resolution <= 0 or x1 <= x0 or y1 <= y0:
            raise ValueError(f"not a grid: {grid}")
        if (abs((x1 - x0) / grid.resolution - grid.width) > 1e-6
                or abs((y1 - y0) / grid.resolution - grid.height) > 1e-6):
            raise ValueError(f"grid size {grid.width} x {grid.height} does not match its bounds {grid.bounds} at "
                             f"{grid.resolution:g} m")
        return grid

    @property
    def transform(self) -> list[float]:
        """The first six coefficients of the affine pixel -> CRS transform (north-up)."""
        x0, _, _, y1 = self.bounds
        return [self.resolution, 0.0, x0, 0.0, -self.resolution, y1]


# -- geometry ----------------------------------------------------------------------------------------------------------
def footprint(grid: Grid | Any, densify: int = DENSIFY) -> tuple[dict, list[float]]:
    """The grid's footprint in EPSG:4326 as a GeoJSON geometry (counter-clockwise, edges densified to ``densify``
    points each before reprojection) and its bbox; split at the antimeridian when it crosses it."""
    from pyproj import CRS, Transformer
    from shapely.affinity import translate
    from shapely.geometry import MultiPolygon, Polygon, box, mapping
    from shapely.geometry.polygon import orient

    grid = Grid.of(grid)
    x0, y0, x1, y1 = grid.bounds
    n = max(1, int(densify))
    xs = np.concatenate([np.linspace(x0, x1, n, endpoint=False), np.full(n, x1),
                         np.linspace(x1, x0, n, endpoint=False), np.full(n, x0)])
    ys = np.concatenate([np.full(n, y0), np.linspace(y0, y1, n, endpoint=False),
                         np.full(n, y1), np.linspace(y1, y0, n, endpoint=False)])
    transformer = Transformer.from_crs(CRS.from_epsg(grid.epsg), CRS.from_epsg(4326), always_xy=True)
    lon, lat = transformer.transform(xs, ys, errcheck=True)
    lon, lat = np.asarray(lon, dtype=float), np.asarray(lat, dtype=float)
    if not (np.isfinite(lon).all() and np.isfinite(lat).all()):
        raise ValueError(f"the grid's footprint cannot be expressed in longitude/latitude: {grid}")
    if lon.max() - lon.min() <= 180.0:
        polygon = orient(Polygon(np.column_stack([lon, lat])), 1.0)
        return mapping(polygon), [float(v) for v in polygon.bounds]
    # Crosses the antimeridian: unwrap to 0..360, cut at 180, shift the eastern part back.
    unwrapped = orient(Polygon(np.column_stack([np.where(lon < 0, lon + 360.0, lon), lat])), 1.0)
    west = unwrapped.intersection(box(-180.0, -90.0, 180.0, 90.0))
    east = translate(unwrapped.intersection(box(180.0, -90.0, 540.0, 90.0)), xoff=-360.0)
    parts = [orient(p, 1.0) for g in (west, east) for p in getattr(g, "geoms", [g])
             if isinstance(p, Polygon) and not p.is_empty]
    geometry = MultiPolygon(parts)
    bbox = [float(west.bounds[0]), float(min(west.bounds[1], east.bounds[1])), float(east.bounds[2]),
            float(max(west.bounds[3], east.bounds[3]))]
    return mapping(geometry), bbox


def _as_lists(geometry: Any) -> Any:
    """shapely's ``mapping`` uses tuples; GeoJSON (and JSON Schema's ``array``) wants lists."""
    if isinstance(geometry, (list, tuple)):
        return [_as_lists(v) for v in geometry]
    if isinstance(geometry, dict):
        return {k: _as_lists(v) for k, v in geometry.items()}
    return float(geometry) if isinstance(geometry, (np.floating, float)) else geometry


# -- provenance --------------------------------------------------------------------------------------------------------
def _json_value(value: Any) -> Any:
    """A JSON value for provenance: dates as ISO strings, paths and unknown objects as strings, non-finite numbers as
    strings (JSON has none)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else str(float(value))
    if isinstance(value, datetime):
        return pystac.utils.datetime_to_str(value if value.tzinfo else value.replace(tzinfo=timezone.utc))
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, (set, frozenset)):
        return sorted(_json_value(v) for v in value)
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_json_value(v) for v in value]
    return str(value)


def _unreadable(entries: Iterable[Any]) -> list[dict]:
    """Unreadable assets as ``{scene, band, href, reason}``, hrefs without their query string (it may hold a
    token)."""
    out = []
    for entry in entries or ():
        if isinstance(entry, Mapping):
            scene, band, href, reason = (entry.get(k, "") for k in ("scene", "band", "href", "reason"))
        else:
            scene, band, href, reason = tuple(entry)
        out.append({"scene": str(scene), "band": str(band), "href": str(href).split("?", 1)[0],
                    "reason": str(reason)})
    return out


def provenance_properties(provenance: Mapping[str, Any] | None) -> dict[str, Any]:
    """Item properties ``treemap:<key>`` for every key of ``provenance``, as JSON values.

    The keys treemap writes: ``version`` (default: this treemap's), ``run_id``, ``command``, ``job``,
    ``parameters``, ``scenes`` (input scene ids), ``model_checksum``, ``model_card``, ``species_checksum``,
    ``timings`` (seconds per stage), ``unreadable_assets`` (``(scene, band, href, reason)`` tuples or dicts; always
    present, empty when every asset was read). Other lowercase keys are kept as they are."""
    props: dict[str, Any] = {"treemap:version": __version__, "treemap:unreadable_assets": []}
    for key, value in (provenance or {}).items():
        if not isinstance(key, str) or not _PROVENANCE_KEY.fullmatch(key):
            raise ValueError(f"provenance key {key!r} is not a lowercase name")
        if key in ("unreadable", "unreadable_assets"):
            props["treemap:unreadable_assets"] = _unreadable(value)
        else:
            props[f"treemap:{key}"] = _json_value(value)
    return props


# -- assets ------------------------------------------------------------------------------------------------------------
def _multihash_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return "1220" + digest.hexdigest()


def _file_fields(path: Path, checksums: bool) -> dict[str, Any]:
    fields: dict[str, Any] = {"file:size": path.stat().st_size}
    if checksums:
        fields["file:checksum"] = _multihash_sha256(path)
    return fields


def _nodata(value: int | float | None, dtype: str) -> int | float | str | None:
    if value is None:
        return None
    value = float(value)
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return int(value) if np.issubdtype(np.dtype(dtype), np.integer) else value


def _class_name(category: str, value: int, taken: set[str]) -> str:
    """The classification extension's ``name``: letters, digits, ``-`` and ``_`` only, unique within the band."""
    name = re.sub(r"[^0-9A-Za-z_-]+", "_", str(category)).strip("_") or f"class_{value}"
    if name in taken:
        name = f"{name}_{value}"
    taken.add(name)
    return name


def _classes(band: dict, nodata: int | float | str | None) -> list[dict]:
    colours = band.get("colours") or ()
    classes, taken = [], set()
    for value, category in enumerate(band["categories"]):
        entry = {"value": value, "name": _class_name(category, value, taken), "title": str(category)}
        if value < len(colours):
            r, g, b = (int(c) for c in tuple(colours[value])[:3])
            entry["color_hint"] = f"{r:02X}{g:02X}{b:02X}"
        classes.append(entry)
    if isinstance(nodata, int) and not 0 <= nodata < len(classes):
        classes.append({"value": nodata, "name": _class_name("nodata", nodata, taken), "title": "no data",
                        "nodata": True})
    return classes


def _raster_band(band: dict, dtype: str, nodata: Any, resolution: float) -> dict:
    entry: dict[str, Any] = {"name": str(band["description"])}
    metadata = dict(band.get("metadata") or {})
    entry["description"] = str(metadata.get("long_name") or band["description"])
    entry["data_type"] = _DATA_TYPES.get(np.dtype(dtype).name, "other")
    if nodata is not None:
        entry["nodata"] = nodata
    entry["sampling"] = "area"
    entry["spatial_resolution"] = resolution
    if "scale" in band:
        entry["scale"] = float(band["scale"])
        entry["offset"] = float(band.get("offset", 0.0))
    unit = band.get("unit", metadata.get("unit"))
    if unit:
        entry["unit"] = str(unit)
    extra = {k: _json_value(v) for k, v in metadata.items()
             if k not in _BAND_METADATA_SKIP and not k.startswith("CLASS_")}
    if extra:
        entry["treemap:metadata"] = extra
    if band.get("categories"):
        entry["classification:classes"] = _classes(band, nodata)
    return entry


def _title(name: str) -> str:
    return name.replace("_", " ").strip().capitalize()


def _folder_of(products: Mapping[str, Path]) -> Path:
    folders = {Path(p).resolve().parent for p in products.values()}
    if len(folders) != 1:
        raise ValueError(f"the products must lie in one folder (the item's), not in {sorted(map(str, folders))}")
    return folders.pop()


def _start_end(start: date | datetime, end: date | datetime) -> tuple[datetime, datetime]:
    def at(d: date | datetime, t: time) -> datetime:
        if isinstance(d, datetime):
            return d if d.tzinfo else d.replace(tzinfo=timezone.utc)
        return datetime.combine(d, t, tzinfo=timezone.utc)

    first, last = at(start, time(0, 0, 0)), at(end, time(23, 59, 59))
    if last < first:
        raise ValueError(f"the period ends ({end}) before it starts ({start})")
    return first, last


# -- the item ----------------------------------------------------------------------------------------------------------
def run_item(item_id: str, products: Mapping[str, Path | str], specs: Iterable[Any], plan: Any,
             start: date | datetime, end: date | datetime, provenance: Mapping[str, Any] | None = None,
             created: datetime | None = None, checksums: bool = True,
             extra_assets: Mapping[str, pystac.Asset] | None = None) -> pystac.Item:
    """The STAC item of a run (see the module doc).

    ``products`` maps each product name to its file (all in one folder: the folder the item is written to, which may
    be a staging folder); ``specs`` are their :class:`~treemap.outputs.ProductSpec` (one per product); ``plan`` has
    ``epsg``, ``bounds``, ``width``, ``height`` and ``resolution`` (a :class:`~treemap.grid.TilePlan` or a
    :class:`Grid`); ``start``/``end`` the period (whole days); ``provenance`` the ``treemap:`` properties
    (:func:`provenance_properties`); ``created`` defaults to now; ``checksums=False`` skips the SHA-256 of every
    file (``file:size`` is always written); ``extra_assets`` adds assets of other files beside the products
    (thumbnails ...): their hrefs must be relative to the folder, and they get the ``file:`` fields too."""
    if not item_id or not isinstance(item_id, str):
        raise ValueError("the item needs an id")
    grid = Grid.of(plan)
    products = {name: Path(path) for name, path in products.items()}
    specs = list(specs)
    by_name = {spec.name: spec for spec in specs}
    if len(by_name) != len(specs):
        raise ValueError("two product specs have the same name")
    if set(by_name) != set(products) or not products:
        raise ValueError(f"products {sorted(products)} and specs {sorted(by_name)} do not match")
    folder = _folder_of(products)
    for name, path in products.items():
        if not path.is_file():
            raise FileNotFoundError(f"product {name} is not a file: {path}")

    geometry, bbox = footprint(grid)
    first, last = _start_end(start, end)
    created = created or datetime.now(timezone.utc)
    x0, y0, x1, y1 = grid.bounds
    properties = {
        "created": pystac.utils.datetime_to_str(created if created.tzinfo else created.replace(tzinfo=timezone.utc)),
        "proj:code": f"EPSG:{grid.epsg}",
        "proj:shape": [grid.height, grid.width],
        "proj:transform": grid.transform,
        "proj:bbox": [x0, y0, x1, y1],
        **provenance_properties(provenance),
    }
    extensions = [PROJECTION_SCHEMA, RASTER_SCHEMA, FILE_SCHEMA]
    if any(band.get("categories") for spec in specs for band in spec.bands):
        extensions.insert(2, CLASSIFICATION_SCHEMA)
    item = pystac.Item(id=item_id, geometry=_as_lists(geometry), bbox=bbox, datetime=None, properties=properties,
                       start_datetime=first, end_datetime=last, stac_extensions=extensions)

    for spec in specs:  # the specs' order: the products as the run lists them
        path = products[spec.name]
        nodata = _nodata(spec.nodata, spec.dtype)
        bands = [_raster_band(dict(b), spec.dtype, nodata, grid.resolution) for b in spec.bands]
        fields: dict[str, Any] = {"raster:bands": bands, **_file_fields(path, checksums)}
        if len(bands) == 1 and "classification:classes" in bands[0]:
            fields["classification:classes"] = bands[0]["classification:classes"]
        item.add_asset(spec.name, pystac.Asset(href=_relative_href(path, folder), title=_title(spec.name),
                                               media_type=COG_MEDIA_TYPE, roles=["data"], extra_fields=fields))

    for key, asset in [*_sidecars(folder, specs, checksums), *(extra_assets or {}).items()]:
        if key in item.assets:
            raise ValueError(f"asset key {key!r} is used twice")
        if not _is_relative(asset.href):
            raise ValueError(f"asset {key}: href {asset.href} is not relative to the item's folder")
        asset = asset.clone()  # the caller's asset is left as it was
        path = folder / asset.href
        if path.is_file() and "file:size" not in asset.extra_fields:
            asset.extra_fields.update(_file_fields(path, checksums))
        item.add_asset(key, asset)
    return item


def _relative_href(path: Path, folder: Path) -> str:
    return "./" + Path(path).resolve().relative_to(folder).as_posix()


def _sidecars(folder: Path, specs: list[Any], checksums: bool) -> Iterator[tuple[str, pystac.Asset]]:
    """Assets for the sidecar files present in ``folder``: styles and GDAL metadata per product, the quicklook and
    the run log."""
    def asset(path: Path, title: str, media_type: str, roles: list[str]) -> pystac.Asset:
        return pystac.Asset(href=_relative_href(path, folder), title=title, media_type=media_type, roles=roles,
                            extra_fields=_file_fields(path, checksums))

    for spec in specs:
        style = folder / f"{spec.name}.qml"
        if style.is_file():
            yield f"{spec.name}_style", asset(style, f"QGIS style of {_title(spec.name).lower()}",
                                              "application/xml", ["metadata", "style"])
        aux = folder / f"{spec.filename}.aux.xml"
        if aux.is_file():
            yield f"{spec.name}_aux", asset(aux, f"GDAL metadata of {_title(spec.name).lower()}",
                                            "application/xml", ["metadata"])
    quicklook = folder / QUICKLOOK_NAME
    if quicklook.is_file():
        yield "quicklook", asset(quicklook, "Quicklook", "image/png", ["overview"])
    for name, (key, title, media_type, roles) in OTHER_SIDECARS.items():
        if (folder / name).is_file():
            yield key, asset(folder / name, title, media_type, roles)
    log = folder / LOG_NAME
    if log.is_file():
        yield "log", asset(log, "Run log", "text/plain", ["metadata"])


def _is_relative(href: str) -> bool:
    parts = urlsplit(href)
    return not parts.scheme and not parts.netloc and not href.startswith(("/", "\\")) and not re.match(
        r"^[A-Za-z]:[\\/]", href)


def item_dict(item: pystac.Item | Mapping[str, Any]) -> dict[str, Any]:
    """The item's JSON as written: no ``self`` link, hrefs untouched (relative)."""
    if isinstance(item, pystac.Item):
        return item.to_dict(include_self_link=False, transform_hrefs=False)
    return json.loads(json.dumps(item))


def write_run_item(item: pystac.Item | Mapping[str, Any], path: Path | str) -> Path:
    """Write the item to ``path`` atomically (:func:`treemap.durable.atomic_write_json`).

    Every href must be relative (the file is written into a staging folder and renamed with it): a ``self`` link
    is left out, and ``root``/``parent``/``collection`` links and assets with absolute hrefs are refused."""
    payload = item_dict(item)
    payload["links"] = [link for link in payload.get("links", []) if link.get("rel") != "self"]
    absolute = [f"link {link.get('rel')}: {link.get('href')}" for link in payload["links"]
                if not _is_relative(str(link.get("href", "")))]
    absolute += [f"asset {key}: {asset.get('href')}" for key, asset in payload.get("assets", {}).items()
                 if not _is_relative(str(asset.get("href", "")))]
    if absolute:
        raise ValueError("a run item's hrefs must be relative to it: " + "; ".join(absolute))
    return atomic_write_json(Path(path), payload)
