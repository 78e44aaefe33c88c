"""Provider adapters: turn a STAC item (Earth Search v1 and collection 1, Planetary Computer, Copernicus Data Space,
or any item following one of their layouts) into a :class:`Scene` with canonical band names, CRS and reflectance
scale/offset.

Items are parsed by pystac (:func:`parse_item`: ``pystac.Item.from_dict``, which also migrates old extension
versions, e.g. ``proj:epsg`` to ``proj:code``), and read through pystac's projection, raster, eo, grid and mgrs
extension classes; the fields pystac has no class for (``s2:*``, ``processing:version``, raster extension v2
``raster:scale``/``raster:offset``, ``earthsearch:*``) are read from the item's properties and the assets'
extra fields. Which baseline needs which offset, and which metadata to trust, is treemap's own rule (below).

What differs between providers, and how each is read:

- band asset keys: common names (``blue``, ``nir08``, ``scl``: Earth Search), band ids (``B02``, ``B8A``, ``SCL``:
  Planetary Computer), band ids with their native resolution (``B02_10m``, ``B05_20m``, ``SCL_20m``: Copernicus
  Data Space; the resampled copies such as ``B02_20m`` are ignored). A COG is preferred over a JPEG 2000 copy of the
  same band (Earth Search ``blue-jp2``); JPEG 2000 is used when it is all there is (Copernicus Data Space).
- CRS: ``proj:epsg`` or ``proj:code`` ("EPSG:32633"), on the item or on its assets (pystac's projection
  extension reads both).
- processing baseline: ``s2:processing_baseline``, else ``processing:version``, else the ``_Nxxyy_`` part of the
  product name (``s2:product_uri`` or the item id).
- reflectance scale/offset: ``raster:bands[0].scale/offset`` (Earth Search), ``raster:scale``/``raster:offset`` on
  the asset or in its ``bands`` (Copernicus Data Space), none at all (Planetary Computer).

Reflectance = DN * scale + offset. The offset follows the processing baseline (04.00 and later add +1000 DN, so the
offset is -0.1); metadata that contradicts a known baseline is logged and overruled, and so is an
``earthsearch:boa_offset_applied`` flag that disagrees with it. Without a baseline, the metadata offset is used
where there is one, and the acquisition date (baseline 04.00 started on 25 January 2022) where there is none.

Planetary Computer asset hrefs need a SAS token: such scenes are marked ``signing="planetary-computer"`` and their
hrefs are signed by :meth:`Scene.to_stac`, i.e. when a tile's cube is built, right before its reads (tokens expire
after about an hour, so signing at search time would fail long runs). ``Scene.bands`` stays unsigned.
"""

from __future__ import annotations

import logging
import re
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from types import MappingProxyType
from typing import Mapping
from urllib.parse import urlparse

import pystac
# The extension classes are built directly rather than through ``X.ext(obj)``: that one refuses items that do not
# declare the extension's schema version pystac knows, and providers declare other versions (CDSE: eo and raster
# v2.0.0) or none at all. The fields read here have the same names in every version.
from pystac.extensions.eo import ItemEOExtension
from pystac.extensions.grid import GridExtension
from pystac.extensions.mgrs import MgrsExtension
from pystac.extensions.projection import AssetProjectionExtension, ItemProjectionExtension
from pystac.extensions.raster import AssetRasterExtension
from pystac.utils import is_absolute_href, make_absolute_href

from treemap.errors import ItemError

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
    #: How asset hrefs must be signed before reading: None, or "planetary-computer".
    signing: str | None = None

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
            if self.signing:
                href = sign_href(href, self.signing)
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


def parse_item(item: Mapping | pystac.Item, href: str | None = None, owned: bool = False) -> pystac.Item:
    """A ``pystac.Item`` from an item dict; ``href`` is the file it was read from, if any. The dict is left
    unchanged unless ``owned`` (the caller's own fresh copy, which pystac may then use in place: 3x faster).
    Anything pystac cannot read as an item is an ItemError naming the item."""
    if isinstance(item, pystac.Item):
        return item
    if not isinstance(item, Mapping):
        raise ItemError(f"not a STAC item: a JSON {type(item).__name__}")
    try:
        with warnings.catch_warnings():  # pystac's notes on migrating old extension versions: not for the user
            warnings.simplefilter("ignore")
            return pystac.Item.from_dict(item if isinstance(item, dict) else dict(item), href=href, migrate=True,
                                         preserve_dict=not owned)
    except Exception as exc:  # noqa: BLE001 - pystac raises KeyError, TypeError, STACTypeError, ... for bad input
        first = (str(exc).strip().splitlines() or [""])[0][:160]
        raise ItemError(f"item {item.get('id', '?')} is not a valid STAC item "
                        f"({type(exc).__name__}{': ' + first if first else ''})") from None


