"""`treemap predict --head H --model SECO` with a head fitted on SeCo-Eco features (treemap/predict_seco.py).

The map's cells are the cells of `treemap embed --encoder seco-eco` with the head's recipe, so each cell's
probabilities must be the head applied to that cell of an embedding map made separately; the tree mask of a cell is
the majority of its 10 m pixels. The model is the tiny random SeCo-Eco of the `seco_model` fixture: what is tested is
the mapping, not the accuracy.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
import torch
from rasterio.warp import Resampling, reproject
from rio_cogeo.cogeo import cog_validate

from test_embed import read, run_cli
from treemap.heads import load_head
from treemap.outputs import PROB_SCALE
from treemap.predict_seco import cell_tree_mask, seco_year
from treemap.treemask import NODATA, NOT_TREE, TREE

PRODUCTS = {"species_probability", "genus_probability", "family_probability", "leaf_type_probability",
            "dominant_species", "uncertainty", "tree_mask"}


def test_a_cell_is_tree_where_most_of_its_decided_pixels_are():
    fine = np.full((4, 8), TREE, dtype=np.uint8)
    # cell (0, 1): 1 tree, 3 not; cell (1, 1): 2 tree, 1 not, 1 undecided
    fine[:, 2:4] = [[TREE, NOT_TREE], [NOT_TREE, NOT_TREE], [TREE, NOT_TREE], [TREE, NODATA]]
    fine[0, 4:6] = NODATA  # cell (0, 2): 2 tree, 2 undecided -> half decided: tree
    fine[0:2, 6:8] = [[NODATA, NODATA], [NODATA, NOT_TREE]]  # one decided pixel of four: no decision
    got = cell_tree_mask(fine, 2)
    assert got.tolist() == [[TREE, NOT_TREE, TREE, NODATA], [TREE, TREE, TREE, TREE]]


def test_one_phenological_year():
    from datetime import date

    from treemap.errors import DateRangeError

    assert seco_year(None, None, 2022) == 2022
    assert seco_year(date(2021, 1, 1), date(2021, 12, 31), 2022) == 2021
    with pytest.raises(DateRangeError):
        seco_year(date(2021, 6, 1), date(2022, 5, 31), 2022)


@pytest.fixture(scope="module")
def runs(small_world, embed_aoi, seco_model, seco_head, seco_float_map, tmp_path_factory):
    """predict with the head (land-cover mask, 2 x 2 tiles) and the float32 embedding map of the same cells made
    separately (`seco_float_map`, one tile)."""
    proc, summary = seco_head
    assert proc.returncode == 0, proc.stderr
    pred = tmp_path_factory.mktemp("seco-predict")
    p = run_cli("predict", "--aoi", embed_aoi, "--catalog", small_world.catalog, "--year", "2022", "--model",
                seco_model, "--head", summary["head"], "--mask", small_world.landcover,
                "--tile-size", "48", "--top-k", "2", "--device", "cpu", "--out", pred, "--json")
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout), pred, seco_float_map[1], load_head(summary["head"])


def test_products_are_cogs_on_the_heads_cell_grid_with_its_recipe(runs):
    from treemap.item_validation import validate_run_item

    from test_embed import SCHEMAS

    summary, pred, _, head = runs
    assert set(summary["products"]) == PRODUCTS | {"top_species"}
    assert summary["species"] == list(head.species.species)
    for path in summary["products"].values():
        assert cog_validate(path)[0], path
    with rasterio.open(pred / "species_probability.tif") as ds:
        t, tags = ds.transform, ds.tags()
        assert ds.count == len(head.species)
    assert (t.a, -t.e) == (80.0, 80.0) and t.c % 80 == 0 and t.f % 80 == 0
    assert tags["TREEMAP_ENCODER"] == "seco-eco" and tags["TREEMAP_STRIDE"] == "8"
    assert tags["TREEMAP_PHENOLOGY_YEAR"] == "2022" and tags["TREEMAP_SEASON"] == "mean"
    assert (pred / "quicklook.png").stat().st_size > 1000
    validate_run_item(pred / "item.json", SCHEMAS)
    props = json.loads((pred / "item.json").read_text())["properties"]
    assert props["treemap:job"] == "predict"


def test_a_cells_probabilities_are_the_head_on_its_embedding(runs):
    _, pred, emb, head = runs
    probs, _, _ = read(pred / "species_probability.tif")
    features, _, _ = read(emb / "embedding.tif")
    with rasterio.open(pred / "tree_mask.tif") as ds:
        tree = ds.read(1)
    assert probs.shape[1:] == features.shape[1:]
    mapped = np.isfinite(probs).all(axis=0)
    embedded = np.isfinite(features).all(axis=0)
    assert mapped.sum() >= 10
    # mapped exactly where there is an embedding and the mask does not say "not tree"
    assert (mapped == (embedded & (tree != NOT_TREE))).all()
    flat = torch.from_numpy(features[:, mapped].T.astype(np.float32))
    expected = head.probabilities(flat).numpy().T
    assert np.abs(probs[:, mapped] - expected).max() <= PROB_SCALE / 2 + 1e-6
    with rasterio.open(pred / "dominant_species.tif") as ds:
        dominant = ds.read(1)
    top2 = np.sort(expected, axis=0)[-2:]
    clear = top2[1] - top2[0] > 1e-4  # leave out near ties, which float rounding may flip
    assert clear.sum() >= 10 and (dominant[mapped][clear] == expected.argmax(axis=0)[clear]).all()


def test_the_tree_mask_of_a_cell_is_the_majority_of_its_landcover_pixels(runs, small_world):
    _, pred, _, _ = runs
    with rasterio.open(pred / "tree_mask.tif") as ds:
        tree, transform, crs, shape = ds.read(1), ds.transform, ds.crs, ds.shape
    fine = np.zeros((shape[0] * 8, shape[1] * 8), dtype=np.int32)
    with rasterio.open(small_world.landcover) as src:
        reproject(rasterio.band(src, 1), fine, dst_transform=transform * transform.scale(1 / 8), dst_crs=crs,
                  resampling=Resampling.nearest)
    share = (fine == 10).reshape(shape[0], 8, shape[1], 8).mean(axis=(1, 3))
    inside = tree != NODATA
    assert inside.sum() >= 10 and (tree[inside] == TREE).any() and (tree[inside] == NOT_TREE).any()
    assert ((share >= 0.5) == (tree == TREE))[inside].all()
    with rasterio.open(pred / "species_probability.tif") as ds:
        assert (ds.read(1)[tree == NOT_TREE] == 255).all()


def test_seco_head_mistakes_are_one_line_and_write_nothing(small_world, embed_aoi, seco_model, seco_head, tmp_path):
    from treemap.models.seco import SecoConfig, random_seco, save_seco

    _, summary = seco_head
    other = save_seco(random_seco(SecoConfig.tiny(), seed=11), tmp_path / "other.safetensors")
    cases = [(("--model", "demo"), "give --model"),
             (("--model", other), "another model"),
             (("--model", seco_model, "--species", "demo"), "leave out --species"),
             (("--model", seco_model, "--start", "2021-06-01", "--end", "2022-05-31"), "one phenological year"),
             (("--model", seco_model, "--aux", small_world.aux_layers, "--year", "2022"), "no auxiliary layers")]
    for args, fragment in cases:
        out = tmp_path / "o"
        proc = run_cli("predict", "--aoi", embed_aoi, "--catalog", small_world.catalog, "--head",
                       summary["head"], "--out", out, *args)
        lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
        assert proc.returncode == 2 and len(lines) == 1 and fragment in lines[0], (args, proc.stderr)
        assert not (out / "species_probability.tif").exists()
