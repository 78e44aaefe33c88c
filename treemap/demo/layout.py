"""The demo world's static fields: land-cover layout (river, lake, village, fields, forest stands) and the
per-pixel spectral and phenological parameters; :func:`surface` turns them into reflectance on any day."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from numba import njit

from treemap.demo.classes import (AUTUMN_SD, BLOSSOM, BLOSSOM_DOY, BLOSSOM_SD, BUILT_UP, CROP_CALENDARS, CROPLAND,
                                  FOREST_FLOOR, GRASSLAND, URBAN_MATERIALS, WATER, ClassDef)
from treemap.demo.spec import WorldSpec, tile_grids

log = logging.getLogger("treemap.demo")

# random streams (one SeedSequence per purpose, so adding draws to one does not shift the others)
STREAM_LAYOUT, STREAM_FIELDS, STREAM_CLOUDS, STREAM_DATE = 1, 2, 3, 1000


def stream(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed & 0xFFFFFFFFFFFFFFFF, *key]))  # any int seed


def _fast_len(n: int) -> int:
    """Smallest 2^a 3^b 5^c >= n (fast FFT sizes)."""
    best = 1 << int(np.ceil(np.log2(max(n, 1))))
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            p = p35
            while p < n:
                p *= 2
            best = min(best, p)
            p35 *= 3
        p5 *= 5
    return best


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float | tuple[float, ...],
                 weights: tuple[float, ...] = (1.0,), periodic: bool = False) -> np.ndarray:
    """Gaussian-filtered white noise, standardised to mean 0 and sd 1 (float32).

    ``sigma`` may list several scales, mixed with ``weights`` (one FFT). ``periodic`` fields wrap around.
    """
    sigmas = (sigma,) if np.isscalar(sigma) else tuple(sigma)
    h, w = shape
    if periodic:
        ph, pw = h, w
    else:
        pad = int(np.ceil(3 * max(sigmas)))
        ph, pw = _fast_len(h + pad), _fast_len(w + pad)
    white = rng.standard_normal((ph, pw))
    fy = np.fft.fftfreq(ph)[:, None]
    fx = np.fft.rfftfreq(pw)[None, :]
    f2 = fx ** 2 + fy ** 2
    transfer = sum(wt * s * np.exp(-2.0 * (np.pi * s) ** 2 * f2) for wt, s in zip(weights, sigmas))
    out = np.fft.irfft2(np.fft.rfft2(white) * transfer, s=(ph, pw))[:h, :w]
    out -= out.mean()
    sd = out.std()
    return (out / (sd if sd > 0 else 1.0)).astype(np.float32)


@dataclass
class Layout:
    codes: np.ndarray  # (H, W) uint8 truth codes
    stand: np.ndarray  # (H, W) int32 Voronoi cell (stand / field) id
    n_stands: int
    crop_calendar: np.ndarray  # (n_stands,) int: index into CROP_CALENDARS


@njit(nogil=True, cache=True)
def _nearest(py, px, seeds):  # pragma: no cover - compiled
    """Index of the nearest seed (row, col) for each point; ties go to the lower index."""
    out = np.empty(py.shape[0], dtype=np.int32)
    for i in range(py.shape[0]):
        best = np.inf
        arg = 0
        for j in range(seeds.shape[0]):
            dy = py[i] - seeds[j, 0]
            dx = px[i] - seeds[j, 1]
            d = dy * dy + dx * dx
            if d < best:
                best = d
                arg = j
        out[i] = arg
    return out


def _voronoi(spec: WorldSpec, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Irregular cells from Poisson seeds of varying density, nearest seed on warped coordinates."""
    h, w = spec.height_px, spec.width_px
    # enough cells that the narrowest region (west only / overlap / east only) holds every species twice over
    west, east = tile_grids(spec)
    widths = [east.col0, west.col1 - east.col0, w - west.col1]
    narrowest = min(x for x in widths if x > 0) / w
    n = max(int(round(h * w / (spec.mean_stand_ha * 100.0))),  # 1 ha = 100 pixels of 10 m
            int(np.ceil(25 / (spec.forest_fraction * narrowest))))
    mean_px = h * w / n
    density = np.exp(0.9 * smooth_noise(rng, (h, w), min(h, w) / 4.0))
    dmax = float(density.max())
    pts: list[np.ndarray] = []
    got = 0
    while got < n:
        cand = rng.random((4 * n, 2)) * np.array([h, w])
        keep = rng.random(4 * n) < density[cand[:, 0].astype(int), cand[:, 1].astype(int)] / dmax
        cand = cand[keep][: n - got]
        pts.append(cand)
        got += len(cand)
    seeds = np.concatenate(pts).astype(np.float32)  # (n, 2) row, col
    amp = np.sqrt(mean_px) / 3.0
    sigma = max(3.0, np.sqrt(mean_px) / 4.0)
    wy = (np.arange(h, dtype=np.float32)[:, None] + amp * smooth_noise(rng, (h, w), sigma)).ravel()
    wx = (np.arange(w, dtype=np.float32)[None, :] + amp * smooth_noise(rng, (h, w), sigma)).ravel()
    stand = _nearest(wy.astype(np.float32), wx.astype(np.float32), seeds)
    return stand.reshape(h, w), seeds


