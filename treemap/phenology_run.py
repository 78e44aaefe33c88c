"""A phenology run: the season timing of every pixel of an AOI for one year, as a COG.

Same path as a mapping run (search, UTM tiles, the lazy cube, per-scene harmonisation and SCL masking), but the tile's
clear-sky series is kept per acquisition instead of composited by month: the vegetation index of each acquisition
goes to :func:`treemap.phenology.phenology_metrics`. Snow never enters the fit: observations the scene
classification calls snow (SCL 11) do not count as clear here (:data:`PHENOLOGY_CLEAR_SCL`; the monthly composites of
a mapping run keep them), and the snow screen (:mod:`treemap.phenology.snow`, on by default) drops the snow on the
ground that the classification missed, for EVI and NDVI alike; each tile's record, the log and the run summary
(``snow``) count both. The search covers the year plus ``margin_days`` either side so
that cycles crossing the new year are whole. Tiles finish with a done-marker, so an interrupted run resumes; they run
in this process or on a dask cluster (:mod:`treemap.scale`), under the output folder's lock (:mod:`treemap.workdir`).

Products (int16, nodata -32768, one band per metric, band descriptions and units in the band metadata):

* ``phenology.tif``: the 13 bands of :data:`treemap.phenology.METRIC_NAMES`. Transition dates are days of year of
  ``year`` (1 = 1 January; 0 and below or 366 and above for dates in the neighbouring years), rounded as MCD12Q2
  reports them: the first day at or above a threshold on the way up (greenup side rounded up) and the last day at or
  above it on the way down (green-down side rounded down); the peak to the nearest day. Index levels (minimum, peak
  value, amplitude) are stored x 10000 with the band scale 0.0001, so GDAL and QGIS show index units.
* ``seasonal_composites.tif`` (``seasonal=True``): 4 seasons x 10 bands of clear-sky median reflectance around
  each season's middle (:class:`treemap.phenology.tile.SeasonalCompositor`), x 10000 with scale 0.0001.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import ClassVar

import numpy as np

from treemap import __version__
from treemap.aoi import read_aoi
from treemap.dates import check_year
from treemap.errors import DateRangeError, TreemapError
from treemap.grid import Tile, TilePlan, core_index, core_mask, plan_tiles
from treemap.outputs import NODATA_I16, ProductSpec, ensure_writable_dir
from treemap.scale import ClusterSpec
from treemap.cube import ASSETS, CLEAR_SCL
from treemap.tiles import (DEFAULT_MAX_UNREADABLE, RunSummary, TileResult, find_scenes, run_job,
                           unreadable_assets, unreadable_tags)
from treemap.workdir import WORK_DIR, work_lock

__all__ = ["PhenologyRequest", "PhenologyRunResult", "PhenologyJob", "run_phenology", "search_window",
           "encode_metrics", "encode_reflectance", "tile_series", "PHENOLOGY_CLEAR_SCL", "WORK_DIR"]

log = logging.getLogger("treemap.phenology")

#: Scale of the index levels and reflectance in the int16 products.
LEVEL_SCALE = 1e-4
_DATE_UP = ("greenup", "midgreenup", "maturity")
_DATE_DOWN = ("senescence", "midgreendown", "dormancy")
_LEVELS = ("minimum", "peak_value", "amplitude")
#: Names of the QA codes 0..4 in the run summary (see :data:`treemap.phenology.QA_CODES`).
QA_KEYS = ("good", "few_observations", "no_cycle", "partial", "gap")
_UNITS = {"season_length": "days", "n_clear": "count", "qa": "code"}
#: SCL classes counted as clear sky for phenology: the mapping run's :data:`treemap.cube.CLEAR_SCL` without snow/ice
#: (11), whose low index would pull the dormant base of the curve down.
PHENOLOGY_CLEAR_SCL: tuple[int, ...] = tuple(c for c in CLEAR_SCL if c != 11)
#: Names of the snow counts in the tile records and the run summary.
SNOW_KEYS = ("scl", "screened")


@dataclass(frozen=True)
class PhenologyRequest:
    aoi: Path
    out: Path
    year: int
    catalog: str = "earth-search"
    index: str = "evi"
    margin_days: int = 183
    max_cloud: float = 100.0
    tile_size: int = 512
    min_observations: int = 12
    snow_screen: bool = True  # drop the snow on the ground the scene classification missed (treemap.phenology.snow)
    seasonal: bool = False
    keep_work: bool = False
    scheduler: str | None = None  # an existing dask scheduler's address or scheduler file; None: this machine
    workers: int | None = None  # worker processes on this machine (None: one per CPU core)
    max_unreadable: float = DEFAULT_MAX_UNREADABLE  # a tile with more unreadable assets fails

    def cluster(self) -> ClusterSpec:
        return ClusterSpec(scheduler=self.scheduler, workers=self.workers)


@dataclass(frozen=True)
class PhenologyRunResult(RunSummary):
    year: int = 0
    qa_counts: dict[str, int] = field(default_factory=dict)
    unreadable: tuple[tuple[str, str, str, str], ...] = ()
    #: observations (pixel-dates in the AOI) left out of the fit as snow: ``scl`` classified snow (SCL 11) in every
    #: scene of the acquisition, ``screened`` found by the snow screen
    snow: dict[str, int] = field(default_factory=dict)
    #: input sanity, summed over the tiles (see :func:`input_counts`)
    inputs: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {**super().to_json(), "year": self.year, "qa_counts": self.qa_counts, "snow": self.snow,
                "inputs": self.inputs,
                "unreadable_assets": [dict(zip(("scene", "band", "href", "reason"), u)) for u in self.unreadable]}


def search_window(year: int, margin_days: int) -> tuple[date, date]:
    """The acquisition dates a phenology run reads: the year and ``margin_days`` either side."""
    return date(year, 1, 1) - timedelta(days=margin_days), date(year, 12, 31) + timedelta(days=margin_days)


def encode_metrics(data: np.ndarray, names: tuple[str, ...]) -> np.ndarray:
    """Float metrics (bands, H, W), NaN where undefined -> int16 with :data:`NODATA_I16` (see the module doc)."""
    out = np.full(data.shape, NODATA_I16, dtype=np.int16)
    for i, name in enumerate(names):
        v = data[i].astype(np.float64)
        if name in _DATE_UP:
            v = np.ceil(v - 1e-6)
        elif name in _DATE_DOWN:
            v = np.floor(v + 1e-6)
        elif name in _LEVELS:
            v = np.rint(v / LEVEL_SCALE)
        else:
            v = np.rint(v)
        ok = np.isfinite(v)
        out[i][ok] = np.clip(v[ok], -32767, 32767).astype(np.int16)
    return out


def encode_reflectance(refl: np.ndarray) -> np.ndarray:
    """Reflectance (float, NaN = none) -> int16 x 10000 with :data:`NODATA_I16`."""
    v = np.rint(refl.astype(np.float64) / LEVEL_SCALE)
    out = np.full(refl.shape, NODATA_I16, dtype=np.int16)
    ok = np.isfinite(v)
    out[ok] = np.clip(v[ok], -32767, 32767).astype(np.int16)
    return out


def series_blocks(cube, block: int = 8):
    """The tile's clear-sky series for phenology, ``block`` acquisitions at a time: (acquisitions, reflectance
    (A, 10, H, W) masked with :data:`PHENOLOGY_CLEAR_SCL`, snow (A, H, W) bool).

    The same reading as :func:`treemap.composite.acquisition_blocks` (harmonised, masked per scene, the scenes of
    one acquisition mosaicked first-clear-first) with SCL 11 not clear, plus where the acquisition is snow by its
    classification: no scene clear there and at least one classified snow."""
    from treemap.composite import harmonise, mask_reflectance, mosaic_first_valid
    from treemap.cube import acquisitions
    from treemap.phenology.snow import SCL_SNOW

    groups = acquisitions(cube.scenes)
    for start in range(0, len(groups), block):
        chunk = groups[start:start + block]
        flat = [i for g in chunk for i in g.indices]
        dn, scl = cube.load(flat)
        refl = harmonise(dn, cube.scale[flat], cube.offset[flat])
        del dn
        snow = scl == SCL_SNOW
        mask_reflectance(refl, scl, PHENOLOGY_CLEAR_SCL)
        position = {scene_index: k for k, scene_index in enumerate(flat)}
        rows = [[position[i] for i in g.indices] for g in chunk]
        out = np.stack([mosaic_first_valid(refl[r]) for r in rows])
        flagged = np.stack([snow[r].any(axis=0) for r in rows]) & np.isnan(out).any(axis=1)
        yield chunk, out, flagged


@dataclass(frozen=True)
class SnowCounts:
    """Per core pixel (H * W,), int32: observations classified snow (SCL 11) and observations screened as snow."""

    scl: np.ndarray
    screened: np.ndarray

    def total(self, inside: np.ndarray | None = None) -> dict[str, int]:
        """Sums over the pixels (those where ``inside`` is True), keyed by :data:`SNOW_KEYS`."""
        sel = slice(None) if inside is None else inside
        return {"scl": int(self.scl[sel].sum()), "screened": int(self.screened[sel].sum())}


def tile_series(cube, index: str, snow_screen=True) -> tuple[np.ndarray, np.ndarray, np.ndarray, SnowCounts]:
    """The core pixels' index series of a tile: dates (T,) datetime64[D], values and clear mask (T, H * W), and the
    snow counts per pixel.

    Clear means: clear by :data:`PHENOLOGY_CLEAR_SCL` (snow-classified observations are not), every band valid,
    and, with ``snow_screen`` (``True`` or a :class:`treemap.phenology.snow.SnowScreen`), not screened as snow.
    The screen's per-pixel test needs each pixel's whole series, so it runs after the last block; meanwhile the
    blocks keep B03 and NDSI (float16) beside the index."""
    from treemap.phenology.snow import SnowScreen, screen_bands, screen_series
    from treemap.phenology.tile import vegetation_index

    params = snow_screen if isinstance(snow_screen, SnowScreen) else (SnowScreen() if snow_screen else None)
    core = core_index(cube.tile)
    dates, values, clear, flagged, green, ndsi, is_open = [], [], [], [], [], [], []
    for groups, refl, snow in series_blocks(cube):
        a = len(groups)
        part = refl[core]
        vi, ok = vegetation_index(part, index)
        values.append(vi.reshape(a, -1))
        clear.append(ok.reshape(a, -1))
        flagged.append(snow[:, core[2], core[3]].reshape(a, -1))
        if params is not None:
            b03, nd, op = screen_bands(part)
            green.append(b03.reshape(a, -1))
            ndsi.append(nd.reshape(a, -1))
            is_open.append(op.reshape(a, -1))
        dates.extend(np.datetime64(g.key[1], "D") for g in groups)
    values, clear = np.concatenate(values), np.concatenate(clear)
    n_scl = np.concatenate(flagged).sum(axis=0, dtype=np.int32)
    if params is not None:
        screened = screen_series(values, np.concatenate(green), np.concatenate(ndsi), np.concatenate(is_open),
                                 clear, params)
        clear &= ~screened
        n_screened = screened.sum(axis=0, dtype=np.int32)
    else:
        n_screened = np.zeros(values.shape[1], dtype=np.int32)
    return (np.array(dates, dtype="datetime64[D]"), values, clear, SnowCounts(n_scl, n_screened))


@dataclass(frozen=True)
class SeriesTile:
    """A tile's clear-sky index series (core pixels) and its cube, for the seasonal composites' second pass."""

    cube: object
    dates: np.ndarray
    values: np.ndarray
    clear: np.ndarray
    inside: np.ndarray
    snow: dict = field(default_factory=dict)  # snow counts of the pixels in the AOI (:meth:`SnowCounts.total`)


@dataclass(frozen=True)
class PhenologyJob:
    """Season timing (and seasonal composites) per tile, on the tile engine."""

    name: ClassVar[str] = "phenology"
    request: PhenologyRequest
    start: date
    end: date
    n_scenes: int

    def fingerprint(self) -> dict:
        r = self.request
        return {"year": r.year, "index": r.index, "min_observations": r.min_observations, "seasonal": r.seasonal,
                "snow_screen": r.snow_screen}

    def read(self, tile: Tile, scenes: list, local_aoi) -> SeriesTile:
        from treemap.cube import TileCube

        cube = TileCube(scenes, tile)
        dates, values, clear, snow = tile_series(cube, self.request.index, self.request.snow_screen)
        inside = core_mask(tile, local_aoi).ravel()
        clear &= inside[None, :]
        counts = snow.total(inside)
        log.info("tile %s: %d observations classified snow (SCL 11) and %d screened as snow, left out of the fit",
                 tile.id, counts["scl"], counts["screened"])
        return SeriesTile(cube, dates, values, clear, inside, counts)

    def compute(self, tile: Tile, inputs: SeriesTile) -> TileResult:
        from treemap.composite import acquisition_blocks
        from treemap.phenology import METRIC_NAMES, phenology_metrics
        from treemap.phenology.tile import SeasonalCompositor, metric_stack

        request, shape = self.request, (tile.height, tile.width)
        result = phenology_metrics(inputs.dates, inputs.values, inputs.clear, request.year,
                                   min_observations=request.min_observations)
        outside = ~inputs.inside.reshape(shape)
        data = encode_metrics(metric_stack(result, shape), METRIC_NAMES)
        data[:, outside] = NODATA_I16
        if request.seasonal:
            core = core_index(tile)
            comp = SeasonalCompositor(inputs.dates, result, shape, 10)
            for groups, refl in acquisition_blocks(inputs.cube):
                comp.add([g.key[1] for g in groups], refl[core])
            seasons = encode_reflectance(comp.result()).reshape(40, *shape)
            seasons[:, outside] = NODATA_I16
            data = np.concatenate([data, seasons])
        qa = np.bincount(result.qa[inputs.inside], minlength=5).tolist()
        n_scenes = len(inputs.cube.scenes)
        return TileResult(data, NODATA_I16, {"scenes": n_scenes, "assets": n_scenes * len(ASSETS),
                                              "dates": int(inputs.dates.shape[0]), "qa": qa,
                                              "snow": {k: int(inputs.snow.get(k, 0)) for k in SNOW_KEYS},
                                              "input": result.stats.as_dict() if result.stats else {},
                                              "unreadable": [list(u) for u in inputs.cube.unreadable]})

    def products(self, plan: TilePlan, records: dict[str, dict]) -> list[ProductSpec]:
        tags = unreadable_tags(unreadable_assets(plan, records))
        return phenology_products(self.request, self.start, self.end, self.n_scenes, tags)


def run_phenology(request: PhenologyRequest) -> PhenologyRunResult:
    """Run a phenology job and return the products written."""
    if request.index not in ("evi", "ndvi"):
        raise TreemapError(f"unknown index {request.index!r}: use evi or ndvi")
    check_year(request.year)
    if request.margin_days < 0:
        raise DateRangeError(f"invalid margin {request.margin_days} days: use 0 or more")
    cluster = request.cluster().check()
    aoi = read_aoi(request.aoi)
    start, end = search_window(request.year, request.margin_days)
    out = ensure_writable_dir(Path(request.out))
    with work_lock(out):
        from treemap.phenology.sanity import reset_warnings

        reset_warnings()
        scenes = find_scenes(request.catalog, aoi, start, end, request.max_cloud)
        plan = plan_tiles(aoi, tile_size=request.tile_size)
        job = PhenologyJob(request, start, end, len(scenes))
        result = run_job(job, aoi, plan, scenes, out, cluster, request.keep_work,
                         max_unreadable=request.max_unreadable)
    qa_total = np.zeros(5, dtype=np.int64)
    snow = dict.fromkeys(SNOW_KEYS, 0)
    for record in result.records.values():
        qa_total += np.asarray(record.get("qa", [0] * 5)[:5], dtype=np.int64)
        for k in SNOW_KEYS:
            snow[k] += int(record.get("snow", {}).get(k, 0))
    qa_counts = {name: int(c) for name, c in zip(QA_KEYS, qa_total)}
    inputs = input_counts(result.records.values())
    if snow["scl"] or snow["screened"]:
        log.info("%d observations classified snow (SCL 11) and %d screened as snow were left out of the fit",
                 snow["scl"], snow["screened"])
    return PhenologyRunResult(result.products, plan.epsg, plan.bounds, len(plan.tiles), len(scenes), start, end,
                              request.year, qa_counts, tuple(unreadable_assets(plan, result.records)), snow, inputs)


def input_counts(records) -> dict[str, int]:
    """The tiles' input-sanity counts (:class:`treemap.phenology.sanity.PhenologyStats`) added up, logged: values
    rejected as not finite or implausible, and results the final guard changed. Warns once for the run when the
    index looks like unscaled reflectance (with dask, each worker's own warning goes to that worker's log)."""
    from treemap.phenology.sanity import UNSCALED_SHARE

    keys = ("n_flagged_clear", "n_nonfinite", "n_implausible", "n_out_of_range", "n_used", "n_guarded_pixels",
            "n_guarded_dates")
    total = dict.fromkeys(keys, 0)
    for record in records:
        for k in keys:
            total[k] += int(record.get("input", {}).get(k, 0) or 0)
    rejected = total["n_nonfinite"] + total["n_implausible"] + total["n_out_of_range"]
    if rejected:
        log.info("%d clear observations rejected: %d not finite, %d beyond +-1.5, %d outside the valid range",
                 rejected, total["n_nonfinite"], total["n_implausible"], total["n_out_of_range"])
    if total["n_guarded_pixels"]:
        log.warning("the final check set %d date(s) of %d pixel(s) to NaN (impossible dates)",
                    total["n_guarded_dates"], total["n_guarded_pixels"])
    finite = total["n_flagged_clear"] - total["n_nonfinite"]
    if finite and total["n_implausible"] / finite > UNSCALED_SHARE:
        log.warning("%.0f %% of the index values are beyond +-1.5: the reflectance looks unscaled (DN); check the "
                    "catalog's scale and offset", 100 * total["n_implausible"] / finite)
    return total


def phenology_products(request: PhenologyRequest, start: date, end: date, n_scenes: int,
                       extra_tags: dict[str, str] | None = None) -> list[ProductSpec]:
    from treemap.phenology import METRIC_DESCRIPTIONS, METRIC_NAMES, SEASONS
    from treemap.phenology.tile import BAND_ORDER

    tags = {"TREEMAP_VERSION": __version__, "TREEMAP_PERIOD": f"{start.isoformat()}/{end.isoformat()}",
            "TREEMAP_SCENES": str(n_scenes), "TREEMAP_YEAR": str(request.year),
            "TREEMAP_INDEX": request.index.upper(),
            "TREEMAP_DAY_OF_YEAR": f"dates are days of year of {request.year}: 1 = {request.year}-01-01",
            **(extra_tags or {})}
    bands = []
    for name, description in zip(METRIC_NAMES, METRIC_DESCRIPTIONS):
        band = {"description": name, "metadata": {"long_name": description}}
        if name in _LEVELS:
            band.update(scale=LEVEL_SCALE, offset=0.0)
            band["metadata"]["unit"] = request.index.upper()
        else:
            band["metadata"]["unit"] = _UNITS.get(name, f"day of year {request.year}")
        bands.append(band)
    specs = [ProductSpec("phenology", tuple(bands), 0, dtype="int16", nodata=NODATA_I16, tags=tuple(tags.items()))]
    if request.seasonal:
        season_bands = tuple({"description": f"{season} {band}", "scale": LEVEL_SCALE, "offset": 0.0,
                              "metadata": {"season": season, "band": band, "unit": "reflectance"}}
                             for season in SEASONS for band in BAND_ORDER)
        specs.append(ProductSpec("seasonal_composites", season_bands, len(METRIC_NAMES), dtype="int16",
                                 nodata=NODATA_I16, resampling="AVERAGE", tags=tuple(tags.items())))
    return specs
