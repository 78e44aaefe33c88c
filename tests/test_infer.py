"""Pixel patches for the encoder."""

import numpy as np

from treemap.infer import pixel_patches


def test_patches_of_a_one_pixel_wide_core():
    comps = np.random.default_rng(0).random((12, 10, 9, 5)).astype(np.float32)  # core 5 x 1 with a 2 px halo
    patches = pixel_patches(comps, 2, slice(0, 5))
    assert patches.shape == (5, 12, 10, 5, 5) and patches.flags.writeable
    np.testing.assert_array_equal(patches[0], comps[:, :, 0:5, 0:5])
