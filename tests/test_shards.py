"""Shard I/O: the official GlobalGeoTree layout, read back by a plain reader, official-format quirks, splitting."""

from __future__ import annotations

import io
import json
import math
import pickle
import tarfile

import pytest
import torch

from treemap.models import AUX_VARIABLES
from treemap.shards import (Sample, ShardDataset, ShardError, TEXT_LEVELS, collate, iter_records, list_shards,
                            part_records, read_shard, write_shard)

TEXT = {"level0": "Deciduous Broadleaf", "level1_family": "Fagaceae", "level2_genus": "Fagus",
        "level3_species": "Fagus sylvatica"}


def make_sample(key: str, seed: int = 0, missing_months=(3,)) -> Sample:
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(12, 10, 5, 5, generator=g) * 0.4
    for m in missing_months:
        images[m] = math.nan
    aux = {v: None for v in AUX_VARIABLES}
    aux.update(longitude=8.5 + seed, latitude=50.0, elevation=312.5)
    return Sample(key, images, dict(TEXT), aux)


def plain_read(path) -> list[tuple[str, torch.Tensor, dict, dict]]:
    """The official format read without treemap: tarfile + torch.load(weights_only=True) + json."""
    out = {}
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            key, _, ext = member.name.partition(".")
            data = tar.extractfile(member).read()
            entry = out.setdefault(key, {})
            if ext == "images.pth":
                entry[ext] = torch.load(io.BytesIO(data), weights_only=True)
            else:
                entry[ext] = json.loads(data)
    return [(k, v["images.pth"], v["text.json"], v["auxiliary.json"]) for k, v in out.items()]


def test_written_shards_follow_the_official_layout(tmp_path):
    samples = [make_sample(f"s{i}", seed=i) for i in range(3)]
    path = tmp_path / "shard-000000.tar"
    assert write_shard(path, samples) == 3
    with tarfile.open(path) as tar:
        names = tar.getnames()
    assert names[:3] == ["s0.images.pth", "s0.text.json", "s0.auxiliary.json"]
    assert len(names) == 9
    for (key, images, text, aux), sample in zip(plain_read(path), samples):
        assert key == sample.key
        assert images.dtype == torch.float32 and images.shape == (12, 10, 5, 5)
        assert torch.isnan(images[3]).all() and not torch.isnan(images[4]).any()
        assert torch.equal(torch.nan_to_num(images, 9.0), torch.nan_to_num(sample.images, 9.0))
        assert text == TEXT and list(text) == list(TEXT_LEVELS)
        assert list(aux) == list(AUX_VARIABLES)  # all 27, by name, in model order
        assert aux["longitude"] == sample.aux["longitude"] and aux["elevation"] == 312.5 and aux["bio01"] is None
    assert not list(tmp_path.glob(".*tmp*"))


def test_round_trip_and_reproducible_bytes(tmp_path):
    samples = [make_sample(f"s{i}", seed=i) for i in range(4)]
    write_shard(tmp_path / "a.tar", samples)
    write_shard(tmp_path / "b.tar", samples)
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()
    back = list(read_shard(tmp_path / "a.tar"))
    assert [s.key for s in back] == [s.key for s in samples]
    assert back[1].prompt == "Deciduous Broadleaf / Fagaceae / Fagus / Fagus sylvatica"
    aux = back[1].aux_tensor()
    assert aux.shape == (27,) and aux[0] == pytest.approx(9.5) and math.isnan(aux[3].item())
    batch = collate(back)
    assert batch["images"].shape == (4, 12, 10, 5, 5) and batch["aux"].shape == (4, 27)


def test_a_view_of_a_batch_is_stored_alone(tmp_path):
    batch = torch.zeros(100, 12, 10, 5, 5)
    write_shard(tmp_path / "v.tar", [Sample("one", batch[7], dict(TEXT), {})])
    assert (tmp_path / "v.tar").stat().st_size < 40_000  # not the 100-sample storage


