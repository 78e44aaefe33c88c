"""The demo region's products are bit-identical to those of treemap before the tile engine (stored checksums of the
decoded pixels, made at the previous commit): moving code between modules must not change a single pixel."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from product_checksums import product_checksums  # noqa: E402

STORED = json.loads((REPO / "tests" / "data" / "demo-product-checksums.json").read_text())


@pytest.mark.parametrize("job, args", [
    ("pred", ["predict", "--workers", "1", "--mask", "none"]),  # the stored maps were made before the tree mask
    ("phen", ["phenology", "--year", "2022", "--seasonal", "--workers", "1"]),
])
def test_demo_products_match_the_stored_checksums(tmp_path, job, args):
    out = tmp_path / job
    proc = subprocess.run([sys.executable, "-m", "treemap", args[0], "--catalog", "demo", "--aoi",
                           str(REPO / "examples" / "region.geojson"), "--out", str(out), *args[1:]],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    got = product_checksums(out)
    stored = STORED["checksums"][job]
    # products added since (leaf type, uncertainty) come on top; the stored ones must not change a pixel
    assert {name: got.get(name) for name in stored} == stored
    if job == "pred":
        assert {"leaf_type_probability.tif", "uncertainty.tif"} <= set(got)
