"""Occurrence points -> GlobalGeoTree training shards, from any Sentinel-2 L2A catalog treemap can search.

Input: a CSV (or GBIF tab-separated download) with longitude, latitude, year and the taxonomy of each point.
Column names of GlobalGeoTree (``level0``, ``level1_family``, ``level2_genus``, ``level3_species``) and of GBIF
(``decimalLongitude``, ``decimalLatitude``, ``family``, ``genus``, ``species``) are both accepted. GBIF has no leaf
type (``level0``): give a taxonomy list (a species-list CSV with ``level0`` per species) to fill it in.

Per point: 12 monthly median composites of the 10 bands in GeoTreeCLIP order on the 5 x 5 patch of the 10 m UTM grid
centred on the pixel holding the point, from the scenes of the point's year; the 27 auxiliary variables (longitude
and latitude from the point, the others sampled from rasters named in an extraction recipe, null where missing).

Compositing (:class:`Compositing`):

* ``treemap`` (the default): every scene, pixel-level SCL cloud/shadow masking, then the median -- the composites
  ``treemap predict`` computes, so a model trained on these shards sees at training time what it sees when mapping.
* ``paper``: the GlobalGeoTree recipe -- scenes with at most 30 % cloud, no pixel masking, median.

In both, a month counts as present when its centre pixel has a value; the other pixels' gaps take the patch mean
(the rule of ``treemap.infer``), and absent months are all-NaN, so shards never hold partly-NaN months.

Reading: points are grouped into windows of at most ``window_px`` pixels of their UTM zone's 10 m grid (per year);
each window is one small tile whose lazy cube (``treemap.cube.TileCube``) reads each COG window once for all its
points. Windows are ordered spatially, and shards are consecutive runs of ``shard_size`` points in that order.

Restarts: the output folder holds ``extract.json`` (a fingerprint of the points and options); a shard is finished
when its sidecar ``shard-NNNNNN.json`` exists (written after the tar), so re-running skips finished shards and
refuses a folder that belongs to another extraction.

Bad input: a missing file or missing columns raise :class:`PointsError` (one line) before anything is written;
unparseable rows, points no scene of their year covers, points without any clear observation are skipped and listed
with a reason in ``report.json``; an unreadable auxiliary raster leaves its variable null and is named in the report.
Read errors of the imagery itself stop the run (finished shards stay): they are usually transient.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Annotated, Callable

import numpy as np
import torch

from treemap.documents import FieldError, Ge, Interval, read_recipe, resolve_path
from treemap.errors import ExtractError
from treemap.models.config import AUX_VARIABLES
from treemap.points import Point, PointsError, Skipped  # noqa: F401 (PointsError: re-exported for callers)
from treemap.points import read_points as _read_points
from treemap.shards import Sample, write_shard

log = logging.getLogger("treemap.extract")

RESOLUTION = 10.0
PATCH = 5
HALO = PATCH // 2
MANIFEST = "extract.json"
REPORT = "report.json"
FORMAT_VERSION = 1


# -- options ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Compositing:
    """How monthly composites are made. ``scl_mask``: drop cloud/shadow pixels by the scene classification;
    ``max_cloud``: leave out scenes whose cloud cover (metadata, percent) is above it."""

    scl_mask: bool = True
    max_cloud: Annotated[float, Interval(ge=0, le=100)] = 100.0

    @classmethod
    def preset(cls, name: str) -> "Compositing":
        if name == "treemap":
            return cls(scl_mask=True, max_cloud=100.0)
        if name == "paper":
            return cls(scl_mask=False, max_cloud=30.0)
        raise ExtractError(f"unknown compositing {name!r}: use 'treemap' or 'paper'")


@dataclass(frozen=True)
class AuxSource:
    """One auxiliary variable read from band ``band`` of a raster, times ``scale``."""

    path: str
    band: Annotated[int, Ge(1)] = 1
    scale: float = 1.0


@dataclass(frozen=True)
class ExtractOptions:
    compositing: Compositing = Compositing()
    shard_size: Annotated[int, Ge(1)] = 1000
    window_px: Annotated[int, Ge(1)] = 512
    auxiliary: dict[str, AuxSource] = field(default_factory=dict)
    taxonomy: str | None = None  # species-list CSV giving level0 (and family/genus) per species
    default_year: Annotated[int, Interval(ge=2015, le=2100)] | None = None  # for rows without a year

    def __post_init__(self):
        if self.shard_size < 1 or self.window_px < 1:
            raise ExtractError("shard_size and window_px must be positive")
        bad = sorted(set(self.auxiliary) - set(AUX_VARIABLES[2:]))
        if bad:
            raise ExtractError(f"unknown auxiliary variables {bad} (longitude/latitude come from the points; "
                               f"known: {', '.join(AUX_VARIABLES[2:])})")

    def fingerprint(self) -> dict:
        return {
            "compositing": dataclasses.asdict(self.compositing),
            "shard_size": self.shard_size,
            "window_px": self.window_px,
            "auxiliary": {k: dataclasses.asdict(v) for k, v in sorted(self.auxiliary.items())},
            "default_year": self.default_year,
        }


def load_recipe(path: str | Path) -> ExtractOptions:
    """Extraction options from a YAML recipe (the mapping itself, or its ``extract`` section)::

        compositing: treemap          # or paper, or {scl_mask: false, max_cloud: 30}
        shard_size: 1000
        window_px: 512
        taxonomy: species.csv         # level0 per species, for GBIF input
        default_year: 2022
        auxiliary:                    # variable -> raster (paths relative to the recipe)
          elevation: srtm.tif
          bio01: {path: wc_bio.tif, band: 1, scale: 1.0}

    A missing or invalid recipe raises :class:`~treemap.errors.RecipeError` naming the field.
    """
    path = Path(path)
    options = read_recipe(path, ExtractOptions, prepare=_recipe_shorthands)
    base = path.parent
    return dataclasses.replace(
        options, taxonomy=resolve_path(options.taxonomy, base) if options.taxonomy else None,
        auxiliary={k: dataclasses.replace(v, path=resolve_path(v.path, base)) for k, v in options.auxiliary.items()})


def _recipe_shorthands(data: dict) -> dict:
    """An ``extract`` section, a compositing preset name and a bare raster path as their mappings."""
    data = data.get("extract", data)
    if not isinstance(data, dict):
        raise FieldError("extract", "must be a mapping of extraction options")
    data = dict(data)
    comp = data.get("compositing")
    if comp is not None and not isinstance(comp, dict):
        if comp not in ("treemap", "paper"):
            raise FieldError("compositing", f"must be 'treemap', 'paper' or a mapping {{scl_mask, max_cloud}} "
                                            f"(got {comp!r})")
        data["compositing"] = dataclasses.asdict(Compositing.preset(comp))
    if isinstance(data.get("auxiliary"), dict):
        data["auxiliary"] = {k: {"path": v} if isinstance(v, str) else v for k, v in data["auxiliary"].items()}
    return data


def resolve_options(recipe: str | Path | None = None, *, compositing: str | None = None,
                    max_cloud: float | None = None, scl_mask: bool | None = None, shard_size: int | None = None,
                    window_px: int | None = None, taxonomy: str | Path | None = None,
                    default_year: int | None = None) -> ExtractOptions:
    """Options for ``treemap extract``: the recipe (if any), then each command-line value that is given.

    ``compositing`` picks a preset (``treemap`` or ``paper``); ``max_cloud`` and ``scl_mask`` then adjust it.
    """
    options = load_recipe(recipe) if recipe is not None else ExtractOptions()
    comp = Compositing.preset(compositing) if compositing is not None else options.compositing
    if max_cloud is not None:
        if not 0 <= max_cloud <= 100:
            raise ExtractError(f"--max-cloud must be within 0..100, got {max_cloud:g}")
        comp = dataclasses.replace(comp, max_cloud=float(max_cloud))
    if scl_mask is not None:
        comp = dataclasses.replace(comp, scl_mask=bool(scl_mask))
    changes = {"compositing": comp}
    for name, value in (("shard_size", shard_size), ("window_px", window_px), ("default_year", default_year)):
        if value is not None:
            changes[name] = int(value)
    if taxonomy is not None:
        changes["taxonomy"] = str(taxonomy)
    return dataclasses.replace(options, **changes)


def read_points(path: str | Path, options: ExtractOptions = ExtractOptions()) -> tuple[list[Point], list[Skipped]]:
    """:func:`treemap.points.read_points` with the extraction's taxonomy list and default year."""
    return _read_points(path, taxonomy=options.taxonomy, default_year=options.default_year)


