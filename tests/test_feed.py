"""The device feeding path (treemap.feed) on CPU tensors: the same patches, scaling and results as the host path.

No GPU runs here: the CUDA-only parts (pinned buffers, the copy stream, the memory probe) are covered by their CPU
logic (staged uploads, batch_from_memory) and measured by benchmarks/gpu.py on a GPU machine."""

import numpy as np
import pytest
import torch

from treemap.feed import (DeviceTile, Uploader, batch_from_memory, fill_gaps, gather_patches, scale_composites)
from treemap.infer import InferenceSpec, PixelEncoder, SpeciesPredictor
from treemap.modelset import resolve_model
from treemap.patches import kept_patches, pixel_patches, present_months, scale_composites_host, scaled_patches


def _holey(seed, shape=(12, 10, 44, 41), rate=0.2):
    rng = np.random.default_rng(seed)
    comps = (rng.random(shape) * 0.4).astype(np.float32)
    comps[:, :, rng.random(shape[2:]) < rate / 4] = np.nan  # a pixel in every month
    months = rng.random((shape[0],) + shape[2:]) < rate
    comps[np.broadcast_to(months[:, None], shape)] = np.nan  # a pixel in one month
    comps[2, 6, rng.random(shape[2:]) < 0.05] = np.nan  # one band
    comps[7] = np.nan  # a month without any clear scene
    return comps


@pytest.mark.parametrize("seed, halo", [(0, 2), (1, 4)])
def test_gathered_patches_equal_the_host_patches(seed, halo):
    comps = _holey(seed)
    h = comps.shape[2] - 2 * halo
    rows = slice(0, h)
    host = pixel_patches(comps.copy(), halo, rows)  # gaps filled by the numpy rule
    w = comps.shape[3] - 2 * halo
    r, c = np.divmod(np.arange(h * w), w)
    off = halo - 2
    raw = gather_patches(torch.from_numpy(comps), torch.from_numpy(r + off), torch.from_numpy(c + off))
    windows = np.lib.stride_tricks.sliding_window_view(comps[:, :, off:off + h + 4, off:off + w + 4], (5, 5),
                                                       axis=(2, 3))
    assert np.array_equal(raw.numpy(), windows.transpose(2, 3, 0, 1, 4, 5).reshape(raw.shape), equal_nan=True)
    got, present = fill_gaps(raw)
    got = got.numpy()
    assert np.array_equal(np.isnan(got), np.isnan(host))  # the same months missing, the same gaps filled
    np.testing.assert_allclose(got, host, rtol=1e-6, atol=0)
    filled = (np.isnan(raw.numpy()) & ~np.isnan(host)).any(axis=(1, 2, 3, 4))
    assert filled.any() and (~filled).any()
    assert np.array_equal(got[~filled], host[~filled], equal_nan=True)  # patches without a filled gap: to the bit
    assert np.array_equal(present.numpy(), ~np.isnan(host).all(axis=(2, 3, 4)))
    assert np.array_equal(present.numpy(), present_months(comps, halo, rows))


def test_gather_is_the_sliding_window_before_filling():
    comps = np.random.default_rng(3).random((12, 10, 9, 8)).astype(np.float32)
    r, c = np.array([0, 4, 2]), np.array([0, 3, 1])
    got = gather_patches(torch.from_numpy(comps), torch.from_numpy(r), torch.from_numpy(c)).numpy()
    for k in range(3):
        assert np.array_equal(got[k], comps[:, :, r[k]:r[k] + 5, c[k]:c[k] + 5])


def test_tile_scaling_is_the_fixed_normaliser_to_the_bit():
    model, _, _ = resolve_model("demo")
    norm = model.normaliser
    assert norm.mode == "fixed"
    comps = _holey(2)
    host = scale_composites_host(comps, norm.band_min.numpy(), norm.band_max.numpy())
    dev = scale_composites(torch.from_numpy(comps), norm.band_min, norm.band_max).numpy()
    assert np.array_equal(host, dev, equal_nan=True)
    # the normaliser on the same values (as patches: B, T, C, H, W), NaN written as 0
    ref = norm.images(torch.from_numpy(comps)[None]).numpy()[0]
    finite = ~np.isnan(comps)
    assert np.array_equal(ref[finite], host[finite]) and (ref[~finite] == 0).all()


