"""Runs survive a bad network: real runs read COGs over loopback HTTP (nginx) through a fault-injecting proxy
(tests/faults.py) that fails about 20 % of the requests with HTTP 500, HTTP 503, connection resets, truncated bodies
and 5-second delays, and their products must be byte-identical to a run through the healthy server.

Two catalogs: the small demo world (``treemap predict``) and 46 dates of REAL Sentinel-2 L2A pixels of a Flanders
patch in 2018 (``treemap phenology``; tests/flanders.py). Both are item files on disk whose asset hrefs point at
the proxy: treemap reads a local catalog from disk and takes every http(s) ``--catalog`` for a STAC API, so only
the raster reads cross the bad network here.

Also: one asset that is gone for good (404) is named in the ``--json`` summary, the products' tags and treemap.log,
and the run still succeeds; a COG file cut in half never ends a run with a traceback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import rasterio

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "stac"))
import faults  # noqa: E402
import flanders  # noqa: E402
import services  # noqa: E402

SEED = 2806
RATE = 0.2
#: At most this many 5 s delays per run (2 % of requests would be dozens: minutes of waiting on 2 cores).
MAX_DELAYS = 3
ENV = {"TREEMAP_HTTP_BACKOFF": "0.05", "TREEMAP_HTTP_RETRIES": "5"}
LOG = "treemap.log"


# --- servers and catalogs ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def flanders_cogs(tmp_path_factory) -> flanders.Flanders:
    return flanders.write_cogs(tmp_path_factory.mktemp("flanders"))


@dataclass
class Network:
    proxy: faults.FaultyProxy
    web: services.Nginx
    root: Path  # what nginx serves: world/ and flanders/ (links), plus files a test adds
    world_items: Path
    flanders: flanders.Flanders
    flanders_items: Path
    flanders_base: str  # URL of the flanders folder through the proxy

    def run(self, command: str, args: list, out: Path, *, rate: float = 0.0,
            missing: frozenset[str] = frozenset()) -> tuple[subprocess.CompletedProcess, dict[str, int]]:
        """``treemap COMMAND ARGS --out OUT --workers 1 --json`` with the proxy set to ``rate`` and ``missing``;
        the faults it injected during the run."""
        self.proxy.configure(rate=rate, missing=missing, seed=SEED, max_faults={"delay": MAX_DELAYS})
        self.proxy.reset_counts()
        proc = subprocess.run([sys.executable, "-m", "treemap", command, *map(str, args), "--out", str(out),
                               "--workers", "1", "--json"], capture_output=True, text=True, timeout=600,
                              env={**os.environ, **ENV})
        return proc, self.proxy.faults()


@pytest.fixture(scope="module")
def network(small_world, flanders_cogs, tmp_path_factory):
    services_missing = None
    try:
        services.check_nginx()
    except services.ServicesMissing as exc:
        services_missing = str(exc)
    if services_missing:
        if os.environ.get("TREEMAP_REQUIRE_SERVICES") == "1":
            pytest.fail(f"TREEMAP_REQUIRE_SERVICES=1 but {services_missing}")
        pytest.skip(services_missing)
    root = tmp_path_factory.mktemp("served")
    (root / "world").symlink_to(small_world.root.resolve(), target_is_directory=True)
    (root / "flanders").symlink_to(flanders_cogs.root.resolve(), target_is_directory=True)
    web = services.Nginx(root).start()
    try:
        with faults.FaultyProxy(web.url, seed=SEED, exempt=(".json",)) as proxy:
            items = tmp_path_factory.mktemp("items")
            world_items = items / "world.json"
            world_items.write_text(json.dumps({"type": "FeatureCollection", "features": services.served_items(
                small_world.root, f"{proxy.url}/world")}))
            base = f"{proxy.url}/flanders"
            yield Network(proxy, web, root, world_items, flanders_cogs,
                          flanders.write_items(flanders_cogs, base, items / "flanders.json"), base)
    finally:
        web.stop()


@pytest.fixture(scope="module")
def west_aoi(small_world, tmp_path_factory):
    """400 m x 400 m in the west MGRS tile of the small world only (73 scenes, not 146: half the requests)."""
    from shapely.geometry import box

    from treemap.grid import to_crs

    spec = small_world.spec
    local = box(spec.x_min + 200, spec.y_max - 500, spec.x_min + 600, spec.y_max - 100)
    path = tmp_path_factory.mktemp("aoi") / "west.geojson"
    path.write_text(json.dumps({"type": "Feature", "properties": {},
                                "geometry": to_crs(local, 4326, src_epsg=spec.epsg).__geo_interface__}))
    return path


@pytest.fixture(scope="module")
def flanders_aoi(flanders_cogs, tmp_path_factory):
    return flanders.write_aoi(flanders_cogs, tmp_path_factory.mktemp("aoi") / "flanders.geojson")


def predict_args(network, aoi, world) -> list:
    return ["--aoi", aoi, "--catalog", network.world_items, "--model", "demo", "--species", "demo",
            "--year", world.spec.year]


def phenology_args(aoi, catalog) -> list:
    return ["--aoi", aoi, "--catalog", catalog, "--year", 2018]


@pytest.fixture(scope="module")
def healthy_predict(network, west_aoi, small_world, tmp_path_factory):
    out = tmp_path_factory.mktemp("predict-healthy") / "out"
    proc, injected = network.run("predict", predict_args(network, west_aoi, small_world), out)
    assert proc.returncode == 0, proc.stderr
    assert sum(injected.values()) == 0
    return out


@pytest.fixture(scope="module")
def healthy_phenology(network, flanders_aoi, tmp_path_factory):
    out = tmp_path_factory.mktemp("phenology-healthy") / "out"
    proc, injected = network.run("phenology", phenology_args(flanders_aoi, network.flanders_items), out)
    assert proc.returncode == 0, proc.stderr
    assert sum(injected.values()) == 0
    assert json.loads(proc.stdout)["unreadable_assets"] == []
    return out


# --- helpers ---------------------------------------------------------------------------------------------------------

#: The run's STAC item: equal but for when the run happened and how long it took.
ITEM = "item.json"
VOLATILE = ("created", "treemap:timings", "treemap:run_id")


def products(out: Path) -> dict[str, bytes]:
    """Every file of a run's output folder but the log (which has timings), by relative path; the STAC item
    without its time-dependent fields."""
    found = {}
    for p in sorted(out.rglob("*")):
        if not p.is_file() or p.name == LOG:
            continue
        data = p.read_bytes()
        if p.name == ITEM:
            item = json.loads(data)
            for key in VOLATILE:
                item["properties"].pop(key, None)
            item.pop("id", None)
            item["assets"].pop("log", None)
            data = json.dumps(item, sort_keys=True).encode()
        found[p.relative_to(out).as_posix()] = data
    return found


def assert_same_products(healthy: Path, faulty: Path) -> None:
    a, b = products(healthy), products(faulty)
    assert sorted(a) == sorted(b)
    differ = [name for name in a if a[name] != b[name]]
    assert not differ, f"products differ from the healthy run's: {differ}"


def problems(proc: subprocess.CompletedProcess) -> str:
    """The lines of a run's stderr that say what went wrong (for assertion messages)."""
    keep = ("WARNING", "ERROR", "treemap: error", "Error", "second try")
    return "\n".join(line for line in proc.stderr.splitlines() if any(k in line for k in keep))[-6000:]


