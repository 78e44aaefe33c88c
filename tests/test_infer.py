"""Pixel patches for the encoder."""

import numpy as np

from treemap.patches import pixel_patches


def test_patches_of_a_one_pixel_wide_core():
    comps = np.random.default_rng(0).random((12, 10, 9, 5)).astype(np.float32)  # core 5 x 1 with a 2 px halo
    patches = pixel_patches(comps, 2, slice(0, 5))
    assert patches.shape == (5, 12, 10, 5, 5) and patches.flags.writeable
    np.testing.assert_array_equal(patches[0], comps[:, :, 0:5, 0:5])


def _holey_composites(seed, shape=(12, 10, 40, 37)):
    """Composites with whole missing months, scattered missing pixels and single missing bands."""
    rng = np.random.default_rng(seed)
    comps = rng.random(shape).astype(np.float32)
    comps[:, :, rng.random(shape[2:]) < 0.08] = np.nan  # all bands of a pixel, every month
    months = rng.random((shape[0],) + shape[2:]) < 0.15
    comps[np.broadcast_to(months[:, None], shape)] = np.nan  # a pixel in one month
    comps[3, 7, rng.random(shape[2:]) < 0.05] = np.nan  # one band
    comps[5] = np.nan  # a month with no clear scene at all
    comps[:, :, :6, :6] = np.nan  # a corner with nothing
    return comps


def test_kept_patches_are_the_full_patches_of_the_kept_pixels_to_the_bit():
    from treemap.patches import kept_patches, present_months

    for seed, halo, rows in [(0, 2, slice(0, 36)), (1, 3, slice(4, 17)), (2, 2, slice(30, 31))]:
        comps = _holey_composites(seed)
        full = pixel_patches(comps.copy(), halo, rows)
        present = ~np.isnan(full).all(axis=(2, 3, 4))
        assert np.array_equal(present_months(comps, halo, rows), present)
        keep = present.any(axis=1) & (np.random.default_rng(seed).random(present.shape[0]) < 0.8)
        assert keep.any() and not keep.all()
        got = kept_patches(comps, halo, rows, keep)
        assert got.shape == (int(keep.sum()),) + full.shape[1:] and got.flags.c_contiguous
        assert np.array_equal(got, full[keep], equal_nan=True)
        # present months are whole (gaps filled), the others all missing
        kept_present = present[keep]
        assert not np.isnan(got[kept_present]).any() and np.isnan(got[~kept_present]).all()


def test_compiled_encoder_gives_the_eager_embeddings(monkeypatch):
    """--compile goes through torch.compile. Here with its 'eager' backend (dynamo's graph capture, no inductor code
    generation: the real inductor takes about 40 s to compile on 2 cores, measured in the README)."""
    import torch

    from treemap.infer import InferenceSpec, PixelEncoder
    from treemap.modelset import resolve_model

    monkeypatch.setenv("TREEMAP_COMPILE_BACKEND", "eager")
    model, _, _ = resolve_model("demo")
    rng = np.random.default_rng(1)
    patches = (rng.random((300, 12, 10, 5, 5)) * 0.3).astype(np.float32)
    patches[:, 4] = np.nan
    aux = np.full((300, 27), np.nan, np.float32)
    aux[:, :2] = (4.4, 50.2)
    eager = PixelEncoder(model, InferenceSpec(128, "cpu")).embed(patches, aux)
    compiled_encoder = PixelEncoder(model, InferenceSpec(128, "cpu", compile=True))
    assert compiled_encoder._encode is not model.encode_location
    torch._dynamo.reset()
    compiled = compiled_encoder.embed(patches, aux)  # batches of 128, 128 and 44: one dynamic graph
    np.testing.assert_allclose(compiled, eager, atol=1e-6)
