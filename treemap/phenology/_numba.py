"""numba kernels of the phenology method (the method itself is described in :mod:`treemap.phenology`).

Pixels go through in blocks of ``lanes`` (:data:`LANES`). Gathering the observations, the smoother (assembly,
banded LDL' factorisation and solve) and the robust step run with the pixel as the innermost loop: each time step is
a short vector operation over the block. The banded solve is a recurrence in time, so working on many independent
pixels at once is what lets LLVM use SIMD and hides the latency of the division. ``lanes`` is passed at run time on
purpose: loops with a compile-time trip count get unrolled into scalar code instead of vectorised. A block's work
arrays (float32, observations x lanes and nodes x lanes) are allocated once per chunk of blocks; the input rows of a
block lie far apart in memory and are prefetched a few rows ahead of the gather.

The cycle analysis (zig-zag extremes, levels, threshold crossings) is branchy and runs per pixel on a contiguous
float64 copy of its curve; :data:`TILE` curves at a time are transposed out of the block, their smallest and largest
values come from one vector pass over the block. The zig-zag tracks its running extreme four nodes at a time while
none of them can confirm a swing. The gap test of QA 4 uses the longest gap of each lane and, only where that or a
date outside the clear observations could fail it, bit masks of the lane's clear observations.

What the speed rests on (each measured): the kernels that allocate nothing are compiled without reference counting
(numba's ``_nrt=False``: the counts are atomic operations, costly in per-pixel helpers and contended between threads
on shared arrays); per-pixel loops run over slices from index 0 (numba guards every possibly negative index, which
costs more than the loop body and blocks vectorisation); no loop updates an array element in place under a condition
(``a[j] = x if c else a[j]``, also hidden in ``min``/``max``: LLVM makes that a masked store, very slow on AMD cores;
running values alternate between two rows instead); the masked sums use fastmath so that they vectorise.

Blocks are spread over threads with ``prange``, in chunks of consecutive blocks.

:mod:`treemap.phenology._numpy` implements the same steps in the same order with NumPy, with the same float32
arithmetic in the smoother; keep the two in step.

numba's cache checks only the source file of the function it compiles, and :func:`_chunk` here has the kernels of
the other modules compiled into it: after editing one of them, delete ``treemap/phenology/__pycache__/*.nb[ic]``
(a fresh install or checkout has no stale cache).

Where each part lives: the shared constants, output rows, QA codes and numba options in
:mod:`treemap.phenology._jit`; the block kernels (gather, smoother, robust step, clear-observation bits) in
:mod:`treemap.phenology._block_kernels`; the per-pixel cycle analysis in :mod:`treemap.phenology._cycle_kernels`;
the driver (:func:`phenology_kernel`, :func:`run`) here. The constants that other modules read as
``_numba.NAME`` are re-exported from here.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from treemap.phenology._block_kernels import (_clear_bits, _count, _first_clear, _fit, _gather, _last_clear,
                                              _longest_gap, _reject)
from treemap.phenology._cycle_kernels import _analyse, _block_minmax
from treemap.phenology._jit import (_ONE, _ZERO, AMPLITUDE, BASE_PASSES, DORMANCY, F15, F50, F90, FAR, GREENUP,
                                    LANES, MAD_TO_SIGMA, MATURITY, MIDGREENDOWN, MIDGREENUP, MIN_TOP_DAYS, MINIMUM,
                                    N_FLOAT, NEXT_GREENUP, PEAK, PEAK_CENTRE_FRACTION, PEAK_VALUE, PREFETCH_ROWS,
                                    QA_FEW_OBSERVATIONS, QA_GAP, QA_GOOD, QA_NO_CYCLE, QA_PARTIAL, SCALE_FLOOR,
                                    SEASON_LENGTH, SENESCENCE, SUB_LANES, TILE)

#: the driver and the public constants, re-exported for the modules that read them as ``_numba.NAME``
#: (:mod:`treemap.phenology._core`, :mod:`treemap.phenology._numpy`)
__all__ = [
    "LANES", "SUB_LANES", "TILE", "MIN_TOP_DAYS", "BASE_PASSES", "PEAK_CENTRE_FRACTION", "PREFETCH_ROWS",
    "GREENUP", "MIDGREENUP", "MATURITY", "PEAK", "SENESCENCE", "MIDGREENDOWN", "DORMANCY",
    "MINIMUM", "PEAK_VALUE", "AMPLITUDE", "SEASON_LENGTH", "NEXT_GREENUP", "N_FLOAT",
    "QA_GOOD", "QA_FEW_OBSERVATIONS", "QA_NO_CYCLE", "QA_PARTIAL", "QA_GAP",
    "F15", "F50", "F90", "SCALE_FLOOR", "MAD_TO_SIGMA", "FAR",
    "phenology_kernel", "day_first_obs", "run",
]


# ---------------------------------------------------------------------------------------------------- driver


@njit(cache=True, error_model="numpy")
def _chunk(b_lo, b_hi, values, clear, obs_idx, obs_k, obs_u, obs_v, obs_day, day_obs, oy_lo, oy_hi, p0, p1,
           p2, n_iter, min_obs, vlo, vhi, year_lo, year_hi, min_amp, rel_amp, base_frac, peak_frac, min_floor, min_top,
           max_gap, doy_a, step, lo_mult, hi_mult, scale_floor, lanes, sub_lanes, tile, out, n_clear, qa,
           n_cycles):  # pragma: no cover - compiled
    """Blocks [b_lo, b_hi) of :func:`phenology_kernel`, with their own work arrays."""
    n = values.shape[1]
    n_obs = obs_idx.shape[0]
    n_nodes = p0.shape[0]
    n_blocks = (n + lanes - 1) // lanes
    y = np.empty((n_obs, lanes), dtype=np.float32)
    w0 = np.empty((n_obs, lanes), dtype=np.float32)
    w = np.empty((n_obs, lanes), dtype=np.float32)
    a0 = np.empty((n_nodes, lanes), dtype=np.float32)
    a1 = np.empty((n_nodes, lanes), dtype=np.float32)
    g = np.empty((n_nodes, lanes), dtype=np.float32)
    ep = np.empty(lanes, dtype=np.float32)
    sabs = np.empty(lanes, dtype=np.float32)
    cnt = np.empty(lanes, dtype=np.float32)
    chg = np.zeros(lanes, dtype=np.int32)
    sel = np.zeros(sub_lanes, dtype=np.int64)
    ys = np.empty((n_obs, sub_lanes), dtype=np.float32)
    ws = np.empty((n_obs, sub_lanes), dtype=np.float32)
    sa0 = np.empty((n_nodes, sub_lanes), dtype=np.float32)
    sa1 = np.empty((n_nodes, sub_lanes), dtype=np.float32)
    sg = np.empty((n_nodes, sub_lanes), dtype=np.float32)
    sep = np.empty(sub_lanes, dtype=np.float32)
    ny = np.zeros(lanes, dtype=np.float32)
    zt = np.empty((tile, n_nodes))
    kfs = np.zeros(lanes, dtype=np.int32)
    kls = np.zeros(lanes, dtype=np.int32)
    bits = np.empty(((n_obs + 63) // 64, lanes), dtype=np.int64)
    tmp = np.empty((2, lanes), dtype=np.int64)
    lastd = np.empty((2, lanes), dtype=np.float32)
    gmax = np.empty((2, lanes), dtype=np.float32)
    dfs = np.zeros(lanes, dtype=np.float32)
    dls = np.zeros(lanes, dtype=np.float32)
    mn = np.empty((2, lanes), dtype=np.float32)
    mx = np.empty((2, lanes), dtype=np.float32)
    ext = np.empty(n_nodes + 2, dtype=np.int64)
    res = np.empty(N_FLOAT)
    for b in range(b_lo, min(b_hi, n_blocks)):
        i0 = b * lanes
        nl = min(lanes, n - i0)
        _gather(values, clear, obs_idx, i0, nl, vlo, vhi, y, w0)
        _count(w0, oy_lo, oy_hi, ny, nl)
        n_live = 0
        for j in range(lanes):
            if j < nl and ny[j] >= min_obs:
                n_live += 1
            else:  # a dummy, well-posed series for dead and padding lanes
                for o in range(n_obs):
                    y[o, j] = _ZERO
                    w0[o, j] = _ONE
        for j in range(nl):
            n_clear[i0 + j] = np.int32(ny[j])
            if ny[j] < min_obs:
                for r in range(N_FLOAT):
                    out[r, i0 + j] = np.nan
                qa[i0 + j] = QA_FEW_OBSERVATIONS
                n_cycles[i0 + j] = 0
        if n_live == 0:
            continue
        _fit(y, w0, obs_k, obs_u, obs_v, p0, p1, p2, a0, a1, g, ep, lanes)
        for it in range(n_iter):
            n_chg = _reject(y, w0, w0 if it == 0 else w, w, obs_k, obs_u, obs_v, g, sabs, cnt, chg, lo_mult,
                            hi_mult, scale_floor, lanes)
            if n_chg == 0:
                break
            if n_chg > sub_lanes:
                _fit(y, w, obs_k, obs_u, obs_v, p0, p1, p2, a0, a1, g, ep, lanes)
                continue
            # few lanes changed: refit just those, packed into a narrow block
            m = 0
            for j in range(lanes):
                if chg[j] > 0:
                    sel[m] = j
                    m += 1
            for o in range(n_obs):
                for q in range(sub_lanes):
                    jj = sel[min(q, m - 1)]
                    ys[o, q] = y[o, jj]
                    ws[o, q] = w[o, jj]
            _fit(ys, ws, obs_k, obs_u, obs_v, p0, p1, p2, sa0, sa1, sg, sep, sub_lanes)
            for k in range(n_nodes):
                for q in range(m):
                    g[k, sel[q]] = sg[k, q]
        _clear_bits(w0, bits, tmp, nl)
        _longest_gap(w0, obs_day, lastd, gmax, nl)
        # the nodes at or before the first / at or after the last clear observation of each lane
        for j in range(nl):
            kfs[j] = 0
            kls[j] = 0
            if ny[j] < min_obs:
                continue
            o = _first_clear(bits, j)
            kfs[j] = obs_k[o]
            dfs[j] = obs_day[o]
            o = _last_clear(bits, j, n_obs - 1)
            kls[j] = min(obs_k[o] + (1 if obs_u[o] > 0 else 0), n_nodes - 1)
            dls[j] = obs_day[o]
        _block_minmax(g, kfs, kls, mn, mx, nl)
        for t0 in range(0, nl, tile):
            tn = min(tile, nl - t0)
            for k in range(n_nodes):
                gk = g[k]
                for q in range(tn):
                    zt[q, k] = gk[t0 + q]
            for q in range(tn):
                j = t0 + q
                if ny[j] < min_obs:
                    continue
                i = i0 + j
                qj, ncj = _analyse(zt[q], kfs[j], kls[j], float(mn[0, j]), float(mx[0, j]), bits, obs_day, day_obs,
                                   j, gmax[0, j], dfs[j], dls[j], ext, year_lo, year_hi, min_amp, rel_amp, base_frac,
                                   peak_frac, min_floor, min_top, max_gap, doy_a, step, res)
                for r in range(N_FLOAT):
                    out[r, i] = res[r]
                qa[i] = qj
                n_cycles[i] = ncj


@njit(parallel=True, cache=True, error_model="numpy")
def phenology_kernel(values, clear, obs_idx, obs_k, obs_u, obs_v, obs_day, day_obs, oy_lo, oy_hi, p0, p1, p2,
                     n_iter, min_obs, vlo, vhi, year_lo, year_hi, min_amp, rel_amp, base_frac, peak_frac, min_floor,
                     min_top, max_gap, doy_a, step, lo_mult, hi_mult, scale_floor, lanes, sub_lanes, tile, n_threads,
                     out, n_clear, qa, n_cycles):  # pragma: no cover - compiled
    """All pixels: ``values``/``clear`` (T, N); observations ``obs_idx`` (rows of ``values`` inside the analysis
    window, in time order) at node ``obs_k`` + fraction ``obs_u`` (``obs_v`` = 1 - u), ``obs_day`` days after node
    0 (whole days, float32); ``day_obs[d]``: the first observation on or after day d. Writes ``out`` (N_FLOAT, N)
    float32 and ``n_clear``/``qa``/``n_cycles`` (N,). The blocks are shared out in chunks over the threads."""
    n = values.shape[1]
    n_blocks = (n + lanes - 1) // lanes
    n_chunks = min(n_blocks, n_threads * 8)
    per_chunk = (n_blocks + n_chunks - 1) // max(n_chunks, 1)
    for c in prange(n_chunks):
        _chunk(c * per_chunk, (c + 1) * per_chunk, values, clear, obs_idx, obs_k, obs_u, obs_v, obs_day, day_obs,
               oy_lo, oy_hi, p0, p1, p2, n_iter, min_obs, vlo, vhi, year_lo, year_hi, min_amp, rel_amp, base_frac,
               peak_frac, min_floor, min_top, max_gap, doy_a, step, lo_mult, hi_mult, scale_floor, lanes, sub_lanes,
               tile, out, n_clear, qa, n_cycles)


def day_first_obs(grid) -> np.ndarray:
    """(span + 2,) int64: the first observation on or after each day 0 .. span + 1 after node 0 (the count at the
    end)."""
    span = int(grid.obs_day[-1])
    return np.searchsorted(grid.obs_day, np.arange(span + 2, dtype=np.float64), side="left").astype(np.int64)


def run(values, clear, grid, params):
    """Run :func:`phenology_kernel` for a prepared grid; returns (out (N_FLOAT, N) float32, n_clear, qa, n_cycles)."""
    n = values.shape[1]
    out = np.empty((N_FLOAT, n), dtype=np.float32)
    n_clear = np.empty(n, dtype=np.int32)
    qa = np.empty(n, dtype=np.uint8)
    n_cycles = np.empty(n, dtype=np.uint8)
    lo, hi = params.valid_range
    f32 = np.float32
    values = np.ascontiguousarray(values, dtype=np.float32)
    clear = np.ascontiguousarray(clear, dtype=np.bool_)
    in_year = np.flatnonzero(grid.obs_in_year)  # a run: the observations are in time order
    oy_lo, oy_hi = (int(in_year[0]), int(in_year[-1]) + 1) if in_year.size else (0, 0)
    phenology_kernel(values, clear, grid.obs_idx, grid.obs_k, grid.obs_u.astype(f32),
                     (1.0 - grid.obs_u).astype(f32), grid.obs_day.astype(f32), day_first_obs(grid), oy_lo, oy_hi,
                     grid.p0.astype(f32), grid.p1.astype(f32), grid.p2.astype(f32), params.robust_iterations,
                     params.min_observations, f32(lo), f32(hi), grid.year_lo, grid.year_hi, params.min_amplitude,
                     params.relative_amplitude, params.base_fraction, params.peak_fraction,
                     params.min_floor_days / params.step, MIN_TOP_DAYS / params.step, f32(params.max_gap),
                     grid.doy_a, params.step, f32(params.reject_below), f32(params.reject_above), f32(SCALE_FLOOR),
                     LANES, SUB_LANES, TILE, numba.get_num_threads(), out, n_clear, qa, n_cycles)
    return out, n_clear, qa, n_cycles
