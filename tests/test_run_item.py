"""The run's STAC item (treemap.run_item): built from real COGs, written, validated offline against the core and
extension schemas, and read back: every asset opens from its href, also after the folder is renamed."""

from __future__ import annotations

import hashlib
import json
import re
import socket
from datetime import date, datetime, timezone
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
import rasterio.shutil
import rasterio.warp
from pyproj import Transformer
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import from_origin
from shapely.geometry import box, shape

from treemap import __version__
from treemap.grid import TilePlan
from treemap.outputs import NODATA_U8, PROB_SCALE, ProductSpec, class_colours
from treemap.item_validation import OfflineSTACValidator, offline_validation, validate_run_item
from treemap.run_item import (CLASSIFICATION_SCHEMA, COG_MEDIA_TYPE, FILE_SCHEMA, ITEM_NAME, PROJECTION_SCHEMA,
                              RASTER_SCHEMA, Grid, RunItemValidationError, footprint, run_item, write_run_item)

SCHEMAS = Path(__file__).parent / "data" / "stac-schemas"
CORE_SCHEMA = "https://schemas.stacspec.org/v1.1.0/item-spec/json-schema/item.json"

EPSG, RES, WIDTH, HEIGHT = 32631, 10.0, 64, 48
X0, Y1 = 500000.0, 5650480.0
BOUNDS = (X0, Y1 - HEIGHT * RES, X0 + WIDTH * RES, Y1)
SPECIES = ("Fagus sylvatica", "Quercus robur", "Pinus sylvestris")
COLOURS = class_colours(len(SPECIES))
START, END = date(2023, 4, 1), date(2023, 9, 30)
CREATED = datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
PROVENANCE = {
    "run_id": "run-0001",
    "command": "treemap predict aoi.geojson --start 2023-04-01 --end 2023-09-30 --out out",
    "job": "predict",
    "parameters": {"top_k": 1, "max_cloud": 80.0, "start": START, "tile_size": 32},
    "scenes": ["S2A_31UES_20230402_0_L2A", "S2B_31UES_20230510_0_L2A"],
    "model_checksum": "sha256:" + "ab" * 32,
    "model_card": {"name": "tiny", "encoder": "test"},
    "species_checksum": "sha256:" + "cd" * 32,
    "timings": {"read": 1.5, "compute": 2.25, "publish": 0.5},
    "unreadable_assets": [("S2B_31UES_20230510_0_L2A", "B04",
                           "https://example.invalid/B04.tif?token=SECRET", "HTTP 404")],
}


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Nothing here may reach the network: every socket connection fails loudly."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def write_cog(path: Path, data: np.ndarray, nodata, descriptions, scales=None, colormap=None) -> Path:
    tmp = path.with_name(f".{path.name}.gtiff")
    profile = dict(driver="GTiff", width=WIDTH, height=HEIGHT, count=data.shape[0], dtype=data.dtype.name,
                   crs=f"EPSG:{EPSG}", transform=from_origin(X0, Y1, RES, RES), nodata=nodata)
    with rasterio.open(tmp, "w", **profile) as dst:
        dst.write(data)
        for b, description in enumerate(descriptions, start=1):
            dst.set_band_description(b, description)
        if scales:
            dst.scales = scales
            dst.offsets = [0.0] * len(scales)
        if colormap:
            dst.write_colormap(1, colormap)
    rasterio.shutil.copy(tmp, path, driver="COG", BLOCKSIZE=256)
    tmp.unlink()
    return path


def species_specs() -> list[ProductSpec]:
    classes = {f"CLASS_{i}": name for i, name in enumerate(SPECIES)}
    genus = {"Fagus sylvatica": "Fagus", "Quercus robur": "Quercus", "Pinus sylvestris": "Pinus"}
    probability = tuple({"description": s, "scale": PROB_SCALE, "offset": 0.0, "metadata": {"genus": genus[s]}}
                        for s in SPECIES)
    dominant = ({"description": "dominant species", "categories": list(SPECIES), "colours": COLOURS,
                 "metadata": classes},)
    top = ({"description": "rank 1 species", "categories": list(SPECIES), "metadata": classes},
           {"description": "rank 1 probability", "scale": PROB_SCALE, "offset": 0.0})
    return [ProductSpec("species_probability", probability, 0, resampling="AVERAGE"),
            ProductSpec("dominant_species", dominant, 3),
            ProductSpec("top_species", top, 4)]


