"""`treemap model import/info` and the untrusted-checkpoint rules, through the real command line."""

import json
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

from treemap.infer import text_features
from treemap.models import GeoTreeCLIPConfig, load_model, random_model
from treemap.taxonomy import demo_species_list

STATS = {"band_min": [0.0] * 10, "band_max": [0.6] * 10,
         "aux_min": [-180.0, -90.0] + [0.0] * 25, "aux_max": [180.0, 90.0] + [1.0] * 25}


def cli(*args):
    return subprocess.run([sys.executable, "-m", "treemap", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "GGT_tiny.pth"
    model = random_model(GeoTreeCLIPConfig.tiny(), seed=3)
    torch.save({"model_state_dict": model.state_dict()}, path)
    return path, model


def test_import_with_fixed_statistics(official, tmp_path):
    src, model = official
    stats = tmp_path / "stats.json"
    stats.write_text(json.dumps(STATS))
    out = tmp_path / "model.safetensors"
    proc = cli("model", "import", src, "--out", out, "--stats", stats, "--species-list", "demo")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(out)
    card = json.loads(cli("model", "info", out).stdout)
    assert card["normalisation"] == "fixed"
    assert card["statistics"]["band_max"] == STATS["band_max"]
    assert card["species_lists"] == ["demo"]
    assert len(card["source_sha256"]) == 64
    loaded, _ = load_model(out)
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor, rtol=0, atol=0)


def test_import_keeps_official_normalisation_without_stats(official, tmp_path):
    out = tmp_path / "model.safetensors"
    assert cli("model", "import", official[0], "--out", out).returncode == 0
    assert json.loads(cli("model", "info", out).stdout)["normalisation"] == "batch"


class _Payload:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_with_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    torch.save({"model_state_dict": {}, "x": _Payload(str(marker))}, evil, pickle_module=pickle)
    proc = cli("model", "import", evil, "--out", tmp_path / "m.safetensors")
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr and "refused" in proc.stderr
    assert not marker.exists()
    assert not (tmp_path / "m.safetensors").exists()


@pytest.mark.parametrize("make, fragment", [
    (lambda p: p.write_bytes(b""), "not a model checkpoint"),
    (lambda p: torch.save({"model_state_dict": {"foo": torch.zeros(2)}}, p), "not a GeoTreeCLIP checkpoint"),
])
def test_bad_checkpoints_one_line(tmp_path, make, fragment):
    bad = tmp_path / "bad.pth"
    make(bad)
    proc = cli("model", "import", bad, "--out", tmp_path / "m.safetensors")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert fragment in proc.stderr.strip().splitlines()[-1]


def test_bad_statistics(official, tmp_path):
    stats = tmp_path / "stats.json"
    stats.write_text(json.dumps({**STATS, "band_min": [0.0] * 9}))
    proc = cli("model", "import", official[0], "--out", tmp_path / "m.safetensors", "--stats", stats)
    assert proc.returncode != 0 and "band_min must be a list of 10" in proc.stderr


def test_text_features_cached_by_model_and_list(tmp_path):
    model = random_model(GeoTreeCLIPConfig.tiny(), seed=0).eval()
    species = demo_species_list()
    first = text_features(model, species, model_key="abc" * 10, cache_dir=tmp_path)
    files = list((tmp_path / "text-features").glob("*.safetensors"))
    assert len(files) == 1
    # a different model key is a different entry; the cached entry is read back unchanged
    other = random_model(GeoTreeCLIPConfig.tiny(), seed=1).eval()
    second = text_features(other, species, model_key="def" * 10, cache_dir=tmp_path)
    assert len(list((tmp_path / "text-features").glob("*.safetensors"))) == 2
    assert not torch.allclose(first, second)
    again = text_features(other, species, model_key="abc" * 10, cache_dir=tmp_path)
    np.testing.assert_array_equal(again.numpy(), first.numpy())
    # a damaged entry is recomputed, not trusted
    files[0].write_bytes(b"garbage")
    fresh = text_features(model, species, model_key="abc" * 10, cache_dir=tmp_path)
    np.testing.assert_allclose(fresh.numpy(), first.numpy(), atol=1e-6)


def test_import_derives_statistics_from_shards(official, tmp_path):
    from treemap.models.config import AUX_VARIABLES
    from treemap.shards import Sample, write_shard

    rng = np.random.default_rng(0)
    text = {"level0": "Deciduous Broadleaf", "level1_family": "Fagaceae", "level2_genus": "Fagus",
            "level3_species": "Fagus sylvatica"}
    samples = []
    for i in range(40):
        images = torch.from_numpy(rng.uniform(0.0, 0.5, (12, 10, 5, 5)).astype(np.float32))
        images[:, 3] *= 2.0  # B08 (index 3 in model band order) spans a wider range
        images[i % 12] = float("nan")  # one month missing
        aux = {"longitude": float(rng.uniform(5, 7)), "latitude": float(rng.uniform(45, 46))}
        samples.append(Sample(f"s{i}", images, dict(text), aux))
    shards = tmp_path / "shards"
    shards.mkdir()
    write_shard(shards / "shard-000000.tar", samples[:20])
    write_shard(shards / "shard-000001.tar", samples[20:])
    out = tmp_path / "fixed.safetensors"
    proc = cli("model", "import", official[0], "--out", out, "--stats-from-shards", shards)
    assert proc.returncode == 0, proc.stderr
    stats = json.loads(cli("model", "info", out).stdout)["statistics"]
    values = torch.stack([s.images for s in samples]).numpy()
    for band in range(10):
        v = values[:, :, band][~np.isnan(values[:, :, band])]
        assert stats["band_min"][band] == pytest.approx(np.quantile(v, 0.001), rel=1e-6)
        assert stats["band_max"][band] == pytest.approx(np.quantile(v, 0.999), rel=1e-6)
    assert stats["band_max"][3] > 1.5 * stats["band_max"][2]
    lons = [s.aux["longitude"] for s in samples]
    assert stats["aux_min"][0] == pytest.approx(min(lons)) and stats["aux_max"][0] == pytest.approx(max(lons))
    assert len(stats["aux_min"]) == len(AUX_VARIABLES)
    assert all(lo < hi for lo, hi in zip(stats["aux_min"], stats["aux_max"]))
    bad = cli("model", "import", official[0], "--out", tmp_path / "x.safetensors", "--stats-from-shards",
              tmp_path / "nowhere")
    assert bad.returncode == 2 and "no shards" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "x.safetensors").exists()
