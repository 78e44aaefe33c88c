"""Where a CPU run of `treemap predict` spends its time, and how far it scales: the measurements of issue 17.

    python benchmarks/throughput.py [--aoi examples/region.geojson] [--repeats 2] [--world-km 6] [--large]
                                    [--demo-batch 4096] [--demo-batches 4] [--full-batch 64] [--full-batches 2]

Every measurement runs in a fresh child process (this script with ``--child``), one at a time, so caches (GDAL's
block cache, open datasets, torch's allocator) never carry from one to the next and each peak RSS is one run's.
CPU time is the process's (user + system, all its threads: dask's, GDAL's, torch's), not wall time.

Stages, on one tile of ``--aoi`` (default: the README's demo region on the default demo world, one 512 px tile over
both MGRS-like tiles, so 146 scenes and 1,606 files; the figures of issue 17 were measured there):

* ``host``: what the host does before the encoder, as ``treemap predict`` does it: the tile's lazy cube
  (``TileCube``: stackstac set-up), the 12 monthly composites (``monthly_composites``: reads through
  ``TileCube.load``, harmonisation, SCL mask, mosaic, medians) and the patches of every core pixel with their
  auxiliary inputs (``PixelEncoder._per_pixel`` with an encoder that does nothing: patch views, gap filling,
  selection of the present pixels, longitude and latitude). ``TileCube.load`` is timed on its own, so the read
  stage is cube set-up + loads and the composite stage is the rest of ``monthly_composites``.
  ``host_px_per_cpu_s`` = the tile's core pixels / CPU seconds of the three stages. The child's peak RSS after
  the composites and at the end (``ru_maxrss``) shows what the patches add.
* ``plain``: the same files read with plain rasterio in the same run: for every scene of the tile and each of its
  11 assets, the window of the tile's read bounds (halo included) intersected with the file, rounded outwards, at
  the file's own resolution (no resampling of the 20 m bands onto the 10 m grid), one ``open`` + ``read`` each.
  ``read_vs_rasterio`` = treemap's read stage CPU / plain CPU; ``load_vs_rasterio`` leaves out the cube set-up.
  ``host`` and ``plain`` alternate ``--repeats`` times after a plain warm-up read (so the files are in the page
  cache for both); each figure is its best repeat (other load only ever slows a run down).
* ``encoder_demo``, ``encoder_full``: ``PixelEncoder.embed`` (batching, normalisation, encoder, L2 norm) on CPU
  for the shipped demo model and for the full-size GeoTreeCLIP configuration (``GeoTreeCLIPConfig.full()``) with
  random weights, on random patches with a quarter of the months missing (``benchmarks/encoder.py``'s batches);
  one warm-up batch, then ``--*-batches`` timed batches. Pixels per wall second (torch's threads on every core)
  and per CPU second; ``*_model_cpu_s`` is building / loading the model.
* ``predict``: ``treemap predict --workers 1 --device cpu`` (tiles in this process, the next tile read while one
  computes; the demo model and species list; the built-in tree mask): first on the stages' AOI
  (``predict_stage_aoi``, with the host stages' share of its CPU), then for square AOIs of about 4 and 25 km²
  centred in a demo world of ``--world-km`` (default 6 x 6 km, built with ``treemap demo --size`` and cached like
  the default world); with ``--large`` also 100 and 400 km², all four on a 21 x 21 km world (2.3 GB on disk;
  estimated from smaller runs on 2 cores: about 6 minutes to build once, 20 minutes to map). Peak RSS, wall and CPU
  seconds (``os.wait4`` of the child: its own figures, start-up, search, model load and publishing included), km²
  per wall hour and per CPU hour. ``km2_per_hour`` is the largest AOI's. With the default 512 px tiles the 4 and
  25 km² AOIs are one tile each (about 200 and 500 px square), so their peak RSS compares tile sizes; 100 and
  400 km² are 4 and 16 tiles.

Prints one JSON line with the figures, the machine's ``cores`` and its load average before and after
(``os.getloadavg()``): on a shared machine read the figures beside the load.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))


# ---------------------------------------------------------------------------------------------------- children


class Clock:
    """CPU and wall seconds of this process since the last ``lap``."""

    def __init__(self):
        self.cpu, self.wall = time.process_time(), time.perf_counter()

    def lap(self) -> tuple[float, float]:
        cpu, wall = time.process_time(), time.perf_counter()
        out = (cpu - self.cpu, wall - self.wall)
        self.cpu, self.wall = cpu, wall
        return out


def _tile_and_scenes(catalog: str, aoi_path: str, tile_size: int):
    from treemap.aoi import read_aoi
    from treemap.dates import default_year
    from treemap.grid import plan_tiles, scenes_for_tile, to_crs
    from treemap.stac.query import date_window
    from treemap.tiles import find_scenes

    aoi = read_aoi(Path(aoi_path))
    start, end = date_window(None, None, default_year(catalog))
    plan = plan_tiles(aoi, tile_size=tile_size)
    tile = max(plan.tiles, key=lambda t: t.width * t.height)
    scenes = scenes_for_tile(find_scenes(catalog, aoi, start, end), tile)
    return tile, scenes, to_crs(aoi.geometry, plan.epsg)


def child_host(catalog: str, aoi_path: str, tile_size: int) -> dict:
    import numpy as np

    from treemap.composite import monthly_composites
    from treemap.cube import TileCube
    from treemap.grid import core_mask, pixel_centres_lonlat
    from treemap.infer import InferenceSpec, PixelEncoder
    from treemap.models.checkpoint import demo_model

    tile, scenes, local_aoi = _tile_and_scenes(catalog, aoi_path, tile_size)
    encoder = PixelEncoder(demo_model()[0], InferenceSpec(device="cpu"))  # its model is never called
    valid = core_mask(tile, local_aoi)
    for name in ("rasterio", "stackstac", "treemap.io_env"):  # what TileCube imports on first use: not timed
        importlib.import_module(name)

    clock = Clock()
    cube = TileCube(scenes, tile)
    setup_cpu, setup_wall = clock.lap()
    loads = [0.0, 0.0]
    load = cube.load

    def timed_load(indices):
        inner = Clock()
        out = load(indices)
        cpu, wall = inner.lap()
        loads[0] += cpu
        loads[1] += wall
        return out

    cube.load = timed_load  # the instance's load, as monthly_composites calls it
    composites, counts = monthly_composites(cube)
    monthly_cpu, monthly_wall = clock.lap()
    rss_composites = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    lonlat = pixel_centres_lonlat(tile)
    kept = [0]

    def no_encoder(patches, aux):
        kept[0] += len(patches)
        return np.zeros((len(patches), 1), dtype=np.float32)

    encoder._batched = lambda patches, aux, width, head, present=None: no_encoder(patches, aux)  # host path, no model
    encoder._per_pixel(composites, tile.halo, lonlat, valid, 1, None, 64, None)
    patch_cpu, patch_wall = clock.lap()
    px = tile.width * tile.height
    read_cpu = setup_cpu + loads[0]
    total_cpu = setup_cpu + monthly_cpu + patch_cpu
    return {"tile_px": px, "aoi_px": int(valid.sum()), "patched_px": kept[0], "scenes": len(cube.scenes),
            "files": len(cube.scenes) * 11, "cube_setup_cpu_s": setup_cpu, "load_cpu_s": loads[0],
            "read_cpu_s": read_cpu, "composite_cpu_s": monthly_cpu - loads[0], "patch_cpu_s": patch_cpu,
            "host_cpu_s": total_cpu, "host_wall_s": setup_wall + monthly_wall + patch_wall,
            "read_wall_s": setup_wall + loads[1], "peak_rss_composites_mb": rss_composites,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def child_plain(catalog: str, aoi_path: str, tile_size: int) -> dict:
    import math

    import numpy as np
    import rasterio
    from rasterio.windows import Window

    tile, scenes, _ = _tile_and_scenes(catalog, aoi_path, tile_size)
    hrefs = [href for scene in scenes for href in scene.bands.values()]
    x0, y0, x1, y1 = tile.read_bounds
    clock = Clock()
    pixels = 0
    for href in hrefs:
        with rasterio.open(href) as src:
            t = src.transform
            c0 = max(0, math.floor((x0 - t.c) / t.a + 1e-6))
            c1 = min(src.width, math.ceil((x1 - t.c) / t.a - 1e-6))
            r0 = max(0, math.floor((t.f - y1) / -t.e + 1e-6))
            r1 = min(src.height, math.ceil((t.f - y0) / -t.e - 1e-6))
            if c1 > c0 and r1 > r0:
                block = src.read(1, window=Window(c0, r0, c1 - c0, r1 - r0))
                pixels += int(np.size(block))
    cpu, wall = clock.lap()
    return {"files": len(hrefs), "pixels_read": pixels, "plain_cpu_s": cpu, "plain_wall_s": wall}


def child_encoder(kind: str, batch: int, batches: int) -> dict:
    import torch

    from encoder import make_batch
    from treemap.infer import InferenceSpec, PixelEncoder
    from treemap.models import GeoTreeCLIPConfig, demo_model, random_model

    clock = Clock()
    model = demo_model()[0] if kind == "demo" else random_model(GeoTreeCLIPConfig.full())
    build_cpu, _ = clock.lap()
    encoder = PixelEncoder(model, InferenceSpec(batch_size=batch, device="cpu"))
    images, aux = make_batch(batch * (batches + 1), missing=0.25)
    images, aux = images.numpy(), aux.numpy()
    encoder.embed(images[:batch], aux[:batch])  # warm-up
    clock.lap()
    encoder.embed(images[batch:], aux[batch:])
    cpu, wall = clock.lap()
    n = batch * batches
    return {"model_cpu_s": build_cpu, "px": n, "batch": batch, "threads": torch.get_num_threads(),
            "px_per_s": n / wall, "px_per_cpu_s": n / cpu}


def run_child(args: list[str]) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"throughput child {' '.join(args)} failed: {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------------- predict


def world_catalog(size_km: float) -> str:
    """The cached demo world of ``size_km`` x ``size_km`` (built by ``treemap demo --size`` when missing)."""
    proc = subprocess.run([sys.executable, "-m", "treemap", "demo", "--size", f"{size_km:g}x{size_km:g}"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"treemap demo --size {size_km:g}x{size_km:g} failed: {proc.stderr.strip()[-2000:]}")
    return proc.stdout.strip().splitlines()[-1]


def square_aoi(catalog: str, side_km: float, path: Path) -> float:
    """A square AOI of ``side_km`` centred in the world of ``catalog``, written to ``path``; its area in km² on
    the world's UTM grid."""
    import shapely
    from pyproj import Transformer
    from shapely.geometry import box, mapping

    spec = json.loads((Path(catalog).parent / "world.json").read_text())["spec"]
    cx = spec["x_min"] + spec["width_px"] * 5.0
    cy = spec["y_max"] - spec["height_px"] * 5.0
    half = side_km * 500.0
    square = shapely.segmentize(box(cx - half, cy - half, cx + half, cy + half), 100.0)
    to_lonlat = Transformer.from_crs(spec["epsg"], 4326, always_xy=True)
    lonlat = shapely.transform(square, lambda x, y: to_lonlat.transform(x, y), interleaved=False)
    path.write_text(json.dumps({"type": "Feature", "properties": {}, "geometry": mapping(lonlat)}))
    return aoi_km2(path)