def test_scaled_patches_equal_the_normalised_patches_where_nothing_was_filled():
    model, _, _ = resolve_model("demo")
    norm = model.normaliser
    comps = _holey(4, rate=0.01)
    halo, rows = 2, slice(3, 30)
    keep = present_months(comps, halo, rows).any(axis=1)
    raw = kept_patches(comps, halo, rows, keep)
    ref = norm.images(torch.from_numpy(raw.copy())).numpy()
    scaled = scale_composites_host(comps, norm.band_min.numpy(), norm.band_max.numpy())
    got, present = scaled_patches(scaled, halo, rows, keep)
    assert not np.isnan(got).any()
    assert np.array_equal(present, ~np.isnan(raw).all(axis=(2, 3, 4)))
    # patches whose window had no missing value at all: bit-identical; the rest within float32 rounding
    r, c = np.divmod(np.flatnonzero(keep), comps.shape[3] - 2 * halo)
    windows = gather_patches(torch.from_numpy(comps), torch.from_numpy(r + rows.start), torch.from_numpy(c)).numpy()
    filled = (np.isnan(windows) & ~np.isnan(raw)).any(axis=(1, 2, 3, 4))
    assert filled.any() and (~filled).any()
    assert np.array_equal(got[~filled], ref[~filled])  # patches without a filled gap: to the bit
    np.testing.assert_allclose(got, ref, rtol=0, atol=3e-6)


def _tile_inputs(seed=5, h=37, w=29, halo=3):
    comps = _holey(seed, (12, 10, h + 2 * halo, w + 2 * halo))
    rng = np.random.default_rng(seed)
    lonlat = np.stack([4.3 + rng.random((h, w)) * 0.01, 50.1 + rng.random((h, w)) * 0.01]).astype(np.float32)
    valid = rng.random((h, w)) < 0.9
    return comps, halo, lonlat, valid


@pytest.mark.parametrize("normalisation", ["fixed", "batch"])
def test_device_path_gives_the_host_path_embeddings(normalisation):
    model, _, _ = resolve_model("demo")
    if normalisation == "batch":
        model.set_normalisation("batch")
    comps, halo, lonlat, valid = _tile_inputs()
    layers = np.random.default_rng(0).random((25, *valid.shape)).astype(np.float32)
    spec = dict(batch_size=100, device="cpu")
    raw = PixelEncoder(model, InferenceSpec(**spec, patches="host"))
    raw._fixed = None  # the encoder scales every patch itself: the path before tiles were scaled once
    ref = raw.embed_tile(comps, halo, lonlat, valid, rows_per_block=8, layers=layers)
    for mode in ("host", "device"):
        enc = PixelEncoder(model, InferenceSpec(**spec, patches=mode))
        assert enc.tile_patches == (mode == "device")
        assert (enc._fixed is not None) == (normalisation == "fixed")
        got = enc.embed_tile(comps, halo, lonlat, valid, rows_per_block=8, layers=layers)
        assert np.array_equal(np.isnan(got), np.isnan(ref))
        assert (~np.isnan(ref)).any()
        np.testing.assert_allclose(got, ref, rtol=0, atol=2e-6)


def test_device_path_probabilities_match_and_keep_the_batches():
    """With the per-batch rule the batch is part of the result: both paths must cut the same batches."""
    from treemap.taxonomy import demo_species_list

    model, _, key = resolve_model("demo")
    model.set_normalisation("batch")
    comps, halo, lonlat, valid = _tile_inputs(seed=6)
    species = demo_species_list()
    out = {}
    for mode in ("host", "device"):
        for batch in (64, 5000):
            pred = SpeciesPredictor(model, species, InferenceSpec(batch, "cpu", patches=mode))
            out[mode, batch] = pred.predict_tile(comps, halo, lonlat, valid, rows_per_block=16)
    np.testing.assert_allclose(out["device", 64], out["host", 64], rtol=2e-4, atol=1e-6)
    np.testing.assert_allclose(out["device", 5000], out["host", 5000], rtol=2e-4, atol=1e-6)
    assert np.nanmax(np.abs(out["host", 64] - out["host", 5000])) > 1e-4  # batches matter under this rule


