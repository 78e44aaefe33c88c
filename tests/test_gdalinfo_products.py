"""Every product of a demo run, on its own (no ``.aux.xml`` beside it), as the system's ``gdalinfo`` and
``rio cogeo validate`` see it.

A COG is often copied or served without its sidecar, so what a reader needs must be inside the TIFF: a description
and a nodata value on every band, the scale of every probability band, and for a class map its class names (band
metadata ``CLASS_<value>=<name>``) and, for a single-band one, its colour table. A multi-band GeoTIFF cannot hold a
colour table (TIFF palettes are for one sample per pixel), so the class bands of ``top_species.tif`` carry their names
only; their colours are in the product's QGIS style (``top_species.qml``) beside it.

The products are not listed here: every ``.tif`` of the run is checked, and the run's ``item.json`` (its
``raster:bands``) says which bands are class maps and which are scaled, so new products are checked as they come.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from treemap.outputs import PROB_SCALE

RIO = Path(sys.executable).with_name("rio")

#: A 1.3 km x 1.1 km part of examples/region.geojson: one tile of 160 px.
AOI = {"type": "Feature", "properties": {},
       "geometry": {"type": "Polygon", "coordinates": [[[8.966, 50.022], [8.984, 50.022], [8.984, 50.032],
                                                        [8.966, 50.032], [8.966, 50.022]]]}}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One demo predict with --top-k 2: its output folder and its STAC item."""
    if shutil.which("gdalinfo") is None:
        pytest.skip("the gdalinfo command is not installed")
    folder = tmp_path_factory.mktemp("gdalinfo")
    aoi = folder / "aoi.geojson"
    aoi.write_text(json.dumps(AOI))
    out = folder / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "treemap", "predict", "--catalog", "demo", "--aoi", str(aoi), "--out", str(out),
         "--workers", "1", "--tile-size", "160", "--top-k", "2"],
        capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, json.loads((out / "item.json").read_text(encoding="utf-8"))


def gdalinfo(path: Path) -> dict:
    proc = subprocess.run(["gdalinfo", "-json", str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def products(run, tmp_path_factory) -> dict[str, tuple[dict, dict, list[dict]]]:
    """Product name -> (gdalinfo of the COG alone, gdalinfo of it beside its sidecars in the output folder, the
    item's ``raster:bands`` of it), for every .tif of the run."""
    out, item = run
    alone = tmp_path_factory.mktemp("alone")
    found = {}
    for tif in sorted(out.glob("*.tif")):
        copy = alone / tif.name
        shutil.copyfile(tif, copy)  # the raster alone: no .aux.xml, no .qml next to it
        assert not list(alone.glob(f"{tif.name}.*"))
        found[tif.stem] = (gdalinfo(copy), gdalinfo(tif), item["assets"][tif.stem]["raster:bands"])
        assert not list(alone.glob(f"{tif.name}.*")), "gdalinfo wrote a sidecar"
    assert {"species_probability", "dominant_species", "uncertainty", "top_species"} <= set(found)
    return found


def band_metadata(band: dict) -> dict[str, str]:
    return band.get("metadata", {}).get("", {})


def test_every_product_alone_is_a_valid_cog(run, tmp_path):
    out, _ = run
    for tif in sorted(out.glob("*.tif")):
        copy = tmp_path / tif.name
        shutil.copyfile(tif, copy)
        proc = subprocess.run([str(RIO), "cogeo", "validate", "--strict", str(copy)], capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0 and "is a valid cloud optimized GeoTIFF" in proc.stdout, \
            f"{tif.name}: {proc.stdout}{proc.stderr}"


def test_every_band_has_a_description_and_nodata(products):
    for name, (info, _, item_bands) in products.items():
        assert info["bands"], name
        assert len(info["bands"]) == len(item_bands), name
        assert "TREEMAP_VERSION" in info["metadata"][""], f"{name}: the run's tags are not in the TIFF"
        for band, item_band in zip(info["bands"], item_bands):
            where = f"{name} band {band['band']}"
            assert band.get("description", "").strip(), f"{where}: no description"
            assert band["description"] == item_band["name"], where
            assert "noDataValue" in band, f"{where}: no nodata value"
            assert band["noDataValue"] == item_band["nodata"], where


def test_probability_bands_have_their_scale(products):
    scaled = 0
    for name, (info, _, item_bands) in products.items():
        for band, item_band in zip(info["bands"], item_bands):
            where = f"{name} band {band['band']} ({band.get('description')})"
            probability = (name.endswith("_probability") or name == "uncertainty"
                           or "probability" in band.get("description", ""))
            if probability:
                assert "scale" in item_band, f"{where}: the item has no scale"
            if "scale" in item_band:
                assert band.get("scale") == pytest.approx(PROB_SCALE), f"{where}: scale {band.get('scale')}"
                assert band.get("offset", 0.0) == 0.0, where
                scaled += 1
    assert scaled > 0


def test_class_maps_show_their_names_and_colours_without_the_sidecar(products):
    categorical = set()
    for name, (info, beside, item_bands) in products.items():
        for band, with_sidecar, item_band in zip(info["bands"], beside["bands"], item_bands):
            classes = [c for c in item_band.get("classification:classes", []) if not c.get("nodata")]
            if not classes:
                assert not any(k.startswith("CLASS_") for k in band_metadata(band)), name
                continue
            where = f"{name} band {band['band']} ({band['description']})"
            categorical.add((name, band["description"]))
            shown = band_metadata(band)
            for c in classes:
                assert shown.get(f"CLASS_{c['value']}") == c["title"], \
                    f"{where}: class {c['value']} ({c['title']}) is not named in the TIFF: {shown}"
            # the names GDAL reads from the sidecar, where there is one, are the same
            for value, category in enumerate(with_sidecar.get("categories", [])):
                if category:
                    assert shown.get(f"CLASS_{value}") == category, where
            if len(info["bands"]) == 1:
                table = band.get("colorTable")
                assert band["colorInterpretation"] == "Palette" and table, f"{where}: no colour table"
                assert table["count"] >= max(c["value"] for c in classes) + 1, where
                for c in classes:
                    if "color_hint" in c:
                        rgb = [int(c["color_hint"][i:i + 2], 16) for i in (0, 2, 4)]
                        assert table["entries"][c["value"]][:3] == rgb, f"{where}: colour of {c['title']}"
    assert ("dominant_species", "dominant species") in categorical
    assert {("top_species", "rank 1 species"), ("top_species", "rank 2 species")} <= categorical
    if "tree_mask" in products:
        assert ("tree_mask", "tree mask") in categorical


def test_multi_band_class_maps_have_their_colours_in_the_style(run, products):
    out, _ = run
    for name, (info, _, item_bands) in products.items():
        if len(info["bands"]) > 1 and any("classification:classes" in b for b in item_bands):
            assert (out / f"{name}.qml").is_file(), f"{name}: no colour table and no style"
