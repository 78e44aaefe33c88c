"""Chips of seasonal composites on a fixed grid, and the SeCo-Eco embedding of each (compute only, no I/O).

An embedding map of a chip encoder has one value per output cell of ``stride`` x ``stride`` 10 m pixels. The cell's
value is the embedding of the ``chip`` x ``chip`` px chip centred on the cell (for odd ``chip - stride``, half a
pixel up and left of the centre), nothing else: no blending of overlapping chips, so a cell's value depends only on
the composites around it, never on which tile computed it, and maps of any tiling (or of neighbouring runs on the
same grid) join without seams. Cells lie on the grid of the CRS's origin with a ``10 * stride`` m step
(:func:`treemap.grid.plan_tiles` snaps to it), so every run puts them in the same places.

A tile of ``H x W`` cells needs the composites of its ``H * stride x W * stride`` pixels plus :attr:`ChipGrid.halo`
pixels on every side.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["ChipGrid", "SEASON_MODES", "parse_season", "embed_chips"]

#: ``--season`` values beside a season's name or index.
SEASON_MODES = ("mean",)


@dataclass(frozen=True)
class ChipGrid:
    """``chip`` px chips every ``stride`` px (10 m pixels)."""

    chip: int
    stride: int

    def __post_init__(self):
        if self.chip < 1 or self.stride < 1:
            raise ValueError(f"chip {self.chip} and stride {self.stride} must be at least 1 px")

    @property
    def offset(self) -> int:
        """Start of a cell's chip relative to the cell's first pixel (negative: the chip reaches back)."""
        return (self.stride - self.chip) // 2

    @property
    def halo(self) -> int:
        """Pixels of context a tile needs on every side."""
        return max(0, -self.offset, self.offset + self.chip - self.stride)

    def windows(self, image: np.ndarray, rows: int, cols: int) -> np.ndarray:
        """(..., rows, cols, chip, chip) view of the chips of an image (..., rows * stride + 2 halo, cols * stride
        + 2 halo) whose first ``halo`` pixels on each side are context."""
        h, w = image.shape[-2:]
        if (h, w) != (rows * self.stride + 2 * self.halo, cols * self.stride + 2 * self.halo):
            raise ValueError(f"image {h}x{w} does not hold {rows}x{cols} cells of stride {self.stride} "
                             f"with a {self.halo} px halo")
        start = self.halo + self.offset
        view = np.lib.stride_tricks.sliding_window_view(image, (self.chip, self.chip), axis=(-2, -1))
        return view[..., start:start + rows * self.stride:self.stride, start:start + cols * self.stride:self.stride,
                    :, :]


def parse_season(value: str | int | None) -> str | int:
    """``--season``: 'mean' (default), a season's index 0-3 or its name (:data:`treemap.phenology.SEASONS`)."""
    from treemap.phenology import SEASONS

    if value is None or value == "mean":
        return "mean"
    text = str(value).strip()
    if text.isdigit() and int(text) < len(SEASONS):
        return int(text)
    if text in SEASONS:
        return SEASONS.index(text)
    raise ValueError(f"--season must be 'mean', 0-{len(SEASONS) - 1} or a season ({', '.join(SEASONS)}), "
                     f"not {value!r}")


def embed_chips(model, seasonal: np.ndarray, grid: ChipGrid, rows: int, cols: int, season: str | int = "mean",
                min_valid: float = 0.5, batch_size: int = 256, cells: np.ndarray | None = None,
                device: str = "cpu") -> np.ndarray:
    """Backbone features (D, rows, cols) float32 of every cell's chip, NaN where the cell has none.

    ``seasonal`` is (4, 10, rows * stride + 2 halo, cols * stride + 2 halo) reflectance in
    :data:`treemap.phenology.BAND_ORDER`, NaN = missing. A season of a chip is usable when at least ``min_valid`` of
    its pixels have all ten bands (missing pixels enter the network as the channel mean, as in training).
    ``season="mean"``: the mean of the features of the chip's usable seasons (none usable: NaN); an index: that
    season's features (not usable: NaN). Only ``cells`` (rows, cols) bool are encoded when given."""
    import torch

    from treemap.models.seco_input import to_input

    n_seasons = seasonal.shape[0]
    chips = grid.windows(seasonal, rows, cols)  # (4, 10, rows, cols, P, P), a view
    complete = np.isfinite(seasonal).all(axis=1)  # (4, H, W)
    share = grid.windows(complete.astype(np.float32), rows, cols).mean(axis=(-2, -1))  # (4, rows, cols)
    usable = share >= min_valid
    seasons = list(range(n_seasons)) if season == "mean" else [int(season)]
    usable = usable[seasons]
    wanted = usable.any(axis=0)
    if cells is not None:
        wanted &= cells
    dim = int(model.config.feature_dim)
    out = np.full((dim, rows, cols), np.nan, dtype=np.float32)
    where = np.argwhere(wanted)
    if not len(where):
        return out
    # one entry per (cell, usable season) to encode
    jobs = [(k, s) for k, (r, c) in enumerate(where) for s in seasons if usable[seasons.index(s), r, c]]
    feats = np.zeros((len(where), dim), dtype=np.float64)
    counts = np.zeros(len(where), dtype=np.int64)
    model.eval()
    with torch.no_grad():
        for b in range(0, len(jobs), batch_size):
            part = jobs[b:b + batch_size]
            batch = np.stack([chips[s, :, where[k][0], where[k][1]] for k, s in part])  # (B, 10, P, P)
            x = to_input(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)), model.stats)
            f = model.backbone(x.to(device)).float().cpu().numpy()
            for (k, _), row in zip(part, f):
                feats[k] += row
                counts[k] += 1
    values = (feats / counts[:, None]).astype(np.float32)
    out[:, where[:, 0], where[:, 1]] = values.T
    return out