def build_layout(spec: WorldSpec, table: tuple[ClassDef, ...]) -> Layout:
    rng = stream(spec.seed, STREAM_LAYOUT)
    h, w = spec.height_px, spec.width_px
    yy = np.arange(h, dtype=np.float32)[:, None]
    xx = np.arange(w, dtype=np.float32)[None, :]
    x = np.arange(w, dtype=np.float32)

    # river: a meandering band crossing the world from west to east, 40-70 m wide
    base = rng.uniform(0.3, 0.7) * h
    a1, l1, p1 = rng.uniform(0.08, 0.15) * h, rng.uniform(0.6, 1.2) * w, rng.uniform(0, 2 * np.pi)
    a2, l2, p2 = 0.04 * h, rng.uniform(0.2, 0.3) * w, rng.uniform(0, 2 * np.pi)
    l3, p3 = rng.uniform(0.3, 0.5) * w, rng.uniform(0, 2 * np.pi)
    yc = base + a1 * np.sin(2 * np.pi * x / l1 + p1) + a2 * np.sin(2 * np.pi * x / l2 + p2)
    half = 2.0 + 1.5 * (1 + np.sin(2 * np.pi * x / l3 + p3)) / 2
    water = np.abs(yy - yc[None, :]) <= half[None, :]

    # lake on the far side of the river
    rl = np.sqrt(0.012 * h * w / np.pi)
    lx = rng.uniform(0.15, 0.85) * w
    ryc = float(yc[int(lx)])
    if ryc > h / 2:
        ly = rng.uniform(min(0.15 * h + rl, ryc), max(0.15 * h + rl, ryc - 1.5 * rl))
    else:
        ly = rng.uniform(min(ryc + 1.5 * rl, 0.85 * h - rl), max(ryc + 1.5 * rl, 0.85 * h - rl))
    lake_noise = smooth_noise(rng, (h, w), max(2.0, rl / 3))
    d = np.sqrt(((yy - ly) / (0.8 * rl)) ** 2 + ((xx - lx) / (1.2 * rl)) ** 2) + 0.15 * lake_noise
    water |= d < 1.0

    # village beside the river, near the middle (so often inside the tiles' overlap)
    rv = np.sqrt(0.03 * h * w / np.pi)
    vx = rng.uniform(0.35, 0.65) * w
    side = 1.0 if rng.random() < 0.5 else -1.0
    vy = float(np.clip(yc[int(vx)] + side * 0.6 * rv, 0.7 * rv, h - 0.7 * rv))
    v_noise = smooth_noise(rng, (h, w), max(2.0, rv / 4))
    village = (np.sqrt((yy - vy) ** 2 + (xx - vx) ** 2) / rv + 0.25 * v_noise < 1.0) & ~water

    stand, seeds = _voronoi(spec, rng)
    n = len(seeds)
    fixed = water | village
    usable = np.bincount(stand[~fixed].ravel(), minlength=n).astype(np.float64)
    whole = np.bincount(stand.ravel(), minlength=n).astype(np.float64)

    # forest or open land, decided per region (west only / overlap / east only) so every tile gets forest
    west, east = tile_grids(spec)
    region = np.digitize(seeds[:, 1], [east.col0, west.col1])
    landuse = smooth_noise(rng, (h, w), min(h, w) / 3.0)
    lu = landuse[seeds[:, 0].astype(int), seeds[:, 1].astype(int)]
    forest = np.zeros(n, dtype=bool)
    for r in range(3):
        cells = np.flatnonzero(region == r)
        if len(cells) == 0:
            continue
        cells = cells[np.argsort(lu[cells], kind="stable")]
        need_open = (1 - spec.forest_fraction) * whole[cells].sum() - (whole[cells] - usable[cells]).sum()
        acc = np.cumsum(usable[cells])
        n_open = int(np.searchsorted(acc, need_open)) + (1 if need_open > 0 else 0)
        forest[cells[n_open:]] = True

    code_of = np.zeros(n, dtype=np.uint8)
    open_cells = np.flatnonzero(~forest)
    crop = rng.random(n) < 0.55
    code_of[open_cells] = np.where(crop[open_cells], CROPLAND, GRASSLAND)
    for c in (GRASSLAND, CROPLAND):  # both open classes exist
        if open_cells.size >= 2 and not np.any(code_of[open_cells] == c):
            biggest = open_cells[np.argsort(-usable[open_cells], kind="stable")]
            code_of[biggest[0 if c == GRASSLAND else 1]] = c

    # species: balanced by area within each region, cells visited in random order
    trees = [c.code for c in table if c.kind == "tree"]
    jitter = rng.random((n, len(trees))) * 1e-3
    for r in range(3):
        cells = np.flatnonzero((region == r) & forest)
        cells = cells[rng.permutation(len(cells))]
        area = np.zeros(len(trees))
        for cell in cells:
            k = int(np.argmin(area + jitter[cell]))
            code_of[cell] = trees[k]
            area[k] += usable[cell]

    codes = code_of[stand]
    codes[water] = WATER
    codes[village] = BUILT_UP
    calendar = rng.integers(0, len(CROP_CALENDARS), size=n)

    for tile in (west, east):
        sub = codes[:, tile.col0:tile.col1]
        missing = [c for c in trees if not np.any(sub == c)]
        if missing:
            log.warning("demo world: tile %s lacks species codes %s (world too small for mean_stand_ha=%s)",
                        tile.name, missing, spec.mean_stand_ha)
    return Layout(codes=codes, stand=stand, n_stands=n, crop_calendar=calendar)


