"""Provider adapters over the real item files (Earth Search v1 and c1, Planetary Computer) and a hand-made
Copernicus Data Space item: normalised records, the offset decision per item, harmonised reflectance, exact grids,
and Planetary Computer signing."""

from __future__ import annotations

import copy
import json
import logging
import subprocess
import sys
from datetime import date
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.shutil
from rasterio.transform import from_origin

from treemap.composite import harmonise
from treemap.cube import TileCube
from treemap.errors import CatalogError
from treemap.grid import Tile
from treemap.stac import BANDS, SCL, Query, open_catalog
from treemap.stac.scene import ItemError, normalise_item
from treemap.stac.search import ApiCatalog

DATA = Path(__file__).resolve().parents[1] / "data" / "stac-items"
FILES = {
    "earth-search-v1": DATA / "earth-search_sentinel-2-l2a.json",
    "earth-search-c1": DATA / "earth-search_sentinel-2-c1-l2a.json",
    "planetary-computer": DATA / "planetarycomputer_sentinel-2-l2a.json",
    "cdse": DATA / "cdse_sentinel-2-l2a.json",
}
ALL = set(BANDS) | {SCL}


def features(provider: str) -> list[dict]:
    return json.loads(FILES[provider].read_text())["features"]


def full_items(provider: str) -> list[dict]:
    """Items with assets (the c1 file also holds id/datetime-only stubs)."""
    return [f for f in features(provider) if f.get("assets")]


# --- normalised records ----------------------------------------------------------------------------------------------

EXPECTED = {
    # provider: (n full items, href suffix, offset per baseline rule, collection)
    "earth-search-v1": (7, ".tif", "sentinel-2-l2a"),
    "earth-search-c1": (6, ".tif", "sentinel-2-c1-l2a"),
    "planetary-computer": (33, ".tif", "sentinel-2-l2a"),
    "cdse": (2, ".jp2", "sentinel-2-l2a"),
}


@pytest.mark.parametrize("provider", sorted(FILES))
def test_every_item_normalises_to_a_complete_record(provider, caplog):
    count, suffix, collection = EXPECTED[provider]
    items = full_items(provider)
    assert len(items) == count
    caplog.set_level(logging.WARNING, logger="treemap")
    for item in items:
        scene = normalise_item(item)
        record = scene.to_record()
        props = item["properties"]
        assert record["id"] == item["id"]
        assert record["datetime"].replace("Z", "+00:00")[:19] == props["datetime"][:19]
        assert record["cloud_cover"] == props["eo:cloud_cover"]
        assert set(record["bands"]) == ALL
        assert all(h.split("?")[0].endswith(suffix) for h in record["bands"].values())
        # CRS from proj:epsg (Earth Search, PC) or proj:code on the assets (CDSE)
        code = props.get("proj:epsg") or int(item["assets"]["B04_10m"]["proj:code"].split(":")[1])
        assert record["epsg"] == code
        # MGRS tile from s2:mgrs_tile (PC), mgrs:* (Earth Search) or grid:code (CDSE); always in the item id
        assert record["mgrs_tile"] and record["mgrs_tile"] in item["id"]
        assert record["collection"] == collection
        # the offset decision: baseline 04.00 and later carry +1000 DN
        assert record["scale"] == 0.0001
        assert record["offset"] == (-0.1 if float(record["processing_baseline"]) >= 4 else 0.0)
    assert not [r for r in caplog.records if "disagrees" in r.message], "real items agree with their baseline"


