"""End to end: `treemap phenology` on a small demo world, checked against the world's planted truth, with GDAL."""

import json
import subprocess
import sys
from datetime import date

import numpy as np
import pytest
import rasterio
from rasterio.windows import from_bounds
from rio_cogeo.cogeo import cog_validate
from shapely.geometry import box

from treemap.grid import to_crs
from treemap.outputs import NODATA_I16
from treemap.phenology import METRIC_NAMES, SEASONS
from treemap.phenology_run import WORK_DIR, encode_metrics, search_window

#: The acceptance bounds (days) of the phenology product against the planted truth.
BOUNDS = {"greenup": 3.5, "dormancy": 3.5, "maturity": 4.0, "senescence": 4.0}
TRUTH_NODATA = -32767


def _treemap(*args, timeout=900):
    return subprocess.run([sys.executable, "-m", "treemap", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def aoi(small_world, tmp_path_factory):
    spec = small_world.spec
    pad = 30.0
    local = box(spec.x_min + pad, spec.y_max - spec.height_px * 10.0 + pad,
                spec.x_min + spec.width_px * 10.0 - pad, spec.y_max - pad)
    path = tmp_path_factory.mktemp("aoi") / "aoi.geojson"
    path.write_text(json.dumps({"type": "Feature", "properties": {},
                                "geometry": to_crs(local, 4326, src_epsg=spec.epsg).__geo_interface__}))
    return path


@pytest.fixture(scope="module")
def run(small_world, aoi, tmp_path_factory):
    out = tmp_path_factory.mktemp("phenology") / "out"
    proc = _treemap("phenology", "--aoi", aoi, "--catalog", small_world.catalog, "--year", 2022, "--out", out,
                    "--tile-size", 100, "--seasonal", "--keep-work")
    assert proc.returncode == 0, proc.stderr
    return proc, out


def _truth_on(product, truth_tif, bands=None):
    with rasterio.open(product) as ds:
        bounds = ds.bounds
    with rasterio.open(truth_tif) as ds:
        window = from_bounds(*bounds, transform=ds.transform).round_offsets().round_lengths()
        return ds.read(bands, window=window)


def test_products_listed_and_valid(run):
    proc, out = run
    assert proc.stdout.split() == [str(out / "phenology.tif"), str(out / "seasonal_composites.tif")]
    for name in ("phenology.tif", "seasonal_composites.tif"):
        valid, errors, _ = cog_validate(str(out / name))
        assert valid, errors
    assert not list(out.glob(".*tmp*"))
    info = json.loads(subprocess.run(["gdalinfo", "-json", str(out / "phenology.tif")], capture_output=True,
                                     text=True, check=True).stdout)
    assert [b["description"] for b in info["bands"]] == list(METRIC_NAMES)
    assert {b["type"] for b in info["bands"]} == {"Int16"}
    assert {b["noDataValue"] for b in info["bands"]} == {NODATA_I16}
    scales = {b["description"]: b.get("scale", 1.0) for b in info["bands"]}
    assert scales["amplitude"] == pytest.approx(1e-4) and scales["greenup"] == 1.0
    assert info["metadata"][""]["TREEMAP_YEAR"] == "2022"
    with rasterio.open(out / "seasonal_composites.tif") as ds:
        assert ds.count == 40 and ds.descriptions[0] == f"{SEASONS[0]} B02"


def test_recovers_planted_phenology(run, small_world):
    _, out = run
    with rasterio.open(out / "phenology.tif") as ds:
        est = ds.read().astype(np.float64)
    truth = _truth_on(out / "phenology.tif", small_world.truth_phenology).astype(np.float64)
    assert truth.shape[1:] == est.shape[1:]
    has_truth = truth[0] != TRUTH_NODATA
    assert has_truth.sum() > 5000
    defined = has_truth & (est[0] != NODATA_I16) & (est[6] != NODATA_I16)
    assert defined.sum() / has_truth.sum() > 0.95
    for name, bound in BOUNDS.items():
        i = METRIC_NAMES.index(name)
        mae = np.abs(est[i][defined] - truth[i][defined]).mean()
        assert mae <= bound, (name, mae)
    # classes without a vegetation cycle (water 101, built-up 104) get no dates, QA "no cycle"
    qa = est[METRIC_NAMES.index("qa")]
    species = _truth_on(out / "phenology.tif", small_world.truth_species, 1)
    bare = np.isin(species, [101, 104]) & (qa != NODATA_I16)
    assert bare.sum() > 100
    assert np.mean(est[0][bare] == NODATA_I16) > 0.95 and np.mean(qa[bare] == 2) > 0.95


def test_seasonal_composites_follow_the_seasons(run, small_world):
    _, out = run
    with rasterio.open(out / "seasonal_composites.tif") as ds:
        comp = ds.read(masked=True).astype(np.float64).filled(np.nan) * 1e-4
    with rasterio.open(out / "phenology.tif") as ds:
        qa = ds.read(METRIC_NAMES.index("qa") + 1)
    species = _truth_on(out / "phenology.tif", small_world.truth_species, 1)
    deciduous = np.isin(species, [3, 4, 5, 6, 7, 8, 9]) & (qa == 0)  # larch and broadleaves
    assert deciduous.sum() > 500
    nir = comp.reshape(4, 10, *comp.shape[1:])[:, 6]  # B08
    summer, winter = nir[1][deciduous], nir[3][deciduous]
    both = np.isfinite(summer) & np.isfinite(winter)
    assert both.mean() > 0.9
    assert np.median(summer[both] - winter[both]) > 0.1


def test_pixels_outside_the_aoi_are_nodata_and_work_is_resumable(run, aoi, small_world):
    proc, out = run
    with rasterio.open(out / "phenology.tif") as ds:
        qa = ds.read(METRIC_NAMES.index("qa") + 1)
    assert (qa == NODATA_I16).any() and (qa != NODATA_I16).mean() > 0.8
    work = next((out / WORK_DIR).iterdir())
    done = sorted(work.glob("*.done"))
    assert len(done) > 1
    record = json.loads(done[0].read_text())
    assert record["dates"] > 50 and sum(record["qa"]) > 0
    # a second run with the same request resumes every tile from the work folder
    again = _treemap("phenology", "--aoi", aoi, "--catalog", small_world.catalog, "--year", 2022, "--out", out,
                     "--tile-size", 100, "--seasonal", "--json")
    assert again.returncode == 0, again.stderr
    assert again.stderr.count("already done") == len(done)
    summary = json.loads(again.stdout)
    assert summary["year"] == 2022 and summary["qa_counts"]["good"] > 0
    assert not (out / WORK_DIR / work.name).exists()


def test_bad_input_one_line_errors(small_world, aoi, tmp_path):
    out = tmp_path / "out"
    proc = _treemap("phenology", "--aoi", aoi, "--catalog", small_world.catalog, "--year", 2016, "--out", out)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("treemap: error: no Sentinel-2 L2A scenes")
    assert "Traceback" not in proc.stderr and not list(out.glob("*.tif"))
    proc = _treemap("phenology", "--aoi", aoi, "--catalog", small_world.catalog, "--out", out)
    assert proc.returncode == 2 and "--year" in proc.stderr and "Traceback" not in proc.stderr
    proc = _treemap("phenology", "--aoi", aoi, "--year", 2022, "--index", "savi", "--out", out)
    assert proc.returncode == 2 and "savi" in proc.stderr and "Traceback" not in proc.stderr


def test_search_window_and_encoding():
    assert search_window(2022, 183) == (date(2021, 7, 2), date(2023, 7, 2))
    names = ("greenup", "peak", "dormancy", "amplitude", "qa")
    data = np.array([100.2, 180.5, 300.8, 0.43215, 0.0, np.nan])  # the rounding of each kind of band
    enc = encode_metrics(np.stack([data] * len(names))[:, None, :], names)[:, 0]
    assert enc[0, :3].tolist() == [101, 181, 301]  # green-up side: first whole day at or above
    assert enc[2, :3].tolist() == [100, 180, 300]  # green-down side: last whole day at or above
    assert enc[1, 1] in (180, 181) and enc[3, 3] == 4322 and enc[4, 4] == 0
    assert (enc[:, 5] == NODATA_I16).all()


def test_phenology_never_imports_torch(small_world, aoi, tmp_path):
    """A phenology run in a fresh interpreter leaves torch (and the model stack) unimported."""
    code = (
        "import sys\n"
        "from treemap.phenology_run import PhenologyRequest, run_phenology\n"
        f"run_phenology(PhenologyRequest(aoi={str(aoi)!r}, out={str(tmp_path / 'o')!r}, year=2022, "
        f"catalog={str(small_world.catalog)!r}, tile_size=100, workers=1))\n"
        "loaded = sorted(m for m in sys.modules if m == 'torch' or m.startswith(('torch.', 'treemap.models', "
        "'treemap.infer')))\n"
        "print(loaded)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
    assert (tmp_path / "o" / "phenology.tif").exists()
