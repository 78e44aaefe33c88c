"""SeCo-Eco pretraining on a ``treemap train sample`` folder: the sampler runs on a small demo world (one season
emptied from the catalog, two grid nodes off the world), the loader turns its done shards into SeasonalPatches, and
``train seco-eco --samples`` pretrains on them; unusable folders are one-line errors with exit code 2."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from datetime import date
from pathlib import Path

import numpy as np
import pytest

from test_sample import sample_args, water_origin, world, write_aoi  # noqa: F401 - fixtures of the demo world
from train import seco_eco
from train.sample import main as sample_main
from train.sample_store import read_shard, write_shard
from train.seco_patches import location_weights, prepare_inputs
from train.seco_samples import read_samples
from treemap.errors import SecoDataError
from treemap.models.seco import load_seco
from treemap.phenology import BAND_ORDER, SEASONS
from treemap.workdir import work_lock

REPO = Path(__file__).resolve().parents[2]
#: The sampling test's AOI stretched 950 m east, past the world's edge: two nodes there have no scene (dropped).
AOI_UTM = (497050, 5541850, 499900, 5542950)
#: Acquisitions between these days of year are left out of the catalog: the autumn season has no scene.
GAP = (245, 330)
WATER_ID = "x+0y+0"
TRAIN_ARGS = ["--tiny", "--steps", "3", "--batch-size", "4", "--queue-size", "8", "--log-every", "0"]


def read_index(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def sampled(world, water_origin, world_items, tmp_path_factory):  # noqa: F811 - the imported fixtures
    folder = tmp_path_factory.mktemp("seco-samples")
    items = [f for f in world_items(world)
             if not GAP[0] <= date.fromisoformat(f["properties"]["datetime"][:10]).timetuple().tm_yday <= GAP[1]]
    catalog = folder / "items.json"
    catalog.write_text(json.dumps({"type": "FeatureCollection", "features": items}))
    out = folder / "samples"
    assert sample_main(sample_args(catalog, out, write_aoi(folder / "aoi.geojson", AOI_UTM), water_origin)) == 0
    records = read_index(out)
    done = [r for r in records if r["state"] == "done"]
    # what the checks below rely on: some locations dropped, the water one done, a season missing somewhere
    assert 3 <= len(done) < len(records), records
    assert any(r["id"] == WATER_ID and r["weight"] == 0.25 for r in done)
    assert any(r["weight"] == 1.0 for r in done)
    assert any(r["missing"] for r in done)
    return out, records


def test_the_loader_takes_the_done_locations_with_their_seasons_and_bands(sampled):
    out, records = sampled
    done = [r for r in records if r["state"] == "done"]
    patches = read_samples(out)
    assert list(patches.ids) == [r["id"] for r in done]
    assert patches.origins.tolist() == [[r["i"], r["j"]] for r in done]
    assert patches.reflectance.shape == (len(done), 4, len(BAND_ORDER), 8, 8)  # the shards' 8 px, uncropped
    b11, b12 = BAND_ORDER.index("B11"), BAND_ORDER.index("B12")
    assert np.isnan(patches.reflectance[:, :, [b11, b12]]).all()
    for n, r in enumerate(done):
        chosen = [s["season"] for s in r["seasons"]]
        assert patches.valid[n].tolist() == [s in chosen for s in SEASONS], r["id"]
        for m in r["missing"]:  # a season without a scene: invalid and empty
            assert not patches.valid[n, SEASONS.index(m["season"])]
            assert np.isnan(patches.reflectance[n, SEASONS.index(m["season"])]).all()
        shard = read_shard(out / r["shard"])
        channels = shard["channels"].tolist()
        for k, season in enumerate(shard["seasons"].tolist()):
            got, clear = patches.reflectance[n, SEASONS.index(season)], shard["clear"][k]
            for band in ("B02", "B04", "B08", "B8A"):
                want = shard["images"][k, channels.index(band)].astype(np.float32)
                np.testing.assert_array_equal(got[BAND_ORDER.index(band)][clear], want[clear])
                assert np.isnan(got[BAND_ORDER.index(band)][~clear]).all()  # clouds masked


def test_the_samplers_weight_wins(sampled):
    out, records = sampled
    patches = read_samples(out)
    weights = location_weights(patches)
    water = patches.ids.index(WATER_ID)
    assert weights[water] == 0.25
    assert weights[water] / weights.max() == 0.25
    assert sorted(set(weights.tolist())) == [0.25, 1.0]
    by_id = {r["id"]: r["weight"] for r in records if r["state"] == "done"}
    assert weights.tolist() == [by_id[i] for i in patches.ids]
    # given weights win over the NDVI rule; a location without one falls back to it
    given = np.full(len(patches), np.nan)
    given[0], given[water] = 3.0, 1.0
    mixed = location_weights(replace(patches, weights=given))
    assert mixed[0] == 3.0 and mixed[water] == 1.0
    assert mixed.tolist()[1:water] + mixed.tolist()[water + 1:] == [
        w for k, w in enumerate(location_weights(replace(patches, weights=None)).tolist()) if k not in (0, water)]


def test_patches_larger_than_the_training_size_are_cut_in_the_middle(sampled):
    out, _ = sampled
    whole, crop = read_samples(out), read_samples(out, patch_size=4)
    assert crop.reflectance.shape[-2:] == (4, 4)
    np.testing.assert_array_equal(crop.reflectance, whole.reflectance[..., 2:6, 2:6])
    with pytest.raises(SecoDataError, match="give --patch-size 8 or less"):
        read_samples(out, patch_size=16)


def test_train_seco_eco_pretrains_on_a_sample_folder(sampled, tmp_path, capsys):
    out, records = sampled
    done = [r for r in records if r["state"] == "done"]
    run = tmp_path / "run"
    assert seco_eco.main(["--samples", str(out), "--out", str(run), *TRAIN_ARGS]) == 0
    assert capsys.readouterr().out.strip() == str(run / "seco.safetensors")
    model = load_seco(run / "seco.safetensors")
    from safetensors import safe_open

    with safe_open(str(run / "seco.safetensors"), framework="pt") as fh:
        notes = json.loads(fh.metadata()["treemap_seco"])["notes"]
    assert notes.endswith(f", {len(done)} locations"), notes  # the done locations, not every record
    assert len(done) != len(records)
    # the input statistics are those of the loader's patches
    _, stats = prepare_inputs(read_samples(out))
    np.testing.assert_allclose(model.stats.mean, stats.mean, rtol=1e-5)
    np.testing.assert_allclose(model.stats.std, stats.std, rtol=1e-5)
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


def test_an_unreadable_shard_is_left_out(sampled, tmp_path):
    out, records = sampled
    copy = Path(shutil.copytree(out, tmp_path / "copy"))
    first = next(r for r in records if r["state"] == "done")
    shard = copy / first["shard"]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    patches = read_samples(copy)
    assert first["id"] not in patches.ids
    assert len(patches) == sum(r["state"] == "done" for r in records) - 1


def test_cloudy_pixels_are_missing_and_a_mostly_cloudy_season_is_invalid(sampled, tmp_path):
    """The chosen scenes of this small run are clear on their 8 px patches, so a copy gets clouds in its mask: a
    strip in one season, three quarters of another."""
    out, records = sampled
    copy = Path(shutil.copytree(out, tmp_path / "cloudy"))
    r = next(r for r in records if r["state"] == "done" and len(r["seasons"]) == 3)
    shard = read_shard(copy / r["shard"])
    clear = shard["clear"].copy()
    clear[0, :2, :] = False
    clear[1, :6, :] = False
    write_shard(copy / r["shard"], shard["images"], clear, shard["seasons"].tolist(), shard["scene_ids"].tolist(),
                shard["dates"].tolist(), shard["cloud"].tolist(), tuple(shard["channels"].tolist()), shard["meta"])
    before, after = read_samples(out), read_samples(copy)
    n = after.ids.index(r["id"])
    first, second = (SEASONS.index(s) for s in shard["seasons"].tolist()[:2])
    assert np.isnan(after.reflectance[n, first, :, :2]).all()
    np.testing.assert_array_equal(after.reflectance[n, first, :, 2:], before.reflectance[n, first, :, 2:])
    assert after.valid[n, first] and not after.valid[n, second]  # 75 % cloudy: under --min-valid 0.5
    assert after.valid[n].sum() == before.valid[n].sum() - 1 == 2
    assert not read_samples(copy, min_valid=0.3).valid[n, second]
    assert read_samples(copy, min_valid=0.25).valid[n, second]


def _broken(out: Path, tmp_path: Path, name: str, how) -> Path:
    copy = Path(shutil.copytree(out, tmp_path / name))
    how(copy)
    return copy


def _only_dropped(folder: Path) -> None:
    kept = [r for r in read_index(folder) if r["state"] != "done"]
    (folder / "index.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))


def _cut_shards(folder: Path) -> None:
    for shard in (folder / "shards").glob("*.npz"):
        shard.write_bytes(shard.read_bytes()[:100])


def _journal(folder: Path) -> None:  # a second run's journal: a record appended again, then a cut line
    lines = (folder / "index.jsonl").read_text().splitlines()
    (folder / "index.jsonl").write_text("\n".join(lines + [lines[0], '{"id": "x+9y+0", "sta']) + "\n")


def _killed(folder: Path) -> None:  # what a killed run leaves: its lock file, no holder
    (folder / ".treemap-work").mkdir()
    (folder / ".treemap-work" / ".lock").write_text('{"pid": 1}')


def _garbage_index(folder: Path) -> None:
    (folder / "index.jsonl").write_bytes(b"\xff\xfe\x00binary")


def test_unusable_sample_folders_are_one_line_errors(sampled, tmp_path, capsys):
    out, _ = sampled
    cases = [
        (_broken(out, tmp_path, "dropped", _only_dropped), "has no done location (2 dropped)"),
        (_broken(out, tmp_path, "cut", _cut_shards), "no usable location in"),
        (_broken(out, tmp_path, "journal", _journal), "still the journal of an unfinished run"),
        (_broken(out, tmp_path, "killed", _killed), "was stopped before it finished"),
        (_broken(out, tmp_path, "garbage", _garbage_index), "index.jsonl"),
        (_broken(out, tmp_path, "noindex", lambda f: (f / "index.jsonl").unlink()), "has no index.jsonl"),
        (tmp_path, "is not a treemap train sample folder"),
    ]
    for folder, fragment in cases:
        run = tmp_path / f"run-{folder.name}"
        assert seco_eco.main(["--samples", str(folder), "--out", str(run), *TRAIN_ARGS]) == 2, folder
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and ": error: " in err[0] and fragment in err[0], (folder.name, err)
        assert not run.exists()
    # a run still working holds the lock
    live = _broken(out, tmp_path, "live", lambda f: None)
    with work_lock(live):
        assert seco_eco.main(["--samples", str(live), "--out", str(tmp_path / "run-live"), *TRAIN_ARGS]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is still writing to" in err[0], err
    assert seco_eco.main(["--samples", str(live), "--out", str(tmp_path / "run-live"), *TRAIN_ARGS]) == 0  # released
    capsys.readouterr()


def test_samples_and_composites_exclude_each_other(sampled, tmp_path, capsys):
    out, _ = sampled
    for args, fragment in ((["--samples", str(out), "--composites", str(tmp_path / "c.tif")], "not allowed with"),
                           ([], "one of the arguments --composites --samples is required"),
                           (["--samples", str(out), "--stride", "4"], "--stride applies to --composites only")):
        with pytest.raises(SystemExit) as exc:
            seco_eco.main([*args, "--out", str(tmp_path / "run"), *TRAIN_ARGS])
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and fragment in err[0], err
    assert not (tmp_path / "run").exists()


def test_treemap_train_seco_eco_refuses_an_unfinished_run_without_a_traceback(sampled, tmp_path):
    out, _ = sampled
    folder = _broken(out, tmp_path, "journal", _journal)
    proc = subprocess.run([sys.executable, "-m", "treemap", "train", "seco-eco", "--samples", str(folder),
                           "--out", str(tmp_path / "run"), *TRAIN_ARGS], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("treemap train seco-eco: error: "), proc.stderr
    assert "run the same treemap train sample command again" in lines[0]