def test_known_records():
    """A few records written out in full, from each provider."""
    es = normalise_item(features("earth-search-v1")[0]).to_record()
    assert {k: es[k] for k in ("id", "datetime", "cloud_cover", "mgrs_tile", "epsg", "scale", "offset",
                               "processing_baseline")} == {
        "id": "S2B_20EPT_20250731_0_L2A", "datetime": "2025-07-31T13:19:22.930000Z", "cloud_cover": 26.02542,
        "mgrs_tile": "20EPT", "epsg": 32720, "scale": 0.0001, "offset": -0.1, "processing_baseline": "05.11"}
    assert es["bands"]["B8A"].endswith("/B8A.tif") and es["bands"]["SCL"].endswith("/SCL.tif")

    pc = normalise_item(features("planetary-computer")[0]).to_record()
    assert (pc["mgrs_tile"], pc["epsg"], pc["offset"], pc["processing_baseline"]) == ("60VUK", 32660, 0.0, "02.12")
    assert pc["bands"]["B8A"].endswith("_B8A_20m.tif") and pc["bands"]["B02"].endswith("_B02_10m.tif")

    cdse = [normalise_item(f).to_record() for f in features("cdse")]
    assert [(r["processing_baseline"], r["offset"], r["epsg"], r["mgrs_tile"]) for r in cdse] == [
        ("05.10", -0.1, 32633, "33UUP"), ("03.01", 0.0, 32633, "33UUP")]
    # the native-resolution asset of each band, not its resampled copies
    assert cdse[0]["bands"]["B05"].endswith("_B05_20m.jp2") and cdse[0]["bands"]["B02"].endswith("_B02_10m.jp2")
    assert cdse[0]["bands"]["SCL"].endswith("_SCL_20m.jp2")


def test_c1_stub_items_are_skipped_with_a_warning(caplog):
    caplog.set_level(logging.WARNING, logger="treemap")
    scenes = open_catalog(str(FILES["earth-search-c1"])).search(
        Query((-180, -90, 180, 90), date(2015, 1, 1), date(2030, 1, 1)))
    assert len(scenes) == 6
    assert sum("skipping item" in r.message for r in caplog.records) == len(features("earth-search-c1")) - 6


def test_cog_preferred_over_jp2_copy_of_the_same_band():
    item = copy.deepcopy(features("earth-search-v1")[0])
    item["assets"] = {("B04" if k == "red-jp2" else k): v for k, v in item["assets"].items()}
    assert item["assets"]["B04"]["type"] == "image/jp2"
    assert normalise_item(item).bands["B04"].endswith("/B04.tif")


# --- the offset decision ---------------------------------------------------------------------------------------------

def _es_item(**props) -> dict:
    item = copy.deepcopy(features("earth-search-v1")[0])
    for key, value in props.items():
        if value is None:
            item["properties"].pop(key, None)
        else:
            item["properties"][key] = value
    return item


def _set_metadata_offset(item: dict, offset) -> dict:
    for asset in item["assets"].values():
        for band in asset.get("raster:bands", []):
            if offset is None:
                band.pop("offset", None)
            elif "offset" in band and band.get("scale") == 0.0001:
                band["offset"] = offset
    return item


@pytest.mark.parametrize("case, props, meta_offset, expected, warns", [
    ("baseline 05.11, metadata -0.1, flag true", {}, -0.1, -0.1, False),
    ("flag wrong: baseline wins", {"earthsearch:boa_offset_applied": False}, -0.1, -0.1, True),
    ("metadata wrong: baseline wins", {}, 0.0, -0.1, True),
    ("old baseline, metadata and flag wrong", {"s2:processing_baseline": "03.01",
                                               "datetime": "2021-06-01T10:00:00Z"}, -0.1, 0.0, True),
    ("no baseline: metadata trusted (collection-1 reprocessing of a 2018 scene)",
     {"s2:processing_baseline": None, "s2:product_uri": None, "datetime": "2018-06-01T10:00:00Z",
      "earthsearch:boa_offset_applied": None}, -0.1, -0.1, False),
    ("no baseline, no metadata: by date (after 2022-01-25)",
     {"s2:processing_baseline": None, "s2:product_uri": None, "datetime": "2022-02-01T10:00:00Z",
      "earthsearch:boa_offset_applied": None}, None, -0.1, False),
    ("no baseline, no metadata: by date (before)",
     {"s2:processing_baseline": None, "s2:product_uri": None, "datetime": "2021-12-01T10:00:00Z",
      "earthsearch:boa_offset_applied": None}, None, 0.0, False),
    ("baseline from the product name", {"s2:processing_baseline": None,
                                        "s2:product_uri": "S2A_MSIL2A_20220301T000000_N0400_R001_T20EPT_X.SAFE",
                                        "datetime": "2022-03-01T00:00:00Z"}, None, -0.1, False),
    ("baseline from processing:version", {"s2:processing_baseline": None, "s2:product_uri": None,
                                          "processing:version": "02.14", "datetime": "2020-03-01T00:00:00Z",
                                          "earthsearch:boa_offset_applied": None}, None, 0.0, False),
])
def test_offset_decision(case, props, meta_offset, expected, warns, caplog):
    item = _set_metadata_offset(_es_item(**props), meta_offset)
    caplog.set_level(logging.WARNING, logger="treemap")
    scene = normalise_item(item)
    assert scene.offset == expected, case
    assert scene.scale == 0.0001
    assert any("disagrees" in r.message for r in caplog.records) == warns, case


