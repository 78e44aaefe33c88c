"""Build the demo world: per-date rendering, COG writing, truth rasters, STAC documents, atomic publication."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.transform import Affine

from treemap.demo import stac
from treemap.demo.auxlayers import LAYER_SET, write_aux_layers
from treemap.demo.classes import WATER, class_table, classes_json, worldcover_codes
from treemap.demo.clouds import CLOUD_SHAPE, CloudModel
from treemap.demo.layout import STREAM_DATE, Fields, build_fields, build_layout, stream, surface
from treemap.demo.phenology import METRICS, NODATA, phenology_chunk
from treemap.demo.spec import (BANDS, BANDS_10M, BANDS_20M, GENERATOR_VERSION, DemoWorld, WorldSpec,
                               acquisition_dates, days_in_year, processing_baseline, sized_spec, tile_grids)
from treemap.durable import gdal_errors, verify_raster
from treemap.errors import OutputError, WriteError

#: The demo's land-cover raster (its truth in ESA WorldCover codes), under ``truth/``.
LANDCOVER = "landcover.tif"

log = logging.getLogger("treemap.demo")

GENERATOR = "treemap.demo"
_I10 = [BANDS.index(b) for b in BANDS_10M]
_I20 = [BANDS.index(b) for b in BANDS_20M]
_HAZE = np.array((1.0, 0.8, 0.6, 0.45, 0.4, 0.35, 0.3, 0.28, 0.1, 0.05), dtype=np.float32)
_SCL_CLEAR_NDVI = 0.3


# ---------------------------------------------------------------------------------------------------- writing


def write_cog(path: Path, data: np.ndarray, transform: Affine, crs: CRS, nodata: float,
              categorical: bool = False, descriptions: tuple[str, ...] | None = None) -> None:
    """One (bands, rows, cols) or (rows, cols) array as a Cloud-Optimized GeoTIFF (zstd, 512 px tiles)."""
    if data.ndim == 2:
        data = data[None]
    predictor = "NO" if categorical else "YES"
    with gdal_errors(path), rasterio.open(
        path, "w", driver="COG", width=data.shape[2], height=data.shape[1], count=data.shape[0],
        dtype=data.dtype.name, crs=crs, transform=transform, nodata=nodata,
        compress="ZSTD", level=2, predictor=predictor, blocksize=512, bigtiff="NO",
        overview_resampling="NEAREST" if categorical else "AVERAGE",
    ) as dst:
        dst.write(data)
        if descriptions:
            for i, name in enumerate(descriptions, start=1):
                dst.set_band_description(i, name)
    verify_raster(path, path)


def _block_mean(a: np.ndarray) -> np.ndarray:
    """2 x 2 block mean over the last two axes."""
    out = a[..., 0::2, 0::2] + a[..., 1::2, 0::2]
    out += a[..., 0::2, 1::2]
    out += a[..., 1::2, 1::2]
    out *= 0.25
    return out.astype(np.float32, copy=False)


# ---------------------------------------------------------------------------------------------------- rendering


class _Renderer:
    def __init__(self, spec: WorldSpec, root: Path):
        self.spec = spec
        self.root = root
        self.table = class_table()
        t0 = time.perf_counter()
        self.layout = build_layout(spec, self.table)
        self.fields: Fields = build_fields(spec, self.table, self.layout)
        self.dates = acquisition_dates(spec)
        self.clouds = CloudModel(spec, self.dates)
        self.tiles = tile_grids(spec)
        self.crs = CRS.from_epsg(spec.epsg)
        self.water20 = _block_mean((self.layout.codes == WATER).astype(np.float32)) >= 0.5
        log.debug("demo world fields ready in %.1f s", time.perf_counter() - t0)

    def platform(self, k: int) -> str:
        return "sentinel-2a" if k % 2 == 0 else "sentinel-2b"

    def render(self, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Acquisition ``k`` on the world grid: DN at 10 m (4, H, W), DN at 20 m (6, H/2, W/2), SCL (H/2, W/2).

        The surface field is computed at 10 m for all bands; 20 m bands are its 2 x 2 means. Date effects
        (calibration gain, haze), noise, cloud shadow and cloud are then applied at each band's resolution.
        """
        spec = self.spec
        h, w = spec.height_px, spec.width_px
        day = self.dates[k]
        doy = day.timetuple().tm_yday
        rng = stream(spec.seed, STREAM_DATE, k)
        surf = surface(self.fields, float(doy))  # (10, N)
        g10 = surf[_I10].reshape(4, h, w)
        g20 = _block_mean(surf[_I20].reshape(6, h, w))
        gain = (1.0 + rng.normal(0, 0.01) + rng.normal(0, 0.007, 10)).astype(np.float32)
        haze = (rng.exponential(0.004) * _HAZE).astype(np.float32)
        c = self.clouds.params[k]
        opacity, shade = self.clouds.opacity_and_shadow(k)
        offset = 1000 if processing_baseline(spec, day) >= "04.00" else 0
        out = []
        grounds = []
        for g, idx, o, s in ((g10, _I10, opacity, shade),
                             (g20, _I20, _block_mean(opacity), _block_mean(shade))):
            g = g * gain[idx, None, None] + haze[idx, None, None]
            g += rng.standard_normal(g.shape, dtype=np.float32) * (0.003 * g + 0.0002)
            grounds.append(g)
            if c.cover > 0:
                cloud = (c.brightness * CLOUD_SHAPE[idx])[:, None, None] * (0.85 + 0.15 * o)[None]
                g = g * ((1.0 - s * (1.0 - c.darkness)) * (1.0 - o))[None] + o[None] * cloud
            out.append(np.clip(np.rint(g * 10000.0) + offset, 1, 65535).astype(np.uint16))
        dn10, dn20 = out

        red20 = _block_mean(grounds[0][BANDS_10M.index("B04")])
        nir20 = grounds[1][BANDS_20M.index("B8A")]
        ndvi = (nir20 - red20) / np.maximum(nir20 + red20, 1e-6)
        scl = np.where(self.water20, 6, np.where(ndvi > _SCL_CLEAR_NDVI, 4, 5)).astype(np.uint8)
        if c.cover > 0:
            o20 = _block_mean(opacity)
            scl[_block_mean(shade) >= 0.5] = 3
            scl[o20 >= 0.02] = 10
            scl[o20 >= 0.25] = 8
            scl[o20 >= 0.6] = 9
        return dn10, dn20, scl

    def render_and_write(self, k: int) -> list[dict]:
        dn10, dn20, scl = self.render(k)
        day = self.dates[k]
        docs = []
        for tile in self.tiles:
            iid = stac.item_id(self.platform(k), tile.name, day)
            folder = self.root / "data" / iid
            folder.mkdir(parents=True, exist_ok=True)
            t10 = Affine(*tile.transform(10))
            t20 = Affine(*tile.transform(20))
            c0, c1 = tile.col0, tile.col1
            for j, band in enumerate(BANDS_10M):
                write_cog(folder / f"{band}.tif", dn10[j, :, c0:c1], t10, self.crs, 0)
            for j, band in enumerate(BANDS_20M):
                write_cog(folder / f"{band}.tif", dn20[j, :, c0 // 2:c1 // 2], t20, self.crs, 0)
            tile_scl = scl[:, c0 // 2:c1 // 2]
            write_cog(folder / "SCL.tif", tile_scl, t20, self.crs, 0, categorical=True)
            counts = np.bincount(tile_scl.ravel(), minlength=12).tolist()
            docs.append(stac.item_doc(self.spec, tile, day, self.platform(k),
                                      processing_baseline(self.spec, day), counts))
        return docs

    def phenology(self, idx: np.ndarray) -> np.ndarray:
        return phenology_chunk(self.fields, idx, days_in_year(self.spec.year))


def _generate(root: Path, spec: WorldSpec) -> None:
    t0 = time.perf_counter()
    r = _Renderer(spec, root)
    h, w = spec.height_px, spec.width_px
    for sub in ("data", "items", stac.COLLECTION, "truth"):
        (root / sub).mkdir()
    n_dates = len(r.dates)
    veg = np.flatnonzero(r.fields.has_cycle)
    pheno = np.full((7, h * w), NODATA, dtype=np.int16)

    def phenology() -> None:  # compiled, runs without the GIL beside the rendering
        for i in range(0, len(veg), 8192):
            pheno[:, veg[i:i + 8192]] = r.phenology(veg[i:i + 8192])

    workers = 2 if (os.cpu_count() or 1) > 1 else 1
    side = ThreadPoolExecutor(max_workers=1, thread_name_prefix="treemap-demo-pheno")
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="treemap-demo")
    try:
        pheno_job = side.submit(phenology)
        date_jobs = [pool.submit(r.render_and_write, k) for k in range(n_dates)]
        items: list[dict] = []
        for k, job in enumerate(date_jobs):
            items.extend(job.result())
            if (k + 1) % 10 == 0 or k + 1 == n_dates:
                log.info("demo world: %d/%d acquisitions written", k + 1, n_dates)
        pheno_job.result()
    finally:  # on error, drop the queued dates instead of rendering them all first
        pool.shutdown(wait=True, cancel_futures=True)
        side.shutdown(wait=True, cancel_futures=True)

    truth = root / "truth"
    grid = Affine(10.0, 0.0, spec.x_min, 0.0, -10.0, spec.y_max)
    write_cog(truth / "species.tif", r.layout.codes, grid, r.crs, 0, categorical=True)
    write_cog(truth / LANDCOVER, worldcover_codes(r.layout.codes, r.table), grid, r.crs, 0, categorical=True)
    write_cog(truth / "phenology.tif", pheno.reshape(7, h, w), grid, r.crs, NODATA, categorical=True,
              descriptions=METRICS)
    stac.dump(truth / "classes.json", classes_json(r.table))
    write_aux_layers(root, spec, r.layout.codes)

    for doc in items:
        stac.dump(root / "items" / f"{doc['id']}.json", doc)
    stac.dump(root / stac.COLLECTION / "collection.json", stac.collection_doc(spec, items))
    stac.dump(root / "catalog.json", stac.catalog_doc(spec))

    codes, counts = np.unique(r.layout.codes, return_counts=True)
    west, east = r.tiles
    stac.dump(root / "world.json", {
        "generator": GENERATOR,
        "generator_version": GENERATOR_VERSION,
        "spec": spec.to_json(),
        "tiles": [{"name": t.name, "bounds": list(t.bounds), "columns": [t.col0, t.col1]} for t in (west, east)],
        "acquisitions": n_dates,
        "items": len(items),
        "class_fractions": {str(int(c)): round(float(n) / (h * w), 6)
                            for c, n in zip(codes, counts)},
    })
    log.info("demo world built in %.1f s: %d items in %s", time.perf_counter() - t0, len(items), root)


# ---------------------------------------------------------------------------------------------------- publishing


def _world_json(path: Path) -> dict | None:
    try:
        doc = json.loads((path / "world.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and doc.get("generator") == GENERATOR else None


def _is_complete(path: Path, spec: WorldSpec) -> bool:
    doc = _world_json(path)
    return (doc is not None and doc.get("generator_version") == GENERATOR_VERSION
            and doc.get("spec") == spec.to_json() and (path / "catalog.json").is_file())


def _landcover(path: Path, spec: WorldSpec) -> Path:
    """``truth/landcover.tif`` of the world at ``path``; a world built before it existed gets it from its truth."""
    target = path / "truth" / LANDCOVER
    if not target.exists():
        with rasterio.open(path / "truth" / "species.tif") as ds:
            codes, transform, crs = ds.read(1), ds.transform, ds.crs
        tmp = target.with_name(f".{LANDCOVER}.{os.getpid()}.tmp")
        write_cog(tmp, worldcover_codes(codes, class_table()), transform, crs, 0, categorical=True)
        os.replace(tmp, target)
    return target


def _aux_layers(path: Path, spec: WorldSpec) -> Path:
    """``aux.yaml`` (and ``aux/``) of the world at ``path``; a world built before they existed gets them from its
    truth and seed (:mod:`treemap.demo.auxlayers`: the same files a fresh build writes)."""
    target = path / LAYER_SET
    if not target.exists():
        with rasterio.open(path / "truth" / "species.tif") as ds:
            codes = ds.read(1)
        write_aux_layers(path, spec, codes)
    return target


def _world(path: Path, spec: WorldSpec) -> DemoWorld:
    return DemoWorld(root=path, catalog=path / "catalog.json", spec=spec,
                     truth_species=path / "truth" / "species.tif",
                     truth_phenology=path / "truth" / "phenology.tif",
                     classes=path / "truth" / "classes.json",
                     landcover=_landcover(path, spec),
                     aux_layers=_aux_layers(path, spec))


def build_world(out_dir: str | Path, spec: WorldSpec = WorldSpec()) -> DemoWorld:
    """Build the demo world of ``spec`` into ``out_dir`` (or return the complete one already there).

    The world is generated in a temporary sibling folder and renamed into place, so ``out_dir`` never holds a
    half-built world. An older demo world (other spec or generator version) at ``out_dir`` is replaced; any other
    non-empty folder is left alone and raises :class:`OutputError`.
    """
    spec.validate()
    out = Path(out_dir).expanduser().absolute()
    if _is_complete(out, spec):
        return _world(out, spec)
    if out.exists() and not out.is_dir():
        raise OutputError(f"cannot build the demo world at {out}: it exists and is not a folder")
    if out.is_dir() and _world_json(out) is None and any(out.iterdir()):
        raise OutputError(f"cannot build the demo world at {out}: the folder is not empty and holds no demo world")
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=parent))
    except OSError as exc:
        raise OutputError(f"cannot write the demo world to {out}: {exc.strerror or exc}") from None
    log.info("building demo world (seed %d, %dx%d px, %d-day cadence) in %s",
             spec.seed, spec.width_px, spec.height_px, spec.cadence_days, out)
    try:
        os.chmod(tmp, 0o755)
        _generate(tmp, spec)
    except WriteError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise WriteError(f"cannot write the demo world to {out}: {str(exc).rsplit(': ', 1)[-1]}") from None
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OutputError(f"cannot write the demo world to {out}: {exc.strerror or exc}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        os.rename(tmp, out)  # atomic; replaces an empty folder, fails on a non-empty one
    except OSError:
        if _is_complete(out, spec):  # another process won the race: use its world
            shutil.rmtree(tmp, ignore_errors=True)
            return _world(out, spec)
        if _world_json(out) is None:
            shutil.rmtree(tmp, ignore_errors=True)
            raise OutputError(f"cannot build the demo world at {out}: the folder is not empty") from None
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=parent))
        try:
            os.rename(out, old / "world")
            os.rename(tmp, out)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise OutputError(f"cannot replace the demo world at {out}: {exc.strerror or exc}") from None
        finally:
            shutil.rmtree(old, ignore_errors=True)
    return _world(out, spec)


def ensure_demo_world(seed: int = 0, cache_dir: str | Path | None = None,
                      size: tuple[float, float] | None = None) -> DemoWorld:
    """The default demo world of ``seed``, cached under ``cache_dir``, ``$TREEMAP_CACHE`` or the user cache folder.

    ``size`` (width, height in km; :func:`treemap.demo.spec.sized_spec`) builds a world of another extent, cached
    in a folder of its own named by its size in 10 m pixels; the default size shares the default world's folder."""
    from treemap.cache import cache_root

    spec = WorldSpec(seed=seed) if size is None else sized_spec(seed, *size)
    root = Path(cache_dir).expanduser() if cache_dir is not None else cache_root()
    name = f"world-{GENERATOR_VERSION}-seed{seed}"
    if spec != WorldSpec(seed=seed):
        name += f"-{spec.width_px}x{spec.height_px}px"
    return build_world(root / "demo" / name, spec)