def assert_every_fault_kind(injected: dict[str, int]) -> None:
    assert all(injected[kind] > 0 for kind in faults.FAULT_KINDS), injected
    assert injected["delay"] <= MAX_DELAYS


# --- the proxy itself ------------------------------------------------------------------------------------------------

def test_proxy_forwards_ranges_and_injects_each_fault(network):
    """Pass-through keeps status, Range answers and their headers; each fault kind does what it says."""
    import http.client
    import time

    path = f"/flanders/data/{network.flanders.ids[0]}/B04.tif"
    size = network.flanders.path(network.flanders.ids[0], "B04").stat().st_size

    def get(port: int, method: str = "GET", headers: dict | None = None):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            conn.request(method, path, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, dict(resp.getheaders()), resp.read()
        finally:
            conn.close()

    network.proxy.configure(rate=0.0, missing=frozenset())
    proxy_port = int(network.proxy.url.rsplit(":", 1)[1])
    status, headers, body = get(proxy_port, headers={"Range": "bytes=10-99"})
    direct = get(network.web.port, headers={"Range": "bytes=10-99"})
    assert status == 206 == direct[0] and body == direct[2] and len(body) == 90
    assert headers["Content-Range"] == f"bytes 10-99/{size}" == direct[1]["Content-Range"]
    assert headers["Content-Length"] == "90"
    status, headers, body = get(proxy_port, "HEAD")
    assert status == 200 and headers["Content-Length"] == str(size) and headers.get("Accept-Ranges") == "bytes"
    assert body == b""

    for kind in ("500", "503", "reset", "truncate", "delay"):
        with faults.FaultyProxy(network.web.url, rate=1.0, mix={kind: 1.0}, delay_s=0.3) as proxy:
            port = int(proxy.url.rsplit(":", 1)[1])
            start = time.monotonic()
            if kind in ("500", "503"):
                assert get(port)[0] == int(kind)
            elif kind == "reset":
                with pytest.raises((ConnectionResetError, http.client.RemoteDisconnected)):
                    get(port)
            elif kind == "truncate":
                with pytest.raises(http.client.IncompleteRead) as info:
                    get(port, headers={"Range": "bytes=0-999"})
                assert len(info.value.partial) == 500
            else:
                status, _, body = get(port)
                assert status == 200 and len(body) == size and time.monotonic() - start >= 0.3
            assert proxy.faults()[kind] == 1
    with faults.FaultyProxy(network.web.url, missing={"/B04.tif"}) as proxy:
        assert get(int(proxy.url.rsplit(":", 1)[1]))[0] == 404
        assert proxy.counts["missing"] == 1


def test_flanders_catalog_holds_the_real_pixels(network):
    """The COGs give the source's values at the source's coordinates, and treemap reads the items with no offset
    (2018: before processing baseline 04.00)."""
    from treemap.stac.local import LocalCatalog

    fl = network.flanders
    z = np.load(HERE / "data" / "phenology" / "flanders_fields.npz")  # 48 pixels cut from the same source file
    days = [str(d) for d in z["dates"]]
    for k, item_id in enumerate(fl.ids):
        j = days.index(fl.datetimes[k][:10])
        for band in ("B02", "B04", "B08"):
            with rasterio.open(fl.path(item_id, band)) as ds:
                assert ds.crs.to_epsg() == 32631 and ds.nodata == 0
                values = np.array([v[0] for v in ds.sample(list(zip(z["x"], z["y"])))])
            np.testing.assert_array_equal(values, z[band][j], err_msg=f"{item_id} {band}")
    with rasterio.open(fl.path(fl.ids[0], "SCL")) as ds:
        assert ds.res == (20.0, 20.0) and ds.shape == (32, 32) and ds.bounds == fl.bounds
    scenes = LocalCatalog(network.flanders_items).scenes()
    assert len(scenes) == len(fl.ids) == 46
    assert {(s.epsg, s.scale, s.offset, s.mgrs_tile) for s in scenes} == {(32631, 1e-4, 0.0, "31UDS")}
    assert all(s.datetime.year == 2018 for s in scenes)


# --- runs ------------------------------------------------------------------------------------------------------------

def test_predict_through_a_bad_network(network, west_aoi, small_world, healthy_predict, tmp_path):
    out = tmp_path / "out"
    proc, injected = network.run("predict", predict_args(network, west_aoi, small_world), out, rate=RATE)
    assert proc.returncode == 0, f"faults injected: {injected}\n{problems(proc)}"
    assert_every_fault_kind(injected)
    assert json.loads(proc.stdout)["unreadable_assets"] == [], problems(proc)
    assert_same_products(healthy_predict, out)


def test_phenology_of_real_pixels_through_a_bad_network(network, flanders_aoi, healthy_phenology, tmp_path):
    out = tmp_path / "out"
    proc, injected = network.run("phenology", phenology_args(flanders_aoi, network.flanders_items), out, rate=RATE)
    assert proc.returncode == 0, f"faults injected: {injected}\n{problems(proc)}"
    assert_every_fault_kind(injected)
    assert json.loads(proc.stdout)["unreadable_assets"] == [], problems(proc)
    assert_same_products(healthy_phenology, out)


def test_an_asset_gone_for_good_is_named_everywhere(network, flanders_aoi, tmp_path):
    fl = network.flanders
    victim = fl.ids[len(fl.ids) // 2]
    href = fl.href(network.flanders_base, victim, "B04")
    out = tmp_path / "out"
    proc, _ = network.run("phenology", phenology_args(flanders_aoi, network.flanders_items), out,
                          missing=frozenset({f"/{victim}/B04.tif"}))
    assert proc.returncode == 0, problems(proc)  # 1 of 506 assets: within the default --max-unreadable 0.05
    assert "Traceback" not in proc.stderr
    summary = json.loads(proc.stdout)
    assert [(u["scene"], u["band"], u["href"]) for u in summary["unreadable_assets"]] == [(victim, "B04", href)]
    with rasterio.open(out / "phenology.tif") as ds:
        tags = ds.tags()
    assert tags["TREEMAP_UNREADABLE_ASSETS"] == "1"
    listed = json.loads(tags["TREEMAP_UNREADABLE_ASSET_LIST"])
    assert [(u["scene"], u["band"], u["href"]) for u in listed] == [(victim, "B04", href)]
    log = (out / LOG).read_text()
    assert href in log and f"scene {victim} band B04" in log
    assert network.proxy.counts["missing"] >= 1


def test_a_cog_cut_in_half_never_crashes_a_run(network, flanders_aoi, tmp_path):
    """Two files cut in half on the server: a 10 m band (its header whole, its tile cut) and an SCL (a small file:
    half of it cuts the header's GeoTIFF keys). The run ends in success naming both, or in one error line."""
    fl = network.flanders
    cut = network.root / "cut"
    cut.mkdir(exist_ok=True)
    replace = {}
    for item_id, band in ((fl.ids[10], "B08"), (fl.ids[20], "SCL")):
        data = fl.path(item_id, band).read_bytes()
        (cut / f"{item_id}-{band}.tif").write_bytes(data[: len(data) // 2])
        replace[(item_id, band)] = f"{network.proxy.url}/cut/{item_id}-{band}.tif"
    catalog = flanders.write_items(fl, network.flanders_base, tmp_path / "cut.json", replace=replace)
    proc, _ = network.run("phenology", phenology_args(flanders_aoi, catalog), tmp_path / "out")
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode in (0, 3), proc.stderr
    if proc.returncode == 3:
        errors = [line for line in proc.stderr.splitlines() if line.startswith("treemap: error:")]
        assert len(errors) == 1 and proc.stdout == "", proc.stderr
    else:
        named = {(u["scene"], u["band"], u["href"]) for u in json.loads(proc.stdout)["unreadable_assets"]}
        assert named == {(i, b, h) for (i, b), h in replace.items()}, problems(proc)