def test_cdse_raster_scale_offset_per_asset():
    item = copy.deepcopy(features("cdse")[0])
    item["properties"].pop("processing:version")
    item["id"] = "hand-made-without-baseline"
    for asset in item["assets"].values():
        if "raster:scale" in asset:
            asset["raster:scale"] = 0.0002
    scene = normalise_item(item)
    assert (scene.scale, scene.offset) == (0.0002, -0.1)  # no baseline anywhere: the asset metadata decides


def test_item_without_crs_is_rejected():
    item = copy.deepcopy(features("cdse")[0])
    for asset in item["assets"].values():
        asset.pop("proj:code", None)
    with pytest.raises(ItemError, match="proj:epsg or proj:code"):
        normalise_item(item)


# --- pixels: exact grid and harmonised reflectance -------------------------------------------------------------------

X0, Y1, SIZE = 399960.0, 5500020.0, 24  # a 240 m x 240 m patch on the 10 m grid of EPSG:32633


def _write_cog(path: Path, data: np.ndarray, res: int, epsg: int = 32633) -> None:
    tmp = path.with_suffix(".tmp.tif")
    with rasterio.open(tmp, "w", driver="GTiff", width=data.shape[1], height=data.shape[0], count=1,
                       dtype=data.dtype, crs=f"EPSG:{epsg}", transform=from_origin(X0, Y1, res, res),
                       nodata=0) as ds:
        ds.write(data, 1)
    rasterio.shutil.copy(tmp, path, driver="COG", blocksize=16)
    tmp.unlink()


