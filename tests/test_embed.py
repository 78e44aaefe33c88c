"""`treemap embed` end to end on the small demo world: a valid COG whose embeddings do not depend on the tile size,
PCA maps that reuse a saved projection exactly, the run's STAC item, and bad input as one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rio_cogeo.cogeo import cog_validate

from treemap.embed import EMBED_SCALE, PCA_FILE, PCA_SCALE
from treemap.pca import fit_projection, load_projection, save_projection

SCHEMAS = Path(__file__).resolve().parent / "data" / "stac-schemas"
WINDOW = ("--start", "2022-04-01", "--end", "2022-09-30")


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "treemap", "-q", *map(str, args)], capture_output=True, text=True,
                          timeout=600)


def embed(world, aoi, out, *extra):
    proc = run_cli("embed", "--aoi", aoi, "--catalog", world.catalog, *WINDOW, "--model", "demo", "--device", "cpu",
                   "--out", out, "--json", *extra)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def read(path: Path) -> tuple[np.ndarray, rasterio.profiles.Profile, list]:
    """The bands as float64 in their units (scale applied), NaN for nodata."""
    with rasterio.open(path) as ds:
        raw = ds.read()
        nodata, scales, descriptions = ds.nodata, ds.scales, ds.descriptions
        profile = ds.profile
    values = raw.astype(np.float64) * np.asarray(scales)[:, None, None]
    values[raw == nodata if not np.isnan(nodata) else np.isnan(raw)] = np.nan
    return values, profile, list(descriptions)


@pytest.fixture(scope="module")
def full(small_world, embed_aoi, tmp_path_factory):
    out = tmp_path_factory.mktemp("embed-full")
    return embed(small_world, embed_aoi, out, "--tile-size", "64"), out


def test_the_embedding_map_is_a_valid_cog_of_unit_vectors_with_a_valid_item(full):
    from treemap.item_validation import validate_run_item

    summary, out = full
    path = out / "embedding.tif"
    assert summary["products"] == {"embedding": str(path)} and summary["bands"] == 64 and summary["pca"] is None
    assert cog_validate(str(path))[0]
    values, profile, descriptions = read(path)
    assert profile["dtype"] == "int16" and profile["nodata"] == -32768 and descriptions[:2] == ["emb000", "emb001"]
    covered = np.isfinite(values).all(axis=0)
    assert (np.isfinite(values).any(axis=0) == covered).all()  # a pixel has all bands or none
    assert covered.mean() > 0.8
    norms = np.linalg.norm(values[:, covered], axis=0)
    assert np.abs(norms - 1).max() < 64 * EMBED_SCALE
    validate_run_item(out / "item.json", SCHEMAS)
    item = json.loads((out / "item.json").read_text())
    assert item["properties"]["treemap:job"] == "embed"
    assert not any(p.name.startswith(".") for p in out.iterdir())


def test_embeddings_agree_whatever_the_tile_size_and_the_storage(full, small_world, embed_aoi, tmp_path):
    """32 px tiles (2 x 3, so seams cross the AOI) against one 64 px tile, and float32 storage against int16."""
    _, out64 = full
    a, _, _ = read(out64 / "embedding.tif")
    embed(small_world, embed_aoi, tmp_path / "t32", "--tile-size", "32", "--float32")
    b, profile, _ = read(tmp_path / "t32" / "embedding.tif")
    assert profile["dtype"] == "float32" and np.isnan(profile["nodata"])
    assert (np.isnan(a) == np.isnan(b)).all()
    ok = np.isfinite(a)
    # int16 rounding (half a step) plus float32 differences of the batched matmuls
    assert np.abs(a[ok] - b[ok]).max() <= EMBED_SCALE


def test_a_pca_map_reuses_its_saved_projection_exactly(full, small_world, embed_aoi, tmp_path):
    _, out64 = full
    first = embed(small_world, embed_aoi, tmp_path / "pca", "--tile-size", "48", "--pca", "3")
    saved = tmp_path / "pca" / PCA_FILE
    assert first["bands"] == 3 and first["pca"]["components"] == 3 and saved.is_file()
    projection = load_projection(saved)
    assert projection.checksum() == first["pca"]["checksum"] and projection.samples > 1000
    assert 0 < sum(projection.explained) < 1
    p1, _, descriptions = read(tmp_path / "pca" / "embedding.tif")
    assert descriptions == ["pc1", "pc2", "pc3"]
    item = json.loads((tmp_path / "pca" / "item.json").read_text())
    assert item["assets"]["pca"]["href"] == f"./{PCA_FILE}"
    # the full embedding map, projected here, gives the PCA map
    full_values, _, _ = read(out64 / "embedding.tif")
    ok = np.isfinite(full_values).all(axis=0)
    projected = projection.apply(full_values[:, ok].T).T
    assert np.abs(projected - p1[:, ok]).max() <= 3 * PCA_SCALE
    # another run, other tiles, the saved projection: the same map and the same projection file
    embed(small_world, embed_aoi, tmp_path / "again", "--tile-size", "32", "--pca-from", saved)
    p2, _, _ = read(tmp_path / "again" / "embedding.tif")
    assert (np.isnan(p1) == np.isnan(p2)).all()
    assert np.abs(p1[np.isfinite(p1)] - p2[np.isfinite(p2)]).max() <= PCA_SCALE
    assert load_projection(tmp_path / "again" / PCA_FILE).checksum() == projection.checksum()


def test_bad_embed_input_is_one_line_and_writes_nothing(small_world, embed_aoi, tmp_path):
    def fails(fragment, *extra):
        out = tmp_path / "out"
        proc = run_cli("embed", "--aoi", embed_aoi, "--catalog", small_world.catalog, *WINDOW, "--model", "demo",
                       "--out", out, *extra)
        assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
        lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
        assert len(lines) == 1 and fragment in lines[0], proc.stderr
        assert not (out / "embedding.tif").exists()

    fails("projection file not found", "--pca-from", tmp_path / "missing.safetensors")
    fails("exclude each other", "--pca", "2", "--pca-from", tmp_path / "missing.safetensors")
    fails("only 64 dimensions", "--pca", "65")
    foreign = save_projection(fit_projection(np.random.default_rng(0).normal(size=(100, 64)), 2, "f" * 64),
                              tmp_path / "foreign.safetensors")
    fails("another model", "--pca-from", foreign)
    narrow = save_projection(fit_projection(np.random.default_rng(0).normal(size=(100, 8)), 2, ""),
                             tmp_path / "narrow.safetensors")
    fails("8-dim", "--pca-from", narrow)
    fails("Invalid value for '--encoder'", "--encoder", "bogus")