def _official_shard(path, entries):
    """A shard as the GlobalGeoTree scripts write it (float64 images, extra keys, some JSON wrapped in a list)."""
    with tarfile.open(path, "w") as tar:
        for key, images, text, aux in entries:
            buf = io.BytesIO()
            torch.save(images, buf)
            for name, data in ((f"{key}.images.pth", buf.getvalue()), (f"{key}.text.json", json.dumps(text).encode()),
                               (f"{key}.auxiliary.json", json.dumps(aux).encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_hand_written_official_shards_load(tmp_path):
    images = torch.full((12, 10, 5, 5), float("nan"), dtype=torch.float64)
    images[5:9] = 0.125
    aux = {"sample_id": 4505074, "longitude": -122.17, "latitude": 48.33, "elevation": 51.0, "bio12": 1500}
    _official_shard(tmp_path / "official.tar", [
        ("4505074", images, TEXT, aux),
        ("4505075", images, [TEXT], [aux]),  # list-wrapped objects occur in official shards
    ])
    samples = list(read_shard(tmp_path / "official.tar"))
    assert [s.key for s in samples] == ["4505074", "4505075"]
    for s in samples:
        assert s.images.dtype == torch.float32
        assert s.aux["bio12"] == 1500.0 and s.aux["slope"] is None and s.aux["longitude"] == -122.17
        assert s.text == TEXT


def test_damaged_samples_raise_or_are_skipped(tmp_path):
    good = make_sample("good")
    evil = io.BytesIO()
    pickle.dump({"not": "a tensor"}, evil, protocol=2)  # an arbitrary pickle: weights_only refuses it
    with tarfile.open(tmp_path / "bad.tar", "w") as tar:
        for name, data in [("evil.images.pth", evil.getvalue()), ("evil.text.json", json.dumps(TEXT).encode()),
                           ("evil.auxiliary.json", b"{}"), ("short.text.json", json.dumps(TEXT).encode())]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    write_shard(tmp_path / "good.tar", [good])
    with pytest.raises(ShardError, match="evil"):
        list(read_shard(tmp_path / "bad.tar"))
    assert list(read_shard(tmp_path / "bad.tar", errors="warn")) == []
    with pytest.raises(ShardError, match="cannot read shard"):
        list(iter_records(tmp_path / "missing.tar"))


def test_bad_samples_are_refused_on_write(tmp_path):
    with pytest.raises(ValueError, match="key"):
        write_shard(tmp_path / "x.tar", [make_sample("a.b")])
    with pytest.raises(ValueError, match="unknown auxiliary"):
        write_shard(tmp_path / "x.tar", [Sample("a", make_sample("a").images, dict(TEXT), {"bio20": 1.0})])
    assert not (tmp_path / "x.tar").exists() and not list(tmp_path.iterdir())


@pytest.fixture(scope="module")
def five_shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("five")
    for s in range(5):
        write_shard(folder / f"shard-{s:06d}.tar", [make_sample(f"k{s}x{i}", seed=i) for i in range(s + 3)])
    return folder


@pytest.mark.parametrize("parts", [2, 3, 7])
def test_parts_cover_every_sample_once(five_shards, parts):
    shards = list_shards(five_shards)
    every = [r[0] for path in shards for r in iter_records(path)]
    got = [r[0] for p in range(parts) for r in part_records(shards, p, parts, seed=1, epoch=2, shuffle_shards=True,
                                                            shuffle_buffer=4)]
    assert sorted(got) == sorted(every)
    again = [r[0] for r in part_records(shards, 0, parts, seed=1, epoch=2, shuffle_shards=True, shuffle_buffer=4)]
    other = [r[0] for r in part_records(shards, 0, parts, seed=1, epoch=3, shuffle_shards=True, shuffle_buffer=4)]
    assert again == [r[0] for r in part_records(shards, 0, parts, seed=1, epoch=2, shuffle_shards=True,
                                                 shuffle_buffer=4)]
    assert again != other  # another epoch, another order


def test_dataset_splits_between_ranks_and_workers(five_shards):
    keys = []
    for rank in range(2):
        ds = ShardDataset(five_shards, rank=rank, world_size=2, shuffle_buffer=3)
        loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
        keys += [s.key for s in loader]
    assert len(keys) == 3 + 4 + 5 + 6 + 7 and len(set(keys)) == len(keys)