def _source_pixels(seed: int) -> dict[str, np.ndarray]:
    """DN per band on its native grid (10 m or 20 m), never 0 (nodata); SCL all 4 (vegetation)."""
    rng = np.random.default_rng(seed)
    out = {}
    for band in BANDS:
        n = SIZE if band in ("B02", "B03", "B04", "B08") else SIZE // 2
        out[band] = rng.integers(200, 6000, size=(n, n)).astype(np.uint16)
    out[SCL] = np.full((SIZE // 2, SIZE // 2), 4, np.uint8)
    return out


def _item_on_local_cogs(template: dict, folder: Path, pixels: dict[str, np.ndarray], add: int = 0,
                        keys: dict[str, str] | None = None) -> dict:
    """``template`` (a real item) with its band assets replaced by small COGs holding ``pixels`` (+ ``add`` DN)."""
    folder.mkdir(parents=True, exist_ok=True)
    item = copy.deepcopy(template)
    scene = normalise_item(template, signing=None)
    by_href = {href: band for band, href in scene.bands.items()}
    for key, asset in item["assets"].items():
        band = by_href.get(asset.get("href"))
        if band is None:
            continue
        data = pixels[band] if band == SCL else (pixels[band].astype(np.int32) + add).astype(np.uint16)
        res = SIZE * 10 // data.shape[0]
        path = folder / f"{band}.tif"
        _write_cog(path, data, res)
        asset["href"] = str(path)
        asset["type"] = "image/tiff; application=geotiff; profile=cloud-optimized"
        asset["proj:shape"] = list(data.shape)
        asset["proj:transform"] = [res, 0, X0, 0, -res, Y1]
        for k in [k for k in asset if k in ("proj:epsg", "proj:code")]:
            asset[k] = "EPSG:32633" if k == "proj:code" else 32633
    props = item["properties"]
    if "proj:epsg" in props:
        props["proj:epsg"] = 32633
    if "proj:code" in props:
        props["proj:code"] = "EPSG:32633"
    return item


def _tile() -> Tile:
    return Tile(row=0, col=0, epsg=32633, resolution=10.0, halo=0,
                core_bounds=(X0, Y1 - SIZE * 10, X0 + SIZE * 10, Y1), window=(0, 0, SIZE, SIZE))


def _expected_10m(pixels: dict[str, np.ndarray], band: str) -> np.ndarray:
    data = pixels[band]
    return data if data.shape[0] == SIZE else np.repeat(np.repeat(data, 2, axis=0), 2, axis=1)


def test_proj_code_only_item_loads_on_the_exact_10m_grid(tmp_path):
    """A CDSE-style item (proj:code on the assets, nothing else) read through TileCube: every value is the source
    pixel (10 m bands 1:1, 20 m bands as 2 x 2 blocks)."""
    pixels = _source_pixels(1)
    item = _item_on_local_cogs(features("cdse")[0], tmp_path / "s", pixels)
    assert "proj:epsg" not in json.dumps(item)
    scene = normalise_item(item)
    assert scene.epsg == 32633
    cube = TileCube([scene], _tile())
    dn, scl = cube.load([0])
    assert dn.shape == (1, len(BANDS), SIZE, SIZE)
    for b, band in enumerate(BANDS):
        np.testing.assert_array_equal(dn[0, b], _expected_10m(pixels, band), err_msg=band)
    np.testing.assert_array_equal(scl[0], _expected_10m(pixels, SCL))
    assert cube.unreadable == []


def test_pre_and_post_2022_scenes_of_one_surface_harmonise_alike(tmp_path):
    """The same surface as a 2019 Planetary Computer scene (baseline 02.12), a 2025 Earth Search scene and a 2024
    CDSE scene (both >= 04.00, DN + 1000): identical reflectance after harmonisation."""
    pixels = _source_pixels(2)
    scenes = [
        normalise_item(_item_on_local_cogs(features("planetary-computer")[0], tmp_path / "pc", pixels, add=0)),
        normalise_item(_item_on_local_cogs(features("earth-search-v1")[0], tmp_path / "es", pixels, add=1000)),
        normalise_item(_item_on_local_cogs(features("cdse")[0], tmp_path / "cdse", pixels, add=1000)),
    ]
    assert [s.offset for s in scenes] == [0.0, -0.1, -0.1]
    cube = TileCube(scenes, _tile())
    dn, _ = cube.load([0, 1, 2])
    assert not np.array_equal(dn[0], dn[1]), "the newer scenes' DNs carry the +1000 offset"
    refl = harmonise(dn, cube.scale, cube.offset)
    np.testing.assert_allclose(refl[1], refl[0], rtol=0, atol=1e-6)
    np.testing.assert_allclose(refl[2], refl[0], rtol=0, atol=1e-6)
    np.testing.assert_allclose(refl[0, BANDS.index("B04")], pixels["B04"] / 10000, rtol=0, atol=1e-6)


def test_unreadable_local_asset_becomes_nodata_with_a_warning(tmp_path, caplog):
    pixels = _source_pixels(3)
    item = _item_on_local_cogs(features("earth-search-v1")[0], tmp_path / "s", pixels)
    Path(item["assets"]["nir"]["href"]).write_bytes(b"not a tiff")
    scene = normalise_item(item)
    caplog.set_level(logging.WARNING, logger="treemap")
    cube = TileCube([scene], _tile())
    dn, _ = cube.load([0])
    assert (dn[0, BANDS.index("B08")] == 0).all()
    np.testing.assert_array_equal(dn[0, BANDS.index("B04")], pixels["B04"])
    assert [(u[0], u[1]) for u in cube.unreadable] == [(scene.id, "B08")]
    assert any(scene.id in r.message and "band B08" in r.message for r in caplog.records)


# --- Planetary Computer signing --------------------------------------------------------------------------------------

def test_planetary_computer_items_are_marked_for_signing():
    assert all(normalise_item(f).signing == "planetary-computer" for f in full_items("planetary-computer"))
    for provider in ("earth-search-v1", "earth-search-c1", "cdse"):
        assert all(normalise_item(f).signing is None for f in full_items(provider))
    # bands stay unsigned in records: tokens are added when a tile is read
    record = normalise_item(features("planetary-computer")[0]).to_record()
    assert all("?" not in href for href in record["bands"].values())


def _blocked_planetary_computer(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter where ``import planetary_computer`` fails, as without the extra."""
    return subprocess.run([sys.executable, "-c", "import sys; sys.modules['planetary_computer'] = None\n" + code],
                          capture_output=True, text=True, timeout=120)


def test_missing_planetary_computer_package_is_one_clear_line(tmp_path):
    aoi = tmp_path / "aoi.geojson"
    aoi.write_text(json.dumps({"type": "Polygon", "coordinates": [[[170, 58], [171, 58], [171, 59], [170, 59],
                                                                    [170, 58]]]}))
    proc = _blocked_planetary_computer(
        "from treemap.cli import main\n"
        f"sys.argv = ['treemap', 'search', '--aoi', {str(aoi)!r}, '--catalog', 'planetary-computer',"
        " '--year', '2019']\n"
        "main()")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "treemap: error: Planetary Computer asset URLs must be signed: install the extra with "
        "pip install 'treemap[planetary-computer]'"]
    # reading PC items from a local file: the same error when a tile is about to be read
    proc = _blocked_planetary_computer(
        "import json\nfrom treemap.stac.scene import normalise_item\nfrom treemap.errors import CatalogError\n"
        f"item = json.load(open({str(FILES['planetary-computer'])!r}))['features'][0]\n"
        "try:\n    normalise_item(item).to_stac()\nexcept CatalogError as e:\n    print(e)\n")
    assert proc.returncode == 0 and "pip install 'treemap[planetary-computer]'" in proc.stdout


def test_planetary_computer_hrefs_are_signed_with_a_token_from_the_sas_service(http_server, monkeypatch):
    """Signing through the real planetary-computer package, its token service played by a loopback server."""
    pc = pytest.importorskip("planetary_computer")
    token = "st=2020-01-01T00%3A00%3A00Z&se=2099-01-01T00%3A00%3A00Z&sp=rl&sv=2021-06-08&sr=c&sig=abc"

    def respond(handler):
        return 200, "application/json", json.dumps({"msft:expiry": "2099-01-01T00:00:00Z", "token": token})

    with http_server(respond) as srv:
        monkeypatch.setenv("PC_SDK_SAS_URL", srv.url + "/api/sas/v1/token")
        pc.settings.Settings.get.cache_clear()
        pc.sas.TOKEN_CACHE.clear()
        try:
            scene = normalise_item(features("planetary-computer")[0])
            stac = scene.to_stac()
        finally:
            pc.settings.Settings.get.cache_clear()
            pc.sas.TOKEN_CACHE.clear()
    assert all(a["href"] == f"{scene.bands[b]}?{token}" for b, a in stac["assets"].items())
    assert srv.requests == [("GET", "/api/sas/v1/token/sentinel2l2a01/sentinel2-l2")]


def test_planetary_computer_catalog_checks_the_package_before_searching(monkeypatch):
    monkeypatch.setitem(sys.modules, "planetary_computer", None)
    with pytest.raises(CatalogError, match=r"treemap\[planetary-computer\]"):
        ApiCatalog("https://planetarycomputer.microsoft.com/api/stac/v1").search(
            Query((0, 0, 1, 1), date(2020, 1, 1), date(2020, 2, 1)))