# -- planning -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Located:
    point: Point
    epsg: int
    col: int  # pixel column on the zone's 10 m grid (x // 10)
    row: int  # pixel row counted northward (y // 10)


@dataclass
class Window:
    year: int
    epsg: int
    cell: tuple[int, int]
    members: list[int]  # indices into the plan's point order


def locate(points: list[Point]) -> list[Located]:
    from pyproj import Transformer

    from treemap.grid import utm_epsg

    by_zone: dict[int, list[int]] = defaultdict(list)
    for i, p in enumerate(points):
        by_zone[utm_epsg(p.lon, p.lat)].append(i)
    out: list[Located | None] = [None] * len(points)
    for epsg, idx in by_zone.items():
        tr = Transformer.from_crs(4326, epsg, always_xy=True)
        xs, ys = tr.transform(np.array([points[i].lon for i in idx]), np.array([points[i].lat for i in idx]))
        for i, x, y in zip(idx, np.atleast_1d(xs), np.atleast_1d(ys)):
            out[i] = Located(points[i], epsg, int(math.floor(x / RESOLUTION)), int(math.floor(y / RESOLUTION)))
    return out  # type: ignore[return-value]


def plan(points: list[Point], window_px: int) -> tuple[list[Located], list[Window]]:
    """Points in shard order (grouped by window, windows in spatial order) and the windows."""
    located = locate(points)

    def cell(loc: Located) -> tuple[int, int]:
        return (-(loc.row // window_px), loc.col // window_px)  # north to south, then west to east

    located.sort(key=lambda loc: (loc.point.year, loc.epsg, cell(loc), -loc.row, loc.col, loc.point.row))
    windows: list[Window] = []
    for i, loc in enumerate(located):
        key = (loc.point.year, loc.epsg, cell(loc))
        if not windows or (windows[-1].year, windows[-1].epsg, windows[-1].cell) != key:
            windows.append(Window(loc.point.year, loc.epsg, cell(loc), []))
        windows[-1].members.append(i)
    return located, windows


# -- auxiliary rasters --------------------------------------------------------------------------------------------
class AuxSampler:
    """Samples the auxiliary rasters of a recipe at points; a raster that cannot be opened or read leaves its
    variable null and is remembered in ``errors`` (variable -> one-line reason)."""

    def __init__(self, sources: dict[str, AuxSource]):
        self.sources = sources
        self.errors: dict[str, str] = {}
        self._open: dict[str, object] = {}

    def _dataset(self, name: str):
        import rasterio

        if name in self.errors:
            return None
        if name not in self._open:
            src = self.sources[name]
            try:
                ds = rasterio.open(src.path)
                if not 1 <= src.band <= ds.count:
                    raise ValueError(f"has {ds.count} band(s), not band {src.band}")
            except Exception as exc:  # rasterio raises RasterioIOError, CPLE_* and others
                self._fail(name, f"cannot open {src.path}: {str(exc).splitlines()[0] if str(exc) else exc!r}")
                return None
            self._open[name] = ds
        return self._open[name]

    def _fail(self, name: str, message: str) -> None:
        log.warning("auxiliary variable %s is left null: %s", name, message)
        self.errors[name] = message

    def sample(self, lons: np.ndarray, lats: np.ndarray) -> dict[str, list[float | None]]:
        from pyproj import Transformer
        from rasterio.windows import Window as RWindow

        out: dict[str, list[float | None]] = {}
        for name, src in self.sources.items():
            values: list[float | None] = [None] * len(lons)
            ds = self._dataset(name)
            if ds is not None:
                try:
                    crs = ds.crs
                    if crs is not None and crs.to_epsg() != 4326:
                        xs, ys = Transformer.from_crs(4326, crs, always_xy=True).transform(lons, lats)
                    else:
                        xs, ys = lons, lats
                    fcols, frows = ~ds.transform * (np.atleast_1d(np.asarray(xs, dtype=float)),
                                                    np.atleast_1d(np.asarray(ys, dtype=float)))
                    nodata = ds.nodatavals[src.band - 1]
                    for i, (r, c) in enumerate(zip(np.floor(frows), np.floor(fcols))):
                        if 0 <= r < ds.height and 0 <= c < ds.width:
                            v = float(ds.read(src.band, window=RWindow(int(c), int(r), 1, 1))[0, 0])
                            if math.isfinite(v) and (nodata is None or v != nodata):
                                values[i] = v * src.scale
                except Exception as exc:
                    self._fail(name, f"cannot read {src.path}: {str(exc).splitlines()[0] if str(exc) else exc!r}")
                    values = [None] * len(lons)
            out[name] = values
        return out

    def close(self) -> None:
        for ds in self._open.values():
            ds.close()
        self._open.clear()


# -- composites ---------------------------------------------------------------------------------------------------
ALL_SCL = tuple(range(256))


def _window_tile(members: list[Located], epsg: int):
    from treemap.grid import Tile

    c0 = min(m.col for m in members)
    c1 = max(m.col for m in members) + 1
    r0 = min(m.row for m in members)
    r1 = max(m.row for m in members) + 1
    core = (c0 * RESOLUTION, r0 * RESOLUTION, c1 * RESOLUTION, r1 * RESOLUTION)
    return Tile(0, 0, epsg, RESOLUTION, HALO, core, (0, 0, c1 - c0, r1 - r0)), c0, r1


def window_patches(catalog, members: list[Located], year: int, epsg: int, compositing: Compositing
                   ) -> tuple[dict[int, np.ndarray], dict[int, Skipped], int]:
    """Patches (12, 10, 5, 5) of the points of one window (by position in ``members``), the skipped ones, and the
    number of scenes used."""
    from treemap.composite import monthly_composites
    from treemap.cube import CLEAR_SCL, TileCube
    from treemap.grid import lonlat_bbox
    from treemap.infer import fill_present_months
    from treemap.stac import Query

    tile, c0, r1 = _window_tile(members, epsg)
    query = Query(bbox=lonlat_bbox(tile.read_bounds, epsg), start=date(year, 1, 1), end=date(year, 12, 31),
                  max_cloud=compositing.max_cloud)
    scenes = catalog.search(query)
    skipped: dict[int, Skipped] = {}
    if not scenes:
        cloud = f" with at most {compositing.max_cloud:g} % cloud" if compositing.max_cloud < 100 else ""
        for i, m in enumerate(members):
            skipped[i] = Skipped(m.point.row, m.point.key, "no_scenes",
                                 f"no Sentinel-2 L2A scene of {year}{cloud} in {catalog.name} covers the point")
        return {}, skipped, 0
    cube = TileCube(scenes, tile)
    comps, _ = monthly_composites(cube, CLEAR_SCL if compositing.scl_mask else ALL_SCL)
    patches: dict[int, np.ndarray] = {}
    for i, m in enumerate(members):
        r = (r1 - 1 - m.row) + HALO  # read-grid row of the point's pixel
        c = (m.col - c0) + HALO
        patch = comps[:, :, r - HALO:r + HALO + 1, c - HALO:c + HALO + 1][None].copy()
        patch = fill_present_months(patch)[0]
        if np.isnan(patch).all():
            inside = any(s.bbox[0] <= m.point.lon <= s.bbox[2] and s.bbox[1] <= m.point.lat <= s.bbox[3]
                         for s in scenes)
            if inside:
                skipped[i] = Skipped(m.point.row, m.point.key, "no_clear_data",
                                     f"no clear observation of the point in any month of {year}")
            else:
                skipped[i] = Skipped(m.point.row, m.point.key, "outside_scenes",
                                     f"the point lies outside every scene footprint of {year}")
            continue
        patches[i] = patch.astype(np.float32)
    return patches, skipped, len(scenes)


# -- the extraction -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ExtractResult:
    out: Path
    shards: tuple[Path, ...]
    written: int
    skipped: int
    report: Path

    def to_json(self) -> dict:
        return {"out": str(self.out), "shards": [str(s) for s in self.shards], "written": self.written,
                "skipped": self.skipped, "report": str(self.report)}


def _open_catalog(catalog):
    if hasattr(catalog, "search"):
        return catalog
    from treemap.stac import open_catalog

    return open_catalog(str(catalog))


def _file_digest(path: Path) -> str:
    from treemap.cache import file_sha256

    return file_sha256(path)


def _check_manifest(out: Path, manifest: dict) -> None:
    path = out / MANIFEST
    if path.exists():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            old = None
        if old != manifest:
            raise ExtractError(f"{out} holds shards of another extraction (other points, catalog or options); "
                               f"use a new --out folder or remove it")
        return
    if any(out.glob("shard-*.tar")) or any(out.glob("shard-*.json")):
        raise ExtractError(f"{out} holds shards without an {MANIFEST}; use an empty --out folder")
    from treemap.outputs import write_json_atomic

    write_json_atomic(path, manifest)


def shard_name(index: int) -> str:
    return f"shard-{index:06d}"


def extract_points(points_csv: str | Path, out_dir: str | Path, catalog="earth-search", *,
                   options: ExtractOptions | None = None, recipe: str | Path | None = None,
                   progress: Callable[[str], None] | None = None) -> ExtractResult:
    """Extract training shards for the points of ``points_csv`` into ``out_dir``.

    ``catalog``: anything ``treemap --catalog`` takes (``demo``, a STAC API URL, a local catalog or item file) or
    a catalog object with ``search(Query)``. ``options`` or ``recipe`` (YAML, see :func:`load_recipe`) set the
    compositing, shard size, grouping and auxiliary rasters. Re-running with the same inputs resumes.
    """
    from treemap.outputs import ensure_writable_dir, write_json_atomic

    if options is None:
        options = load_recipe(recipe) if recipe is not None else ExtractOptions()
    points_csv = Path(points_csv)
    points, bad_rows = read_points(points_csv, options)
    out = ensure_writable_dir(Path(out_dir))
    cat = _open_catalog(catalog)
    manifest = {"format_version": FORMAT_VERSION, "points_sha256": _file_digest(points_csv),
                "catalog": getattr(cat, "name", str(catalog)), "options": options.fingerprint()}
    _check_manifest(out, manifest)

    located, windows = plan(points, options.window_px)
    n_shards = math.ceil(len(located) / options.shard_size)
    done = {i for i in range(n_shards) if (out / f"{shard_name(i)}.json").exists()}
    if done:
        log.info("%d of %d shard(s) already finished; resuming", len(done), n_shards)
    say = progress or (lambda msg: log.info("%s", msg))

    aux = AuxSampler(options.auxiliary)
    pending: dict[int, dict[int, Sample | Skipped]] = defaultdict(dict)  # shard -> position -> result
    try:
        for w_index, window in enumerate(windows, start=1):
            needed = [i for i in window.members if i // options.shard_size not in done]
            if not needed:
                continue
            members = [located[i] for i in needed]
            patches, skipped, n_scenes = window_patches(cat, members, window.year, window.epsg, options.compositing)
            lons = np.array([m.point.lon for m in members])
            lats = np.array([m.point.lat for m in members])
            values = aux.sample(lons, lats) if options.auxiliary else {}
            for j, i in enumerate(needed):
                m = located[i]
                if j in skipped:
                    pending[i // options.shard_size][i] = skipped[j]
                    continue
                aux_values = {v: None for v in AUX_VARIABLES}
                aux_values.update(longitude=m.point.lon, latitude=m.point.lat)
                for name, vals in values.items():
                    aux_values[name] = vals[j]
                pending[i // options.shard_size][i] = Sample(m.point.key, torch.from_numpy(patches[j]),
                                                             dict(m.point.text), aux_values)
            say(f"window {w_index}/{len(windows)} ({window.year}, EPSG:{window.epsg}): {len(members)} point(s), "
                f"{n_scenes} scene(s), {len(skipped)} skipped")
            for shard in sorted(pending):
                first, last = shard * options.shard_size, min((shard + 1) * options.shard_size, len(located))
                if len(pending[shard]) == last - first:
                    _finish_shard(out, shard, pending.pop(shard), aux.errors)
    finally:
        aux.close()

    shards, written, skipped_rows, aux_errors = [], 0, [s.to_json() for s in bad_rows], {}
    for i in range(n_shards):
        side = json.loads((out / f"{shard_name(i)}.json").read_text(encoding="utf-8"))
        written += side["samples"]
        skipped_rows.extend(side["skipped"])
        aux_errors.update(side.get("aux_errors", {}))
        if side["samples"]:
            shards.append(out / f"{shard_name(i)}.tar")
    skipped_rows.sort(key=lambda s: s["row"])
    report = write_json_atomic(out / REPORT, {
        "points_file": str(points_csv),
        "rows": len(points) + len(bad_rows),
        "written": written,
        "skipped": len(skipped_rows),
        "skipped_by_reason": dict(sorted(Counter(s["reason"] for s in skipped_rows).items())),
        "auxiliary_errors": aux_errors,
        "shards": [s.name for s in shards],
        "skipped_points": skipped_rows,
    })
    say(f"{written} sample(s) in {len(shards)} shard(s), {len(skipped_rows)} point(s) skipped; report {report}")
    return ExtractResult(out, tuple(shards), written, len(skipped_rows), report)


def _finish_shard(out: Path, shard: int, results: dict[int, Sample | Skipped], aux_errors: dict[str, str]) -> None:
    from treemap.outputs import write_json_atomic

    ordered = [results[i] for i in sorted(results)]
    samples = [r for r in ordered if isinstance(r, Sample)]
    skipped = [r.to_json() for r in ordered if isinstance(r, Skipped)]
    name = shard_name(shard)
    if samples:
        write_shard(out / f"{name}.tar", samples)
    missing = Counter(v for s in samples for v, x in s.aux.items() if x is None)
    write_json_atomic(out / f"{name}.json", {
        "shard": f"{name}.tar" if samples else None, "samples": len(samples), "skipped": skipped,
        "aux_missing": dict(sorted(missing.items())), "aux_errors": dict(aux_errors),
    })
    log.info("shard %s: %d sample(s), %d skipped", name, len(samples), len(skipped))