def _as_utc(when: datetime) -> datetime:
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def _epsg(item: pystac.Item) -> int:
    """The EPSG code of the item, else of its first asset that states one (``proj:epsg`` or ``proj:code``)."""
    sources = [ItemProjectionExtension(item)] + [AssetProjectionExtension(a) for a in item.assets.values()]
    for proj in sources:
        try:
            code = proj.epsg  # pystac >= 1.12 reads proj:code ("EPSG:32633") here too
        except (TypeError, ValueError):
            code = None
        if code:
            return int(code)
        text = proj.properties.get("proj:code")  # older pystac, or "epsg:32633"
        if isinstance(text, str) and text.upper().startswith("EPSG:") and text[5:].strip().isdigit():
            return int(text[5:])
    raise ItemError("no proj:epsg or proj:code")


def _band_key(key: str) -> str | None:
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


def _is_jp2(asset: pystac.Asset) -> bool:
    media = str(asset.media_type or "")
    href = str(asset.href or "").split("?", 1)[0]
    return "jp2" in media or href.lower().endswith(".jp2")


def _mgrs(item: pystac.Item) -> str | None:
    props = item.properties
    if props.get("s2:mgrs_tile"):
        return str(props["s2:mgrs_tile"])
    code = GridExtension(item).code
    if isinstance(code, str) and code.startswith("MGRS-"):
        return code[5:]
    mgrs = MgrsExtension(item)
    if mgrs.utm_zone is not None:
        return f"{mgrs.utm_zone}{mgrs.latitude_band or ''}{mgrs.grid_square or ''}"
    m = re.search(r"_T?(\d{2}[C-X][A-Z]{2})_", item.id)
    return m.group(1) if m else None


def _baseline(props: Mapping, item_id: str) -> str | None:
    """The processing baseline as "NN.NN", from whichever field the provider uses."""
    for key in ("s2:processing_baseline", "processing:version"):
        value = props.get(key)
        if value is not None and re.fullmatch(r"\d{1,2}\.\d{1,2}", str(value).strip()):
            return str(value).strip()
    for name in (props.get("s2:product_uri"), item_id):
        m = re.search(r"_N(\d{2})(\d{2})_", str(name or ""))
        if m and m.group(1) != "99":  # N9999 marks products without a real baseline
            return f"{m.group(1)}.{m.group(2)}"
    return None


def _baseline_has_offset(baseline: str | None, when: datetime) -> bool:
    if baseline:
        try:
            return float(baseline) >= 4.0
        except ValueError:
            pass
    return when >= BASELINE_04_START


def _number(value) -> float | None:
    try:
        return None if value is None or isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        return None


def _metadata_scale_offset(asset: pystac.Asset) -> tuple[float | None, float | None]:
    """Scale and offset stated by an asset: raster extension v1 (``raster:bands``, through pystac), v2
    (``raster:scale`` on the asset), or STAC 1.1 ``bands`` carrying ``raster:scale``."""
    try:
        bands = AssetRasterExtension(asset).bands
    except (TypeError, AttributeError):  # raster:bands that is not a list of objects
        bands = None
    if bands:
        return _number(bands[0].scale), _number(bands[0].offset)
    extra = asset.extra_fields
    if "raster:scale" in extra or "raster:offset" in extra:
        return _number(extra.get("raster:scale")), _number(extra.get("raster:offset"))
    common = extra.get("bands")
    if isinstance(common, list) and common and isinstance(common[0], Mapping):
        return _number(common[0].get("raster:scale")), _number(common[0].get("raster:offset"))
    return None, None


PLANETARY_COMPUTER = "planetary-computer"


def _needs_pc_signing(item: pystac.Item, hrefs: Mapping[str, str]) -> bool:
    """Planetary Computer items: Azure blob hrefs without a SAS token, in an item that links to the PC API."""
    unsigned = [h for h in hrefs.values()
                if (urlparse(h).hostname or "").endswith(".blob.core.windows.net") and not urlparse(h).query]
    if not unsigned:
        return False
    return any("planetarycomputer.microsoft.com" in str(link.get_href(transform_href=False) or "")
               for link in item.links)


def sign_href(href: str, signing: str) -> str:
    """A readable href for ``signing`` ("planetary-computer": a SAS token from the ``planetary-computer`` package,
    cached by it until shortly before it expires)."""
    if signing != PLANETARY_COMPUTER:
        raise ValueError(f"unknown href signing {signing!r}")
    pc = require_planetary_computer()
    try:
        return pc.sign(href)
    except Exception as exc:  # noqa: BLE001 - token service errors (requests, pydantic) become one line
        from treemap.errors import CatalogError

        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise CatalogError(f"cannot sign Planetary Computer asset URL {href.split('?', 1)[0]}: {first}") from None