def aoi_km2(path: Path) -> float:
    """The AOI's area in km² on the grid of its UTM zone (the grid treemap maps it on)."""
    from treemap.aoi import read_aoi
    from treemap.grid import to_crs, utm_epsg

    geometry = read_aoi(path).geometry
    return to_crs(geometry, utm_epsg(geometry.centroid.x, geometry.centroid.y)).area / 1e6


def run_predict(catalog: str, aoi: Path, km2: float, out: Path, tile_size: int) -> dict:
    """``treemap predict`` in a child process: its own wall, CPU and peak RSS (``os.wait4``)."""
    return run_predict_on(catalog, aoi, km2, out, tile_size)


def run_predict_on(catalog: str, aoi: Path, km2: float, out: Path, tile_size: int, model_ref: str = "demo",
                   device: str = "cpu", workers: int = 1) -> dict:
    """:func:`run_predict` with another model, device or worker count (``benchmarks/gpu.py``). With worker
    processes, CPU time and peak RSS are what the kernel reports for the child with its reaped descendants."""
    cmd = [sys.executable, "-m", "treemap", "predict", "--catalog", catalog, "--aoi", str(aoi), "--out", str(out),
           "--model", model_ref, "--species", "demo", "--workers", str(workers), "--device", device,
           "--tile-size", str(tile_size), "--json"]
    if catalog != "demo":
        cmd += ["--year", str(json.loads((Path(catalog).parent / "world.json").read_text())["spec"]["year"])]
    env = {**os.environ, "TREEMAP_PROGRESS": "0"}
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=stdout, stderr=stderr, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        stdout.seek(0)
        stderr.seek(0)
        if proc.returncode != 0:
            sys.exit(f"treemap predict failed ({proc.returncode}): {stderr.read().strip()[-2000:]}")
        summary = json.loads(stdout.read())
    cpu = usage.ru_utime + usage.ru_stime
    return {"aoi_km2": round(km2, 2), "tiles": summary["tiles"], "scenes": summary["scenes"],
            "wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
            "km2_per_hour": round(km2 / wall * 3600, 1), "km2_per_cpu_hour": round(km2 / cpu * 3600, 1)}