@dataclass
class Fields:
    """Per-pixel parameters, flattened in row-major order (N = H * W)."""

    codes: np.ndarray  # (H, W) uint8
    off: np.ndarray  # (10, N) float32 leaf-off spectrum
    dv: np.ndarray  # (10, N) on - off
    autumn: np.ndarray  # (10, N)
    sos: np.ndarray  # (N,) float32
    eos: np.ndarray
    rup: np.ndarray
    rdn: np.ndarray
    blossom: np.ndarray  # (N,) amplitude (0 outside Prunus)
    blossom_doy: np.ndarray
    has_cycle: np.ndarray  # (N,) bool: truth phenology defined for the class


def build_fields(spec: WorldSpec, table: tuple[ClassDef, ...], layout: Layout) -> Fields:
    rng = stream(spec.seed, STREAM_FIELDS)
    codes = layout.codes
    npx = codes.size
    ns = layout.n_stands
    lut = np.zeros(256, dtype=np.int16)
    for i, c in enumerate(table):
        lut[c.code] = i
    ci = lut[codes.ravel()]
    stand = layout.stand.ravel()

    on_t = np.array([c.on for c in table], dtype=np.float32)  # (C, 10)
    off_t = np.array([c.off for c in table], dtype=np.float32)
    aut_t = np.array([c.autumn for c in table], dtype=np.float32)
    par = np.array([(c.sos, c.eos, c.rup, c.rdn) for c in table], dtype=np.float32)

    # per-stand draws (timing in days, spectral factors multiplicative)
    s_sos = rng.normal(0, 7.0, ns)
    s_eos = rng.normal(0, 8.0, ns)
    s_rate = np.exp(rng.normal(0, 0.12, ns))
    s_bright = np.exp(rng.normal(0, 0.05, ns))
    s_nir = np.exp(rng.normal(0, 0.04, ns))
    s_swir = np.exp(rng.normal(0, 0.045, ns))
    s_amp = np.exp(rng.normal(0, 0.15, ns))  # seasonal amplitude (leaf-off state relative to leaf-on)
    s_cover = rng.uniform(0.75, 1.0, ns)  # canopy cover of forest stands; the rest shows the forest floor
    s_floor = np.exp(rng.normal(0, 0.1, ns))
    s_aut = rng.uniform(0.3, 1.5, ns)
    s_field = rng.normal(0, 7.0, ns)  # extra timing spread of crop fields and meadows
    s_blossom = rng.uniform(0.6, 1.2, ns)
    # per-pixel draws
    p_sos = rng.normal(0, 2.0, npx)
    p_eos = rng.normal(0, 2.0, npx)
    # canopy texture: spatially correlated over a few pixels (crowns, gaps), plus a little white noise
    p_bright = np.exp(0.010 * smooth_noise(rng, codes.shape, 1.0).ravel() + rng.normal(0, 0.004, npx))
    p_band = np.exp(0.006 * np.stack([smooth_noise(rng, codes.shape, 1.0).ravel() for _ in range(10)])
                    + rng.normal(0, 0.003, (10, npx)))
    # built-up materials in blocks of a few pixels (roofs, streets, squares)
    urban_w = np.stack([np.exp(1.8 * smooth_noise(rng, codes.shape, 1.2)).ravel() for _ in range(3)], axis=1)
    urban_w *= np.exp(rng.normal(0, 0.3, (npx, 3)))

    band_factor = np.ones((10, ns), dtype=np.float64)
    band_factor[3] = np.sqrt(s_nir)  # B05 half way
    band_factor[4:8] = s_nir
    band_factor[8:10] = s_swir
    band_factor *= s_bright
    factor = (band_factor[:, stand] * p_bright * p_band).astype(np.float32)

    on = on_t[ci].T
    off = on - (on - off_t[ci].T) * s_amp[stand].astype(np.float32)
    tree = np.array([c.kind == "tree" for c in table])[ci]
    cover = np.where(tree, s_cover[stand], 1.0).astype(np.float32)
    floor = FOREST_FLOOR[:, None] * s_floor[stand].astype(np.float32)
    on = (on * cover + floor * (1 - cover)) * factor
    off = (off * cover + floor * (1 - cover)) * factor
    urban = codes.ravel() == BUILT_UP
    if urban.any():
        wts = urban_w[urban] / urban_w[urban].sum(axis=1, keepdims=True)
        mat = (wts @ URBAN_MATERIALS).T.astype(np.float32) * factor[:, urban]
        off[:, urban] = mat
        on[:, urban] = mat
    dv = on - off
    autumn = (aut_t[ci].T * s_aut[stand]).astype(np.float32)

    sos = par[ci, 0] + s_sos[stand] + p_sos
    eos = par[ci, 1] + s_eos[stand] + p_eos
    rup = par[ci, 2] * s_rate[stand]
    rdn = par[ci, 3] * s_rate[stand]
    crop = codes.ravel() == CROPLAND
    if crop.any():
        cal = np.array(CROP_CALENDARS, dtype=np.float64)[layout.crop_calendar[stand[crop]]]
        shift = s_field[stand[crop]]
        sos[crop] = cal[:, 0] + shift + p_sos[crop]
        eos[crop] = cal[:, 1] + shift + p_eos[crop]
        rup[crop] = cal[:, 2] * s_rate[stand[crop]]
        rdn[crop] = cal[:, 3] * s_rate[stand[crop]]
    grass = codes.ravel() == GRASSLAND
    sos[grass] += s_field[stand[grass]]
    eos[grass] -= s_field[stand[grass]]

    prunus = next((c.code for c in table if c.name == "Prunus avium"), None)
    blossom = np.zeros(npx, dtype=np.float32)
    if prunus is not None:
        sel = codes.ravel() == prunus
        blossom[sel] = s_blossom[stand[sel]]
    blossom_doy = (BLOSSOM_DOY + 0.8 * s_sos[stand]).astype(np.float32)
    has_cycle = np.array([c.phenology for c in table])[ci]
    return Fields(codes=codes, off=off, dv=dv, autumn=autumn, sos=sos.astype(np.float32),
                  eos=eos.astype(np.float32), rup=rup.astype(np.float32), rdn=rdn.astype(np.float32),
                  blossom=blossom, blossom_doy=blossom_doy, has_cycle=has_cycle)


