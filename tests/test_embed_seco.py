"""`treemap embed --encoder seco-eco` end to end on the small demo world: chip embeddings of the year's phenology
seasonal composites on an 80 m grid, the same whatever the tile size, equal to the model's features of the same
chips cut from `treemap phenology --seasonal`'s own seasonal_composites.tif, and bad input as one line.

The model (the `seco_model` fixture) is a tiny SeCo-Eco with seeded random weights: what is tested is the map's
geometry and inputs, which do not depend on what the weights learned."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rio_cogeo.cogeo import cog_validate

import treemap

from test_embed import SCHEMAS, read, run_cli
from treemap.embed import EMBED_SCALE

YEAR = ("--year", "2022")
SECO = ("--encoder", "seco-eco", "--chip", "16", "--stride", "8")


def seco_embed(world, aoi, model, out, *extra):
    proc = run_cli("embed", "--aoi", aoi, "--catalog", world.catalog, *YEAR, *SECO, "--model", model, "--device",
                   "cpu", "--out", out, "--json", *extra)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def maps(small_world, embed_aoi, seco_model, seco_float_map, tmp_path_factory):
    """The same map with 32 px (4 x 4 cells) tiles stored as int16, and 64 px tiles as float32 in one worker
    (the session's `seco_float_map`, which test_predict_seco.py uses too)."""
    a = tmp_path_factory.mktemp("seco-32")
    return (seco_embed(small_world, embed_aoi, seco_model, a, "--tile-size", "32"), a, *seco_float_map)


def test_the_map_is_a_valid_cog_on_the_stride_grid_with_its_recipe_in_the_tags(maps):
    from treemap.item_validation import validate_run_item

    summary, out, _, _ = maps
    path = out / "embedding.tif"
    assert summary["products"] == {"embedding": str(path)} and summary["bands"] == 64
    assert summary["start"] == "2021-07-02" and summary["end"] == "2023-07-02"  # the year +- 183 days
    assert cog_validate(str(path))[0]
    values, profile, descriptions = read(path)
    t = profile["transform"]
    assert (t.a, -t.e) == (80.0, 80.0) and t.c % 80 == 0 and t.f % 80 == 0  # cells on the CRS's 80 m grid
    assert profile["dtype"] == "int16" and descriptions[:2] == ["emb000", "emb001"]
    covered = np.isfinite(values).all(axis=0)
    assert (np.isfinite(values).any(axis=0) == covered).all() and covered.sum() >= 30
    norms = np.linalg.norm(values[:, covered], axis=0)
    assert np.abs(norms - 1).max() < 64 * EMBED_SCALE
    with rasterio.open(path) as ds:
        tags = ds.tags()
    assert tags["TREEMAP_ENCODER"] == "seco-eco" and tags["TREEMAP_CHIP"] == "16" and tags["TREEMAP_STRIDE"] == "8"
    assert tags["TREEMAP_SEASON"] == "mean" and tags["TREEMAP_PHENOLOGY_YEAR"] == "2022"
    assert "SeCo-Eco backbone features of 16 px chips" in tags["TREEMAP_EMBEDDING"]
    validate_run_item(out / "item.json", SCHEMAS)
    item = json.loads((out / "item.json").read_text())
    assert item["properties"]["treemap:job"] == "embed"


def test_cells_agree_whatever_the_tile_size_and_the_storage(maps):
    _, a_out, _, b_out = maps
    a, _, _ = read(a_out / "embedding.tif")
    b, profile, _ = read(b_out / "embedding.tif")
    assert profile["dtype"] == "float32"
    assert (np.isnan(a) == np.isnan(b)).all()
    ok = np.isfinite(a)
    assert np.abs(a[ok] - b[ok]).max() <= EMBED_SCALE


def test_a_cell_is_the_model_on_its_chip_of_seasonal_composites_tif(maps, small_world, embed_aoi, seco_model,
                                                                     tmp_path):
    """The chips a map encodes are those `treemap phenology --seasonal` writes for SeCo-Eco pretraining: for every
    cell whose chip lies inside the phenology run's AOI, the map's value is the model's features of that chip."""
    import torch

    from treemap.models.seco import load_seco

    proc = run_cli("phenology", "--aoi", embed_aoi, "--catalog", small_world.catalog, *YEAR, "--seasonal",
                   "--out", tmp_path)
    assert proc.returncode == 0, proc.stderr
    _, _, _, b_out = maps
    cells, profile, _ = read(b_out / "embedding.tif")
    with rasterio.open(tmp_path / "seasonal_composites.tif") as ds:
        raw = ds.read()
        seasonal = raw.astype(np.float32) * np.float32(ds.scales[0])
        seasonal[raw == ds.nodata] = np.nan
        seasonal = seasonal.reshape(4, 10, *raw.shape[1:])
        origin = ds.transform.c, ds.transform.f
    model = load_seco(seco_model)
    t = profile["transform"]
    checked = 0
    for r in range(cells.shape[1]):
        for c in range(cells.shape[2]):
            # the chip: 16 px centred on the cell, 4 px beyond its 8 px on every side
            x0, y1 = t.c + c * 80 - 40, t.f - r * 80 + 40
            col, row = round((x0 - origin[0]) / 10), round((origin[1] - y1) / 10)
            if row < 0 or col < 0 or row + 16 > seasonal.shape[2] or col + 16 > seasonal.shape[3]:
                continue
            chip = seasonal[:, :, row:row + 16, col:col + 16]
            if not np.isfinite(cells[:, r, c]).all() or np.isnan(chip).all(axis=(1, 2, 3)).any():
                continue  # outside the AOI of one run or the other
            complete = np.isfinite(chip).all(axis=1).mean(axis=(1, 2)) >= 0.5
            with torch.no_grad():
                features = model.features(torch.from_numpy(chip[complete])).numpy()
            expected = features.mean(axis=0)
            expected /= np.linalg.norm(expected)
            np.testing.assert_allclose(cells[:, r, c], expected, atol=2e-5)
            checked += 1
    assert checked >= 4


def test_bad_seco_input_is_one_line_and_writes_nothing(small_world, embed_aoi, seco_model, tmp_path):
    def fails(fragment, *args):
        out = tmp_path / "out"
        proc = run_cli("embed", "--aoi", embed_aoi, "--catalog", small_world.catalog, "--encoder", "seco-eco",
                       "--out", out, *args)
        assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
        lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
        assert len(lines) == 1 and fragment in lines[0], proc.stderr
        assert not (out / "embedding.tif").exists()

    fails("needs --model", *YEAR)
    fails("give --year, not --start/--end", "--model", seco_model, "--start", "2022-01-01", "--end", "2022-12-31")
    fails("--season", "--model", seco_model, *YEAR, "--season", "summer")
    fails("no auxiliary layers", "--model", seco_model, *YEAR, "--aux", tmp_path / "layers.yaml")
    fails("not found", "--model", tmp_path / "missing.safetensors", *YEAR)
    geotreeclip = Path(treemap.__file__).parent / "data" / "models" / "demo-tiny.safetensors"
    fails("without a SeCo-Eco card", "--model", geotreeclip, *YEAR)


def test_fewshot_features_at_a_point_are_its_map_cell(maps, small_world, seco_model, tmp_path, monkeypatch):
    """`treemap fewshot --encoder seco-eco` encodes a point as the cell that contains it: the same vector as the map;
    a second time from the cache, without reading imagery, to the same bits."""
    import treemap.fewshot_seco as fewshot_seco

    from pyproj import Transformer

    from treemap.embed_seco import SecoEmbedSpec
    from treemap.fewshot_seco import point_features
    from treemap.models.seco import load_seco
    from treemap.points import Point
    from treemap.stac import open_catalog

    _, _, _, b_out = maps
    cells, profile, _ = read(b_out / "embedding.tif")
    t = profile["transform"]
    ok = np.argwhere(np.isfinite(cells).all(axis=0))
    picks = ok[np.linspace(0, len(ok) - 1, 3).round().astype(int)]
    to_lonlat = Transformer.from_crs(profile["crs"], 4326, always_xy=True)
    points = []
    for n, (r, c) in enumerate(picks):
        # somewhere inside the cell, not its centre
        x, y = t * (c + 0.3, r + 0.8)
        lon, lat = to_lonlat.transform(x, y)
        points.append(Point(n + 1, f"p{n}", lon, lat, 2022, (("level3_species", "x"),)))
    monkeypatch.setenv("TREEMAP_CACHE", str(tmp_path / "cache"))
    model, catalog = load_seco(seco_model), open_catalog(str(small_world.catalog))
    features, used, skipped = point_features(points, catalog, SecoEmbedSpec(), model)
    assert used == [0, 1, 2] and not skipped
    for (r, c), f in zip(picks, features):
        np.testing.assert_allclose(f, cells[:, r, c], atol=2e-5)

    assert len(list((tmp_path / "cache" / "fewshot-seco").glob("*.npz"))) == 3

    def no_reads(*args):
        raise AssertionError("imagery read although the cells are cached")

    monkeypatch.setattr(fewshot_seco, "seco_tile_read", no_reads)
    again, used, _ = point_features(points, catalog, SecoEmbedSpec(season=1), model)  # another season: same chips
    assert used == [0, 1, 2]
    cached, _, _ = point_features(points, catalog, SecoEmbedSpec(), model)
    assert np.array_equal(cached, features) and not np.array_equal(again, features)
    with pytest.raises(AssertionError, match="imagery read"):  # another index is another key
        point_features(points[:1], catalog, SecoEmbedSpec(index="ndvi"), model)