def make_products(folder: Path) -> dict[str, Path]:
    """Real COGs as a predict run writes them (uint8, DN x 0.005, 255 = nodata; a paletted class map), with the
    sidecars a run leaves beside them."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(len(SPECIES)), size=(HEIGHT, WIDTH)).transpose(2, 0, 1)
    dn = np.rint(probs / PROB_SCALE).astype(np.uint8)
    dn[:, :4, :4] = NODATA_U8
    dominant = np.argmax(probs, axis=0).astype(np.uint8)[None]
    dominant[:, :4, :4] = NODATA_U8
    top = np.concatenate([dominant, dn.max(axis=0, keepdims=True)])
    products = {
        "species_probability": write_cog(folder / "species_probability.tif", dn, NODATA_U8, SPECIES,
                                         scales=[PROB_SCALE] * 3),
        "dominant_species": write_cog(folder / "dominant_species.tif", dominant, NODATA_U8, ["dominant species"],
                                      colormap={i: c for i, c in enumerate(COLOURS)}),
        "top_species": write_cog(folder / "top_species.tif", top, NODATA_U8,
                                 ["rank 1 species", "rank 1 probability"], scales=[1.0, PROB_SCALE]),
    }
    (folder / "treemap.log").write_text("2024-01-02 03:04:05 INFO treemap: predict\n", encoding="utf-8")
    (folder / "dominant_species.qml").write_text("<!DOCTYPE qgis><qgis><pipe/></qgis>\n", encoding="utf-8")
    with pytest.warns(NotGeoreferencedWarning):
        with rasterio.open(folder / "quicklook.png", "w", driver="PNG", width=16, height=12, count=3,
                           dtype="uint8") as dst:
            dst.write(np.zeros((3, 12, 16), dtype=np.uint8))
    return products


def plan() -> TilePlan:
    return TilePlan(epsg=EPSG, resolution=RES, bounds=BOUNDS, tile_size=32, halo=2, tiles=())


def build(folder: Path) -> pystac.Item:
    return run_item("treemap-run-0001", make_products(folder), species_specs(), plan(), START, END, PROVENANCE,
                    created=CREATED)


@pytest.fixture
def item_path(tmp_path) -> Path:
    folder = tmp_path / "out"
    return write_run_item(build(folder), folder / ITEM_NAME)


def errors_of(item, **kwargs) -> list[str]:
    with pytest.raises(RunItemValidationError) as info:
        validate_run_item(item, SCHEMAS, **kwargs)
    assert isinstance(info.value, ValueError)
    assert str(info.value).startswith("STAC item ")
    return info.value.failures


# -- validation --------------------------------------------------------------------------------------------------------
def test_the_written_item_validates_offline(item_path):
    validate_run_item(item_path, SCHEMAS)
    payload = json.loads(item_path.read_text(encoding="utf-8"))
    assert payload["stac_version"] == "1.1.0"
    assert payload["stac_extensions"] == [PROJECTION_SCHEMA, RASTER_SCHEMA, CLASSIFICATION_SCHEMA, FILE_SCHEMA]
    validate_run_item(payload, SCHEMAS)
    validate_run_item(pystac.Item.from_dict(payload), SCHEMAS)


def test_pystac_own_validator_runs_offline(item_path):
    """pystac's validator (Item.validate, validate_dict) with the local schema lookup: every schema is checked,
    nothing is fetched (the no_network fixture fails any connection)."""
    from pystac.validation import RegisteredValidator, validate_dict

    item = pystac.Item.from_file(item_path)
    used = item.validate(validator=OfflineSTACValidator(SCHEMAS))
    assert set(used) == {CORE_SCHEMA, PROJECTION_SCHEMA, RASTER_SCHEMA, CLASSIFICATION_SCHEMA, FILE_SCHEMA}
    before = RegisteredValidator.get_validator()
    with offline_validation(SCHEMAS):
        assert set(item.validate()) == set(used)
        assert set(validate_dict(json.loads(item_path.read_text(encoding="utf-8")))) == set(used)
    assert RegisteredValidator.get_validator() is before


def test_pystac_validator_rejects_a_broken_item(item_path):
    from pystac.errors import STACValidationError
    from pystac.validation import validate_dict

    payload = json.loads(item_path.read_text(encoding="utf-8"))
    payload["properties"]["proj:shape"] = ["48", "64"]
    with pytest.raises(STACValidationError, match="projection"):
        validate_dict(payload, validator=OfflineSTACValidator(SCHEMAS))


def broken(item_path: Path, change) -> dict:
    payload = json.loads(item_path.read_text(encoding="utf-8"))
    change(payload)
    return payload


@pytest.mark.parametrize("change, expected", [
    (lambda d: d["properties"].__setitem__("proj:shape", ["48", "64"]), r"proj:shape/0: '48' is not of type"),
    (lambda d: d["properties"].__setitem__("proj:transform", [10.0, 0.0]), r"proj:transform"),
    (lambda d: d["assets"]["species_probability"].pop("href"), r"'href' is a required property"),
    (lambda d: d["assets"]["dominant_species"]["raster:bands"][0]["classification:classes"][0]
     .__setitem__("color_hint", "#FF0000"), r"classification/v2\.0\.0.*color_hint.*does not match"),
    (lambda d: d["assets"]["top_species"]["raster:bands"][0].__setitem__("data_type", "byte"),
     r"raster/v1\.1\.0.*data_type: 'byte' is not one of"),
    (lambda d: d["assets"]["species_probability"].__setitem__("file:size", -1), r"file:size: -1 is less than"),
    (lambda d: d["properties"].__setitem__("start_datetime", "April 2023"), r"start_datetime"),
    (lambda d: d.pop("geometry"), r"'geometry' is a required property"),
    (lambda d: d["stac_extensions"].append("https://stac-extensions.github.io/eo/v1.1.0/schema.json"),
     r"eo/v1\.1\.0/schema\.json schema: .*schema not available offline"),
    (lambda d: d["assets"]["quicklook"].__setitem__("href", "/tmp/staging-x/quicklook.png"),
     r"assets/quicklook: href /tmp/staging-x/quicklook.png is not relative"),
    (lambda d: d["links"].append({"rel": "root", "href": "/tmp/staging-x/item.json"}),
     r"root link /tmp/staging-x/item.json is an absolute path"),
])
def test_validation_rejects_broken_items(item_path, change, expected):
    failures = errors_of(broken(item_path, change))
    assert any(re.search(expected, f) for f in failures), failures


def test_validation_lists_every_failure(item_path):
    def change(d):
        d["properties"]["proj:shape"] = "48x64"
        d["assets"]["dominant_species"].pop("href")

    failures = errors_of(broken(item_path, change))
    assert any("proj:shape" in f for f in failures), failures
    assert any("'href' is a required property" in f for f in failures), failures


def test_validation_of_a_file_checks_the_assets_exist(item_path):
    (item_path.parent / "quicklook.png").unlink()
    failures = errors_of(item_path)
    assert failures == ["assets/quicklook: ./quicklook.png does not exist beside the item"]
    validate_run_item(item_path, SCHEMAS, check_files=False)


def test_extension_schemas_are_needed_and_never_fetched(item_path):
    """Without the schema folder every extension fails (it is not downloaded); the core schemas come with
    pystac."""
    with pytest.raises(RunItemValidationError) as info:
        validate_run_item(item_path, schema_dir=None)
    failures = info.value.failures
    assert len(failures) == 4, failures
    for uri, failure in zip((PROJECTION_SCHEMA, RASTER_SCHEMA, CLASSIFICATION_SCHEMA, FILE_SCHEMA), failures):
        assert failure.startswith(f"{uri} schema: ") and "schema not available offline" in failure


# -- content -----------------------------------------------------------------------------------------------------------
def test_every_asset_opens_from_its_href(item_path):
    item = pystac.Item.from_file(item_path)
    specs = {spec.name: spec for spec in species_specs()}
    assert sorted(item.assets) == sorted([*specs, "dominant_species_style", "quicklook", "log"])
    for key, spec in specs.items():
        asset = item.assets[key]
        assert asset.href == f"./{spec.filename}"
        assert asset.media_type == COG_MEDIA_TYPE == pystac.MediaType.COG
        assert asset.roles == ["data"] and asset.title
        bands = asset.extra_fields["raster:bands"]
        with rasterio.open(asset.get_absolute_href()) as src:
            assert src.count == len(bands) == len(spec.bands)
            assert src.crs.to_epsg() == EPSG
            for b, entry in enumerate(bands):
                assert entry["data_type"] == src.dtypes[b] == "uint8"
                assert entry["nodata"] == src.nodata == NODATA_U8
                assert entry["name"] == src.descriptions[b] == spec.bands[b]["description"]
                assert entry["spatial_resolution"] == RES == src.res[0]
                if "scale" in spec.bands[b]:
                    assert entry["scale"] == src.scales[b] == PROB_SCALE
                    assert entry["offset"] == src.offsets[b] == 0.0
                else:
                    assert "scale" not in entry
    genus = item.assets["species_probability"].extra_fields["raster:bands"][0]["treemap:metadata"]
    assert genus == {"genus": "Fagus"}
    for key in ("quicklook", "log", "dominant_species_style"):
        assert (item_path.parent / item.assets[key].href).is_file()


def test_sidecar_assets(item_path):
    item = pystac.Item.from_file(item_path)
    expected = {"quicklook": ("image/png", ["overview"]), "log": ("text/plain", ["metadata"]),
                "dominant_species_style": ("application/xml", ["metadata", "style"])}
    for key, (media_type, roles) in expected.items():
        assert (item.assets[key].media_type, item.assets[key].roles) == (media_type, roles)
    for key, asset in item.assets.items():
        path = item_path.parent / asset.href
        assert asset.extra_fields["file:size"] == path.stat().st_size
        assert asset.extra_fields["file:checksum"] == "1220" + hashlib.sha256(path.read_bytes()).hexdigest()


def test_classification_classes_match_the_categories(item_path):
    item = pystac.Item.from_file(item_path)
    dominant = item.assets["dominant_species"].extra_fields
    classes = dominant["raster:bands"][0]["classification:classes"]
    assert dominant["classification:classes"] == classes  # single-band class map: also on the asset
    assert [c["value"] for c in classes] == [0, 1, 2, NODATA_U8]
    assert [c["title"] for c in classes[:3]] == list(SPECIES)
    assert [c["name"] for c in classes] == ["Fagus_sylvatica", "Quercus_robur", "Pinus_sylvestris", "nodata"]
    assert [c["color_hint"] for c in classes[:3]] == [f"{r:02X}{g:02X}{b:02X}" for r, g, b, _ in COLOURS]
    assert classes[3]["nodata"] is True and "color_hint" not in classes[3]
    with rasterio.open(item_path.parent / item.assets["dominant_species"].href) as src:
        palette = src.colormap(1)
    assert [c["color_hint"] for c in classes[:3]] == [f"{palette[i][0]:02X}{palette[i][1]:02X}{palette[i][2]:02X}"
                                                      for i in range(3)]
    top = item.assets["top_species"].extra_fields
    assert "classification:classes" not in top  # two bands: the classes are per band
    rank = top["raster:bands"][0]["classification:classes"]
    assert [c["title"] for c in rank[:3]] == list(SPECIES) and all("color_hint" not in c for c in rank)
    assert "classification:classes" not in top["raster:bands"][1]
    assert "classification:classes" not in item.assets["species_probability"].extra_fields["raster:bands"][0]


def test_provenance_and_dates(item_path):
    props = json.loads(item_path.read_text(encoding="utf-8"))["properties"]
    assert props["datetime"] is None
    assert props["start_datetime"] == "2023-04-01T00:00:00Z"
    assert props["end_datetime"] == "2023-09-30T23:59:59Z"
    assert props["created"] == "2024-01-02T03:04:05Z"
    assert props["treemap:version"] == __version__
    assert props["treemap:run_id"] == "run-0001"
    assert props["treemap:job"] == "predict" and props["treemap:command"].startswith("treemap predict")
    assert props["treemap:parameters"] == {"top_k": 1, "max_cloud": 80.0, "start": "2023-04-01", "tile_size": 32}
    assert props["treemap:scenes"] == PROVENANCE["scenes"]
    assert props["treemap:model_checksum"] == PROVENANCE["model_checksum"]
    assert props["treemap:model_card"] == {"name": "tiny", "encoder": "test"}
    assert props["treemap:species_checksum"] == PROVENANCE["species_checksum"]
    assert props["treemap:timings"] == {"read": 1.5, "compute": 2.25, "publish": 0.5}
    assert props["treemap:unreadable_assets"] == [{"scene": "S2B_31UES_20230510_0_L2A", "band": "B04",
                                                   "href": "https://example.invalid/B04.tif", "reason": "HTTP 404"}]
    assert "SECRET" not in item_path.read_text(encoding="utf-8")


def test_no_unreadable_assets_is_an_empty_list(tmp_path):
    item = run_item("r", make_products(tmp_path / "out"), species_specs(), plan(), START, END, {}, checksums=False)
    assert item.properties["treemap:unreadable_assets"] == []
    assert item.properties["treemap:version"] == __version__
    assert "file:checksum" not in item.assets["species_probability"].extra_fields
    validate_run_item(item, SCHEMAS)


def test_projection_fields_match_the_rasters(item_path):
    props = json.loads(item_path.read_text(encoding="utf-8"))["properties"]
    with rasterio.open(item_path.parent / "species_probability.tif") as src:
        assert props["proj:code"] == f"EPSG:{src.crs.to_epsg()}"
        assert props["proj:shape"] == [src.height, src.width]
        assert props["proj:transform"] == list(src.transform)[:6]
        assert props["proj:bbox"] == list(src.bounds)


def test_bbox_and_geometry_contain_the_raster_footprint(item_path):
    item = json.loads(item_path.read_text(encoding="utf-8"))
    with rasterio.open(item_path.parent / "dominant_species.tif") as src:
        outline = box(*src.bounds).segmentize(1.0)  # 1 m steps: the true outline in lon/lat
        to_wgs84 = Transformer.from_crs(src.crs, "EPSG:4326", always_xy=True)
        lon, lat = to_wgs84.transform(*np.asarray(outline.exterior.coords).T)
        bounds = rasterio.warp.transform_bounds(src.crs, "EPSG:4326", *src.bounds, densify_pts=101)
    truth = shape({"type": "Polygon", "coordinates": [list(zip(lon, lat))]})
    geometry = shape(item["geometry"])
    assert item["geometry"]["type"] == "Polygon" and geometry.is_valid
    assert geometry.exterior.is_ccw  # RFC 7946
    assert geometry.buffer(1e-9).contains(truth)
    assert truth.buffer(1e-7).contains(geometry)  # and no larger than it
    west, south, east, north = item["bbox"]
    assert west <= bounds[0] + 1e-9 and south <= bounds[1] + 1e-9
    assert east >= bounds[2] - 1e-9 and north >= bounds[3] - 1e-9
    assert box(west, south, east, north).buffer(1e-9).contains(truth)


def test_footprint_across_the_antimeridian():
    grid = Grid(32660, (600000.0, 7000000.0, 800000.0, 7100000.0), 20000, 10000, 10.0)  # 179E .. 177W
    geometry, bbox = footprint(grid)
    assert geometry["type"] == "MultiPolygon"
    west, _, east, _ = bbox
    assert 170 < west < 180 and -180 < east < -170  # RFC 7946: west > east across the antimeridian
    parts = shape(geometry)
    assert parts.is_valid and all(p.exterior.is_ccw for p in parts.geoms)


# -- writing and moving ------------------------------------------------------------------------------------------------
def test_moving_the_folder_keeps_hrefs_valid(tmp_path):
    staging = tmp_path / "work" / "staging-abc123"
    path = write_run_item(build(staging), staging / ITEM_NAME)
    text = path.read_text(encoding="utf-8")
    assert str(tmp_path) not in text and "staging-abc123" not in text
    assert json.loads(text)["links"] == []  # no self link pointing into the staging folder
    out = tmp_path / "published"
    staging.rename(out)
    moved = out / ITEM_NAME
    validate_run_item(moved, SCHEMAS)
    item = pystac.Item.from_file(moved)
    for key, asset in item.assets.items():
        assert Path(asset.get_absolute_href()).parent == out
        if "data" in asset.roles:
            with rasterio.open(asset.get_absolute_href()) as src:
                assert src.shape == (HEIGHT, WIDTH)


def test_write_refuses_absolute_hrefs(tmp_path):
    item = build(tmp_path / "out")
    item.assets["log"].href = str(tmp_path / "out" / "treemap.log")
    with pytest.raises(ValueError, match="must be relative"):
        write_run_item(item, tmp_path / "out" / ITEM_NAME)
    assert not (tmp_path / "out" / ITEM_NAME).exists()


def test_write_leaves_no_temporary_file(item_path):
    assert sorted(p.name for p in item_path.parent.iterdir() if p.name.startswith(".")) == []


def test_bad_arguments(tmp_path):
    products = make_products(tmp_path / "a")
    specs = species_specs()
    with pytest.raises(ValueError, match="do not match"):
        run_item("r", {k: v for k, v in products.items() if k != "top_species"}, specs, plan(), START, END)
    other = tmp_path / "b"
    other.mkdir()
    moved = other / "top_species.tif"
    products["top_species"].rename(moved)
    with pytest.raises(ValueError, match="one folder"):
        run_item("r", {**products, "top_species": moved}, specs, plan(), START, END)
    with pytest.raises(ValueError, match="ends"):
        run_item("r", make_products(tmp_path / "c"), specs, plan(), END, START)
    with pytest.raises(ValueError, match="does not match its bounds"):
        Grid.of(Grid(EPSG, BOUNDS, WIDTH + 1, HEIGHT, RES))
    with pytest.raises(ValueError, match="lowercase"):
        run_item("r", make_products(tmp_path / "d"), specs, plan(), START, END, {"Bad-Key": 1})


def test_the_engines_own_product_specs(tmp_path):
    """The specs the predict and phenology runs really publish (species list, top-k, int16 metrics with units)
    make a valid item with one raster:bands entry per band."""
    import treemap
    from treemap.phenology_run import PhenologyRequest, phenology_products
    from treemap.products import run_tags, species_products
    from treemap.taxonomy import load_species_list

    species = load_species_list(Path(treemap.__file__).parent / "data" / "species" / "demo.csv")
    specs = species_products(species, run_tags(START, END, 2), top_k=2)
    specs += phenology_products(PhenologyRequest(aoi=tmp_path / "aoi.geojson", out=tmp_path / "out", year=2023,
                                                 seasonal=True), START, END, 2)
    folder = tmp_path / "out"
    folder.mkdir()
    products = {}
    for spec in specs:
        data = np.zeros((len(spec.bands), HEIGHT, WIDTH), dtype=spec.dtype)
        products[spec.name] = write_cog(folder / spec.filename, data, spec.nodata,
                                        [b["description"] for b in spec.bands])
    path = write_run_item(run_item("all-products", products, specs, plan(), START, END, PROVENANCE, CREATED),
                          folder / ITEM_NAME)
    validate_run_item(path, SCHEMAS)
    item = pystac.Item.from_file(path)
    for spec in specs:
        bands = item.assets[spec.name].extra_fields["raster:bands"]
        assert [b["name"] for b in bands] == [b["description"] for b in spec.bands]
        with rasterio.open(item.assets[spec.name].get_absolute_href()) as src:
            assert src.count == len(bands) and {b["data_type"] for b in bands} == {src.dtypes[0]}
    dominant = item.assets["dominant_species"].extra_fields["classification:classes"]
    assert [c["title"] for c in dominant if not c.get("nodata")] == list(species.species)
    top = item.assets["top_species"].extra_fields["raster:bands"]
    assert ["classification:classes" in b for b in top] == [True, True, False, False]
    phenology = {b["name"]: b for b in item.assets["phenology"].extra_fields["raster:bands"]}
    assert phenology["greenup"]["unit"] == "day of year 2023" and phenology["greenup"]["nodata"] == -32768
    assert phenology["greenup"]["description"] != "greenup"  # the metric's long name
    assert phenology["amplitude"]["scale"] == 1e-4 and phenology["amplitude"]["unit"] == "EVI"
    assert item.assets["seasonal_composites"].extra_fields["raster:bands"][0]["unit"] == "reflectance"


def test_extra_assets(tmp_path):
    folder = tmp_path / "out"
    products = make_products(folder)
    (folder / "species_probability_thumbnail.png").write_bytes((folder / "quicklook.png").read_bytes())
    thumb = pystac.Asset(href="./species_probability_thumbnail.png", media_type="image/png", roles=["thumbnail"])
    item = run_item("r", products, species_specs(), plan(), START, END, extra_assets={"thumbnail": thumb})
    assert item.assets["thumbnail"].extra_fields["file:size"] == (folder / "quicklook.png").stat().st_size
    validate_run_item(write_run_item(item, folder / ITEM_NAME), SCHEMAS)
    with pytest.raises(ValueError, match="used twice"):
        run_item("r", products, species_specs(), plan(), START, END, extra_assets={"log": thumb.clone()})
    with pytest.raises(ValueError, match="not relative"):
        run_item("r", products, species_specs(), plan(), START, END,
                 extra_assets={"x": pystac.Asset(href=str(folder / "quicklook.png"))})