def _logistic(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -60.0, 60.0)))


def surface(f: Fields, t, idx=slice(None), bands=range(10)) -> np.ndarray:
    """Clean surface reflectance on day-of-year ``t`` (scalar, or an array shaped (T, 1)) for the pixels ``idx``.

    Returns (len(bands), ...) float32: (bands, n) for scalar ``t``, (bands, T, n) for a column of days.
    """
    t = np.asarray(t, dtype=np.float32)
    sos, eos = f.sos[idx], f.eos[idx]
    v = _logistic((t - sos) / f.rup[idx]) - _logistic((t - eos) / f.rdn[idx])
    np.clip(v, 0.0, 1.0, out=v)
    ga = np.exp(-0.5 * ((t - eos) / AUTUMN_SD) ** 2)
    gb = f.blossom[idx] * np.exp(-0.5 * ((t - f.blossom_doy[idx]) / BLOSSOM_SD) ** 2)
    use_a = bool(ga.max() > 1e-7)
    use_b = bool(gb.max() > 1e-7)
    out = np.empty((len(bands),) + v.shape, dtype=np.float32)
    for j, b in enumerate(bands):
        o = out[j]
        np.multiply(f.dv[b, idx], v, out=o)
        o += f.off[b, idx]
        if use_a:
            o += f.autumn[b, idx] * ga
        if use_b:
            o += BLOSSOM[b] * gb
    return out
