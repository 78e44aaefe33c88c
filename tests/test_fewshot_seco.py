"""`treemap fewshot --encoder seco-eco` on the small demo world: a head on SeCo-Eco features of the labelled
points' cells, saved with the recipe of those features; predict refuses it with one line. (That a point's features
equal its cell in an embedding map is tested in test_embed_seco.py.)"""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import resources

import numpy as np
import pytest
import rasterio
from shapely.geometry import Point, box

from treemap.grid import to_crs
from treemap.heads import load_head

PER_SPECIES = 2


def _treemap(*args):
    return subprocess.run([sys.executable, "-m", "treemap", *map(str, args)], capture_output=True, text=True,
                          timeout=900)


@pytest.fixture(scope="module")
def points(small_world, tmp_path_factory):
    classes = json.loads(small_world.classes.read_text())
    with rasterio.open(small_world.truth_species) as ds:
        codes, transform, epsg = ds.read(1), ds.transform, ds.crs.to_epsg()
    rng = np.random.default_rng(5)
    feats = []
    for code, c in classes.items():
        if c["kind"] != "tree":
            continue
        rows, cols = np.nonzero(codes == int(code))
        for i in rng.choice(rows.size, min(PER_SPECIES, rows.size), replace=False):
            p = to_crs(Point(*(transform * (cols[i] + 0.5, rows[i] + 0.5))), 4326, src_epsg=epsg)
            feats.append({"type": "Feature", "geometry": {"type": "Point", "coordinates": [p.x, p.y]},
                          "properties": {"species": c["name"]}})
    path = tmp_path_factory.mktemp("seco-points") / "labels.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    return path, len(feats)


def test_a_seco_head_is_fitted_saved_with_its_recipe_and_refused_by_predict(small_world, seco_model, points,
                                                                           tmp_path):
    path, n = points
    taxonomy = resources.files("treemap.data") / "species" / "demo.csv"
    with resources.as_file(taxonomy) as tax:
        proc = _treemap("fewshot", "--encoder", "seco-eco", "--points", path, "--model", seco_model, "--catalog",
                        small_world.catalog, "--year", 2022, "--taxonomy", tax, "--kind", "prototype",
                        "--season", "mean", "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["head"] == str(seco_model.with_name("seco.head-prototype.safetensors"))
    assert summary["samples"] + summary["skipped_points"] == n and summary["samples"] >= n - 2
    assert len(summary["species"]) == 10 and 0 <= summary["cv_top1"] <= 1
    head = load_head(summary["head"])
    assert head.embed_dim == 64 and head.encoder_name == "seco-eco"
    assert head.encoder == {"encoder": "seco-eco", "chip": 16, "stride": 8, "season": "mean", "index": "evi",
                            "min_valid": 0.5}

    aoi = tmp_path / "aoi.geojson"
    spec = small_world.spec
    aoi.write_text(json.dumps(to_crs(box(spec.x_min + 100, spec.y_max - 400, spec.x_min + 400, spec.y_max - 100),
                                     4326, src_epsg=spec.epsg).__geo_interface__))
    proc = _treemap("-q", "predict", "--aoi", aoi, "--catalog", small_world.catalog, "--model", "demo", "--head",
                    summary["head"], "--year", 2022, "--out", tmp_path / "o")
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "fitted on seco-eco features" in lines[0], proc.stderr
    assert not (tmp_path / "o" / "species_probability.tif").exists()


def test_seco_fewshot_mistakes_are_one_line(small_world, seco_model, points, tmp_path):
    path, _ = points
    for args, fragment in [(("--model", "demo"), "needs --model"),
                           (("--model", seco_model, "--season", "winter"), "--season"),
                           (("--model", seco_model, "--aux", tmp_path / "a.yaml"), "no auxiliary layers")]:
        proc = _treemap("fewshot", "--encoder", "seco-eco", "--points", path, "--catalog", small_world.catalog,
                        "--year", 2022, "--out", tmp_path / "h.safetensors", *args)
        lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
        assert proc.returncode == 2 and len(lines) == 1 and fragment in lines[0], proc.stderr
        assert not (tmp_path / "h.safetensors").exists()