# ---------------------------------------------------------------------------------------------------- main


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--aoi", default=str(REPO / "examples" / "region.geojson"), help="AOI of the host/read stages")
    ap.add_argument("--catalog", default="demo", help="catalog of the host/read stages")
    ap.add_argument("--tile-size", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=2, help="host/plain repeats (best counts)")
    ap.add_argument("--demo-batch", type=int, default=4096)
    ap.add_argument("--demo-batches", type=int, default=4)
    ap.add_argument("--full-batch", type=int, default=64)
    ap.add_argument("--full-batches", type=int, default=2)
    ap.add_argument("--world-km", type=float, default=6.0, help="side of the world of the 4 and 25 km² runs")
    ap.add_argument("--large", action="store_true",
                    help="also 100 and 400 km² (a 21 x 21 km world; about half an hour on 2 cores)")
    ap.add_argument("--no-predict", action="store_true", help="stages only")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child:
        kind, *rest = args.child
        if kind == "host":
            out = child_host(rest[0], rest[1], int(rest[2]))
        elif kind == "plain":
            out = child_plain(rest[0], rest[1], int(rest[2]))
        else:
            out = child_encoder(rest[0], int(rest[1]), int(rest[2]))
        print(json.dumps(out))
        return out

    load_before = os.getloadavg()
    t_start = time.perf_counter()
    stage = [args.catalog, args.aoi, str(args.tile_size)]
    if args.catalog == "demo":
        subprocess.run([sys.executable, "-m", "treemap", "demo"], check=True, capture_output=True)
    run_child(["plain", *stage])  # warm-up: the files into the page cache
    hosts, plains = [], []
    for _ in range(max(args.repeats, 1)):
        hosts.append(run_child(["host", *stage]))
        plains.append(run_child(["plain", *stage]))
    host = min(hosts, key=lambda h: h["host_cpu_s"])
    read_cpu = min(h["read_cpu_s"] for h in hosts)
    load_cpu = min(h["load_cpu_s"] for h in hosts)
    plain_cpu = min(p["plain_cpu_s"] for p in plains)
    demo = run_child(["encoder", "demo", str(args.demo_batch), str(args.demo_batches)])
    full = run_child(["encoder", "full", str(args.full_batch), str(args.full_batches)])

    result = {
        "benchmark": "throughput",
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "host_px_per_cpu_s": round(host["tile_px"] / host["host_cpu_s"], 1),
        "read_vs_rasterio": round(read_cpu / plain_cpu, 2),
        "load_vs_rasterio": round(load_cpu / plain_cpu, 2),
        "encoder_demo_px_per_s": round(demo["px_per_s"], 1),
        "encoder_full_px_per_s": round(full["px_per_s"], 2),
    }
    host_fields = ("tile_px", "aoi_px", "patched_px", "scenes", "files", "cube_setup_cpu_s", "load_cpu_s",
                   "read_cpu_s", "composite_cpu_s", "patch_cpu_s", "host_cpu_s", "host_wall_s",
                   "peak_rss_composites_mb", "peak_rss_mb")
    result["host"] = {k: round(host[k], 2) if isinstance(host[k], float) else host[k] for k in host_fields}
    result["host"]["cpu_share"] = {k: round(host[f"{k}_cpu_s"] / host["host_cpu_s"], 3)
                                   for k in ("cube_setup", "load", "composite", "patch")}
    result["host"]["repeats_host_cpu_s"] = [round(h["host_cpu_s"], 2) for h in hosts]
    result["plain"] = {"files": plains[0]["files"], "pixels_read": plains[0]["pixels_read"],
                       "plain_cpu_s": round(plain_cpu, 2),
                       "repeats_plain_cpu_s": [round(p["plain_cpu_s"], 2) for p in plains]}
    result["encoder"] = {
        name: {"batch": e["batch"], "px": e["px"], "threads": e["threads"], "px_per_s": round(e["px_per_s"], 2),
               "px_per_cpu_s": round(e["px_per_cpu_s"], 2), "model_cpu_s": round(e["model_cpu_s"], 2)}
        for name, e in (("demo", demo), ("full", full))}

    if not args.no_predict:
        with tempfile.TemporaryDirectory() as tmp:  # the stages' AOI end to end: the host's share of a whole run
            run = run_predict(args.catalog, Path(args.aoi), aoi_km2(Path(args.aoi)), Path(tmp) / "out",
                              args.tile_size)
        result["predict_stage_aoi"] = {**run, "host_share_of_cpu": round(host["host_cpu_s"] / run["cpu_s"], 3)}
        sides = (2.0, 5.0, 10.0, 20.0) if args.large else (2.0, 5.0)
        world_km = max(args.world_km, 21.0) if args.large else args.world_km
        if world_km < max(sides):
            sys.exit(f"--world-km {world_km:g} is smaller than the largest AOI ({max(sides):g} km)")
        t0 = time.perf_counter()
        catalog = world_catalog(world_km)
        result["world"] = {"size_km": world_km, "catalog": catalog, "ready_s": round(time.perf_counter() - t0, 1)}
        runs = []
        with tempfile.TemporaryDirectory() as tmp:
            for side in sides:
                aoi = Path(tmp) / f"aoi-{side:g}km.geojson"
                km2 = square_aoi(catalog, side, aoi)
                runs.append(run_predict(catalog, aoi, km2, Path(tmp) / f"out-{side:g}km", args.tile_size))
        result["predict"] = runs
        result["km2_per_hour"] = runs[-1]["km2_per_hour"]
        result["peak_rss_mb"] = {f"{r['aoi_km2']:g}": r["peak_rss_mb"] for r in runs}

    result["seconds"] = round(time.perf_counter() - t_start, 1)
    result["loadavg_before"] = [round(v, 2) for v in load_before]
    result["loadavg_after"] = [round(v, 2) for v in os.getloadavg()]
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
