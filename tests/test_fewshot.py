"""End to end: `treemap fewshot` from labelled GeoJSON points on a demo world, then `treemap predict --head --top-k`.

The model is the shipped demo model trained without two species (``train.demo_model.HELD_OUT``): zero-shot it
cannot name them; a head fitted on a few labelled points per species can.
"""

import json
import shutil
import subprocess
import sys
from importlib import resources

import numpy as np
import pytest
import rasterio
from rasterio.windows import from_bounds
from rio_cogeo.cogeo import cog_validate
from shapely.geometry import Point, box

from treemap.grid import to_crs
from treemap.heads import load_head
from treemap.outputs import NODATA_U8

HELD_OUT = ("Carpinus betulus", "Larix decidua")
PER_SPECIES = 12


def _treemap(*args, timeout=900):
    return subprocess.run([sys.executable, "-m", "treemap", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def heldout_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    ref = resources.files("treemap.data") / "models" / "demo-tiny-heldout.safetensors"
    with resources.as_file(ref) as src:
        shutil.copyfile(src, folder / "heldout.safetensors")
    return folder / "heldout.safetensors"


@pytest.fixture(scope="module")
def world_truth(small_world):
    classes = json.loads(small_world.classes.read_text())
    with rasterio.open(small_world.truth_species) as ds:
        return ds.read(1), ds.transform, ds.crs.to_epsg(), classes


@pytest.fixture(scope="module")
def points(world_truth, tmp_path_factory):
    """A few labelled points per tree species, from the left half of the world (the map is scored on the right)."""
    codes, transform, epsg, classes = world_truth
    rng = np.random.default_rng(3)
    feats = []
    for code, c in classes.items():
        if c["kind"] != "tree":
            continue
        rows, cols = np.nonzero(codes[:, : codes.shape[1] // 2] == int(code))
        for i in rng.choice(rows.size, min(PER_SPECIES, rows.size), replace=False):
            x, y = transform * (cols[i] + 0.5, rows[i] + 0.5)
            p = to_crs(Point(x, y), 4326, src_epsg=epsg)
            feats.append({"type": "Feature", "geometry": {"type": "Point", "coordinates": [p.x, p.y]},
                          "properties": {"species": c["name"]}})
    path = tmp_path_factory.mktemp("points") / "labels.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    return path


@pytest.fixture(scope="module")
def head(small_world, heldout_model, points):
    taxonomy = resources.files("treemap.data") / "species" / "demo.csv"
    with resources.as_file(taxonomy) as tax:
        proc = _treemap("fewshot", "--points", points, "--model", heldout_model, "--catalog", small_world.catalog,
                        "--year", 2022, "--taxonomy", tax, "--head", "linear", "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_head_saved_beside_the_model(head, heldout_model):
    assert head["head"] == str(heldout_model.with_name("heldout.head-linear.safetensors"))
    loaded = load_head(head["head"])
    assert set(HELD_OUT) <= set(loaded.species.species) and len(loaded.species) == 10
    assert head["samples"] >= 9 * PER_SPECIES and head["cv_top1"] > 3 * head["majority_baseline"]


@pytest.fixture(scope="module")
def mapped(small_world, heldout_model, head, tmp_path_factory):
    spec = small_world.spec
    half = spec.width_px * 10.0 / 2
    local = box(spec.x_min + half + 20, spec.y_max - spec.height_px * 10.0 + 20, spec.x_min + 2 * half - 20,
                spec.y_max - 20)
    aoi = tmp_path_factory.mktemp("aoi") / "right.geojson"
    aoi.write_text(json.dumps({"type": "Feature", "properties": {},
                               "geometry": to_crs(local, 4326, src_epsg=spec.epsg).__geo_interface__}))
    out = tmp_path_factory.mktemp("mapped")
    runs = {}
    for name, extra in (("head", ["--head", head["head"], "--top-k", 3]), ("zero", ["--species", "demo"])):
        proc = _treemap("predict", "--aoi", aoi, "--catalog", small_world.catalog, "--model", heldout_model,
                        "--year", 2022, "--out", out / name, *extra)
        assert proc.returncode == 0, proc.stderr
        runs[name] = out / name
    return runs


def test_head_names_species_the_model_never_saw(mapped, small_world, world_truth):
    codes, _, _, classes = world_truth
    accuracy = {}
    for name, folder in mapped.items():
        with rasterio.open(folder / "dominant_species.tif") as ds:
            pred = ds.read(1)
            names = [ds.tags(1)[f"CLASS_{i}"] for i in range(10)]
            bounds = ds.bounds
        with rasterio.open(small_world.truth_species) as ds:
            window = from_bounds(*bounds, transform=ds.transform).round_offsets().round_lengths()
            truth = ds.read(1, window=window)
        by_code = {int(k): c["name"] for k, c in classes.items() if c["kind"] == "tree"}
        held = np.isin(truth, [k for k, v in by_code.items() if v in HELD_OUT]) & (pred != NODATA_U8)
        assert held.sum() > 50
        hit = np.array([names[p] == by_code[t] for p, t in zip(pred[held], truth[held])])
        accuracy[name] = hit.mean()
    assert accuracy["zero"] < 0.05 and accuracy["head"] > 0.3, accuracy  # chance: 0.1


def test_top_k_product(mapped):
    folder = mapped["head"]
    ok, errors, _ = cog_validate(str(folder / "top_species.tif"))
    assert ok, errors
    with rasterio.open(folder / "top_species.tif") as ds:
        assert ds.count == 6
        assert ds.descriptions[:3] == ("rank 1 species", "rank 2 species", "rank 3 species")
        assert ds.scales[3:] == (0.005,) * 3
        top = ds.read()
    with rasterio.open(folder / "dominant_species.tif") as ds:
        dominant = ds.read(1)
    with rasterio.open(folder / "species_probability.tif") as ds:
        probs = ds.read()
    mapped_px = dominant != NODATA_U8
    assert mapped_px.mean() > 0.5
    assert np.array_equal(top[0][mapped_px], dominant[mapped_px])
    assert np.all(top[:3][:, ~mapped_px] == NODATA_U8)
    p = top[3:].astype(int)
    assert np.all(np.diff(p[:, mapped_px], axis=0) <= 0)  # most probable first
    ranks = np.take_along_axis(probs, top[:3].astype(np.int64) % probs.shape[0], axis=0)
    assert np.array_equal(ranks[:, mapped_px], top[3:][:, mapped_px])  # rank probabilities are the species bands'
    assert len({tuple(c) for c in top[:3][:, mapped_px].T[:100]}) > 1
    assert all(len(set(c)) == 3 for c in top[:3][:, mapped_px].T)  # three different species


def test_head_misuse_is_a_one_line_error(small_world, head, tmp_path):
    aoi = tmp_path / "aoi.geojson"
    spec = small_world.spec
    local = box(spec.x_min + 100, spec.y_max - 400, spec.x_min + 400, spec.y_max - 100)
    aoi.write_text(json.dumps(to_crs(local, 4326, src_epsg=spec.epsg).__geo_interface__))
    proc = _treemap("predict", "--aoi", aoi, "--catalog", small_world.catalog, "--model", "demo", "--head",
                    head["head"], "--year", 2022, "--out", tmp_path / "o")
    assert proc.returncode == 2 and "fitted on another model" in proc.stderr and "Traceback" not in proc.stderr
    proc = _treemap("fewshot", "--points", tmp_path / "none.geojson", "--model", "demo", "--catalog",
                    small_world.catalog, "--out", tmp_path / "h.safetensors")
    assert proc.returncode == 2 and "does not exist" in proc.stderr and "Traceback" not in proc.stderr
    bad = tmp_path / "lines.geojson"
    bad.write_text(json.dumps({"type": "Feature", "properties": {"species": "x"},
                               "geometry": {"type": "LineString", "coordinates": [[0, 0], [1, 1]]}}))
    proc = _treemap("fewshot", "--points", bad, "--model", "demo", "--catalog", small_world.catalog, "--out",
                    tmp_path / "h.safetensors")
    assert proc.returncode == 2 and "not a Point" in proc.stderr and not (tmp_path / "h.safetensors").exists()