def test_device_tile_refuses_a_small_halo():
    with pytest.raises(ValueError, match="halo"):
        DeviceTile.upload(np.zeros((12, 10, 6, 6), np.float32), 1, Uploader(torch.device("cpu")))


def test_staged_uploads_reuse_their_slots_and_hand_back_the_values():
    up = Uploader(torch.device("cpu"), slots=2, staged=True)
    rng = np.random.default_rng(0)
    seen = []
    for n in (10, 30, 5, 30, 31, 2):
        a = rng.random((n, 3)).astype(np.float32)
        t = up.put(a, "x")
        seen.append((a, t))
        assert t.shape == (n, 3) and np.array_equal(t.numpy(), a)
    for a, t in seen:  # no returned tensor aliases a staging buffer that was written again later
        assert np.array_equal(t.numpy(), a)
    assert sorted(k for k in up._buffers) == [("x", 0), ("x", 1)]
    assert up._buffers[("x", 0)].numel() >= 31 * 3 or up._buffers[("x", 1)].numel() >= 31 * 3
    i = up.put(np.arange(4, dtype=np.int64), "x")  # another dtype: a new buffer, not a reinterpretation
    assert i.dtype == torch.int64 and i.tolist() == [0, 1, 2, 3]


def test_unstaged_cpu_upload_is_the_array_itself():
    a = np.arange(6, dtype=np.float32)
    assert Uploader(torch.device("cpu")).put(a, "x").data_ptr() == a.ctypes.data


def test_batch_from_memory():
    gib = 2**30
    assert batch_from_memory(80 * gib, 100_000) == 65536  # capped
    assert batch_from_memory(1 * gib, 100_000) == 5120  # half of 1 GiB at 100 kB, in steps of 256
    assert batch_from_memory(10_000_000, 100_000) == 256  # floor
    assert batch_from_memory(gib, 0) == 65536


def test_patch_placement_follows_the_spec(monkeypatch):
    monkeypatch.delenv("TREEMAP_PATCHES", raising=False)
    assert not InferenceSpec(device="cpu").patches_on_device()
    assert InferenceSpec(device="cpu", patches="device").patches_on_device()
    monkeypatch.setenv("TREEMAP_PATCHES", "device")
    assert InferenceSpec(device="cpu").patches_on_device()
    assert not InferenceSpec(device="cpu", patches="host").patches_on_device()
    monkeypatch.setenv("TREEMAP_PATCHES", "gpu")
    with pytest.raises(ValueError, match="host, device or auto"):
        InferenceSpec(device="cpu").patches_on_device()


def test_auto_batch_on_cpu_keeps_the_given_size():
    model, _, _ = resolve_model("demo")
    assert PixelEncoder(model, InferenceSpec(1234, "cpu", auto_batch=True)).batch_size == 1234


def test_the_predictor_cache_keys_on_every_inference_setting():
    from treemap.modelset import ModelRef, PredictorCache, load_model_set, species_key

    ref = ModelRef("demo", "demo", None)
    loaded = load_model_set(ref)
    cache = PredictorCache()
    cache.offer(loaded)
    keys = (loaded.model_key, species_key(loaded.species), None)
    host = cache.get(ref, keys, InferenceSpec(device="cpu", patches="host"))
    device = cache.get(ref, keys, InferenceSpec(device="cpu", patches="device"))
    assert host is not device and not host.tile_patches and device.tile_patches
    assert cache.get(ref, keys, InferenceSpec(device="cpu", patches="host")) is host
