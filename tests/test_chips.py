"""Chip geometry and chip embeddings (treemap.chips): a cell's chip is centred on it, the halo is just enough, and
a cell's embedding does not depend on which tile computed it."""

from __future__ import annotations

import numpy as np
import pytest

from treemap.chips import ChipGrid, embed_chips, parse_season


@pytest.mark.parametrize("chip, stride", [(16, 8), (15, 8), (5, 8), (8, 8), (32, 4), (1, 3)])
def test_each_cell_gets_the_chip_centred_on_it(chip, stride):
    grid = ChipGrid(chip, stride)
    rows, cols = 3, 4
    h, w = rows * stride + 2 * grid.halo, cols * stride + 2 * grid.halo
    # pixel (y, x) of the image holds its own coordinates relative to the first core pixel
    yy, xx = np.mgrid[0:h, 0:w] - grid.halo
    image = np.stack([yy, xx]).astype(np.float64)
    view = grid.windows(image, rows, cols)
    assert view.shape == (2, rows, cols, chip, chip)
    for r in range(rows):
        for c in range(cols):
            centre_y, centre_x = view[0, r, c].mean(), view[1, r, c].mean()
            # the chip's centre is the cell's centre, or half a pixel up/left of it when chip - stride is odd
            assert centre_y == pytest.approx(r * stride + (stride - 1) / 2 - ((stride - chip) % 2) / 2)
            assert centre_x == pytest.approx(c * stride + (stride - 1) / 2 - ((stride - chip) % 2) / 2)
    # the halo is what the outermost chips need, no more
    first, last = view[0, 0, 0].min(), view[0, -1, 0].max()
    assert min(first, -grid.halo + 0) >= -grid.halo and last <= rows * stride - 1 + grid.halo
    assert grid.halo == 0 or first == -grid.halo or last == rows * stride - 1 + grid.halo


def test_a_wrong_image_size_is_refused():
    with pytest.raises(ValueError, match="does not hold"):
        ChipGrid(16, 8).windows(np.zeros((1, 40, 40)), 3, 3)
    with pytest.raises(ValueError):
        ChipGrid(0, 8)


def test_seasons_parse():
    assert parse_season(None) == "mean" and parse_season("mean") == "mean"
    assert parse_season("2") == 2 and parse_season("maturity_senescence") == 1
    for bad in ("4", "summer", "-1"):
        with pytest.raises(ValueError, match="--season"):
            parse_season(bad)


def _seasonal(rng, h, w):
    refl = rng.uniform(0.01, 0.5, size=(4, 10, h, w)).astype(np.float32)
    refl[1, :, : h // 3, : w // 2] = np.nan  # season 1 missing in one corner
    refl[:, :, h - 10:, :] = np.nan  # nothing along the bottom edge
    return refl


def test_cells_are_the_same_whatever_the_tile_that_computes_them():
    """One 6 x 8-cell block against its left and right halves, each cut with its own halo."""
    from treemap.models.seco import SecoConfig, random_seco

    model = random_seco(SecoConfig.tiny(), seed=1)
    grid = ChipGrid(16, 8)
    rng = np.random.default_rng(0)
    rows, cols, s, h0 = 6, 8, 8, grid.halo
    image = _seasonal(rng, rows * s + 2 * h0, cols * s + 2 * h0)
    whole = embed_chips(model, image, grid, rows, cols, batch_size=7)
    left = embed_chips(model, image[..., : 4 * s + 2 * h0], grid, rows, 4, batch_size=64)
    right = embed_chips(model, image[..., 4 * s:], grid, rows, 4, batch_size=3)
    halves = np.concatenate([left, right], axis=-1)
    assert (np.isnan(whole) == np.isnan(halves)).all()
    np.testing.assert_allclose(whole, halves, rtol=0, atol=1e-5, equal_nan=True)
    # the bottom row's chips reach the empty edge: less than half their pixels are complete in any season
    assert np.isnan(whole[:, -1]).all() and np.isfinite(whole[:, :-1]).all()


def test_season_mean_is_the_mean_of_the_usable_seasons():
    from treemap.models.seco import SecoConfig, random_seco

    model = random_seco(SecoConfig.tiny(), seed=2)
    grid = ChipGrid(16, 8)
    image = _seasonal(np.random.default_rng(1), 3 * 8 + 2 * grid.halo, 3 * 8 + 2 * grid.halo)
    mean = embed_chips(model, image, grid, 3, 3)
    each = [embed_chips(model, image, grid, 3, 3, season=k) for k in range(4)]
    usable = np.stack([np.isfinite(e).all(axis=0) for e in each])  # (4, 3, 3)
    assert not usable[1, 0, 0] and usable[1, 1, 2]  # the missing corner takes season 1 from the first cell
    expected = np.nansum(np.stack(each), axis=0) / usable.sum(axis=0)
    ok = usable.any(axis=0)
    np.testing.assert_allclose(mean[:, ok], expected[:, ok], atol=1e-5)
    cells = np.zeros((3, 3), bool)
    cells[1, 1] = True
    only = embed_chips(model, image, grid, 3, 3, cells=cells)
    assert np.isfinite(only).all(axis=0).sum() == 1 and np.allclose(only[:, 1, 1], mean[:, 1, 1], atol=1e-6)