def require_planetary_computer():
    """The ``planetary_computer`` module, or a CatalogError saying how to install it."""
    try:
        import planetary_computer
    except ImportError:
        from treemap.errors import CatalogError

        raise CatalogError("Planetary Computer asset URLs must be signed: install the extra with "
                           "pip install 'treemap[planetary-computer]'") from None
    return planetary_computer


def _bbox2d(bbox) -> tuple[float, float, float, float]:
    values = [float(v) for v in bbox]
    return (values[0], values[1], values[3], values[4]) if len(values) == 6 else tuple(values[:4])  # type: ignore


def _href(asset: pystac.Asset, base_href: str | None) -> str:
    """The asset's href, a relative one made absolute against ``base_href`` (the file the item was read from),
    else against the item's self href."""
    href = str(asset.href)
    if is_absolute_href(href):
        return href
    if base_href:
        return make_absolute_href(href, base_href)
    return asset.get_absolute_href() or href


def normalise_item(item: Mapping | pystac.Item, base_href: str | None = None, signing: str | None = "auto") -> Scene:
    """Normalise one STAC item (a ``pystac.Item`` or an item dict). ``base_href`` (a path or URL) resolves relative
    asset hrefs (local catalogs). ``signing``: "auto" (detect Planetary Computer items), None (never sign), or
    "planetary-computer"."""
    item = parse_item(item)
    item_id = str(item.id)
    if item.datetime is None:
        raise ItemError(f"item {item_id} has no datetime")
    when = _as_utc(item.datetime)
    epsg = _epsg(item)
    chosen: dict[str, pystac.Asset] = {}
    for key, asset in item.assets.items():
        if not asset.href:
            continue
        name = _band_key(key)
        if name is None:
            continue
        if name not in chosen or (_is_jp2(chosen[name]) and not _is_jp2(asset)):
            chosen[name] = asset
    missing = [b for b in BANDS + (SCL,) if b not in chosen]
    if missing:
        raise ItemError(f"item {item_id} lacks bands {', '.join(missing)}")
    bands: dict[str, str] = {}
    grids: dict[str, tuple] = {}
    for name in BANDS + (SCL,):
        asset = chosen[name]
        bands[name] = _href(asset, base_href)
        proj = AssetProjectionExtension(asset)  # reads the item's fields too: only a grid stated on the asset counts
        if proj.shape and proj.transform and {"proj:shape", "proj:transform"} <= asset.extra_fields.keys():
            grids[name] = (tuple(proj.shape), tuple(proj.transform)[:6])

    baseline = _baseline(item.properties, item_id)
    scale, offset = _scale_offset(item_id, item.properties, chosen["B04"], baseline, when)

    if not item.bbox or len(item.bbox) < 4:
        raise ItemError(f"item {item_id} has no bbox")
    cloud = ItemEOExtension(item).cloud_cover
    if signing == "auto":
        signing = PLANETARY_COMPUTER if _needs_pc_signing(item, bands) else None
    return Scene(
        id=item_id,
        datetime=when,
        cloud_cover=None if cloud is None else float(cloud),
        mgrs_tile=_mgrs(item),
        epsg=epsg,
        bands=MappingProxyType(bands),
        scale=scale,
        offset=offset,
        bbox=_bbox2d(item.bbox),
        platform=item.common_metadata.platform,
        processing_baseline=baseline,
        collection=item.collection_id,
        band_grids=MappingProxyType(grids),
        signing=signing,
    )


def _scale_offset(item_id: str, props: Mapping, asset: pystac.Asset, baseline: str | None,
                  when: datetime) -> tuple[float, float]:
    """(scale, offset) of the reflectance bands; see the module docstring for the rule."""
    meta_scale, meta_offset = _metadata_scale_offset(asset)
    scale = meta_scale if meta_scale else _DEFAULT_SCALE
    if baseline is not None:
        offset = _BOA_OFFSET if _baseline_has_offset(baseline, when) else 0.0
        if meta_offset is not None and abs(meta_offset - offset) > 1e-9:
            log.warning("item %s: metadata offset %s disagrees with processing baseline %s; using %s",
                        item_id, meta_offset, baseline, offset)
    elif meta_offset is not None:
        offset = meta_offset
    else:
        offset = _BOA_OFFSET if when >= BASELINE_04_START else 0.0
    flag = props.get("earthsearch:boa_offset_applied")
    if isinstance(flag, bool) and flag != (offset != 0.0):
        log.warning("item %s: earthsearch:boa_offset_applied=%s disagrees with %s; ignored", item_id, flag,
                    f"processing baseline {baseline}" if baseline else f"offset {offset}")
    return scale, offset
