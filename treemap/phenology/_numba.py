"""numba kernels of the phenology method (see :mod:`treemap.phenology` for the method itself).

Pixels are processed in blocks of :data:`LANES`. The smoother (assembly, banded LDL' factorisation, solve and the
robust re-weighting) runs with the pixel as the innermost loop, so every time step is a short vector operation over
the block: the recurrences of the banded solve are sequential in time, and interleaving eight independent pixels hides
their latency and lets LLVM use SIMD. The cycle analysis (zig-zag extremes, bases, threshold crossings) is branchy
and runs per pixel on a contiguous copy of its smoothed curve. Blocks are spread over threads with ``prange``.

:mod:`treemap.phenology._numpy` implements the same steps in the same order with NumPy; keep the two in step.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

LANES = 8

# rows of the float output
GREENUP, MIDGREENUP, MATURITY, PEAK, SENESCENCE, MIDGREENDOWN, DORMANCY = range(7)
MINIMUM, PEAK_VALUE, AMPLITUDE, SEASON_LENGTH, NEXT_GREENUP = range(7, 12)
N_FLOAT = 12

QA_GOOD, QA_FEW_OBSERVATIONS, QA_NO_CYCLE, QA_PARTIAL, QA_GAP = 0, 1, 2, 3, 4

_FRACS = (0.15, 0.5, 0.9)
#: least noise scale for the robust weights (index units): keeps exact fits (constant series) finite
SCALE_FLOOR = 1e-3


@njit(cache=True, inline="always")
def _robust_weight(r, s):  # pragma: no cover - compiled
    """Asymmetric bisquare weight of a residual ``r`` (observation minus fit) for a noise scale ``s``.

    Full weight inside [-2 s, +3 s]; the weight tapers to zero at -4 s below (clouds, shadows, haze pull an
    index down) and at +6 s above the fit.
    """
    if r < -2.0 * s:
        q = (r + 2.0 * s) / (2.0 * s)
        if q <= -1.0:
            return 0.0
        q = 1.0 - q * q
        return q * q
    if r > 3.0 * s:
        q = (r - 3.0 * s) / (3.0 * s)
        if q >= 1.0:
            return 0.0
        q = 1.0 - q * q
        return q * q
    return 1.0


@njit(cache=True)
def _smooth_block(y, w, obs_k, obs_u, p0, p1, p2, a0, a1, a2, di, g, z):  # pragma: no cover - compiled
    """Weighted Whittaker fit of a block: solve (B' W B + P) z = B' W y for all lanes.

    ``B`` interpolates the node values linearly to the observation times (node ``obs_k`` with weight 1 - u, the
    next node with weight u); ``P`` = lambda D'D (bands ``p0``, ``p1``, ``p2``) plus a tiny ridge.
    """
    n_nodes = z.shape[0]
    n_obs = y.shape[0]
    for k in range(n_nodes):
        for j in range(LANES):
            a0[k, j] = p0[k]
            a1[k, j] = p1[k]
            a2[k, j] = p2[k]
            g[k, j] = 0.0
    for o in range(n_obs):
        k = obs_k[o]
        u = obs_u[o]
        if u == 0.0:
            for j in range(LANES):
                a0[k, j] += w[o, j]
                g[k, j] += w[o, j] * y[o, j]
        else:
            v = 1.0 - u
            vv = v * v
            uv = u * v
            uu = u * u
            for j in range(LANES):
                wj = w[o, j]
                yj = wj * y[o, j]
                a0[k, j] += wj * vv
                a1[k, j] += wj * uv
                a0[k + 1, j] += wj * uu
                g[k, j] += v * yj
                g[k + 1, j] += u * yj
    # LDL' factorisation with forward substitution: a0 <- d, di <- 1/d, a1 <- l1, a2 <- l2, g <- forward solution
    for j in range(LANES):
        inv = 1.0 / a0[0, j]
        di[0, j] = inv
        a1[0, j] = a1[0, j] * inv
        a2[0, j] = a2[0, j] * inv
    for j in range(LANES):
        l1 = a1[0, j]
        d = a0[1, j] - l1 * l1 * a0[0, j]
        inv = 1.0 / d
        a0[1, j] = d
        di[1, j] = inv
        a1[1, j] = (a1[1, j] - l1 * a2[0, j] * a0[0, j]) * inv
        a2[1, j] = a2[1, j] * inv
        g[1, j] = g[1, j] - l1 * g[0, j]
    for k in range(2, n_nodes):
        for j in range(LANES):
            l1 = a1[k - 1, j]
            l2 = a2[k - 2, j]
            d1 = a0[k - 1, j]
            d = a0[k, j] - l1 * l1 * d1 - l2 * l2 * a0[k - 2, j]
            inv = 1.0 / d
            a0[k, j] = d
            di[k, j] = inv
            a1[k, j] = (a1[k, j] - l1 * a2[k - 1, j] * d1) * inv
            a2[k, j] = a2[k, j] * inv
            g[k, j] = g[k, j] - l1 * g[k - 1, j] - l2 * g[k - 2, j]
    last = n_nodes - 1
    for j in range(LANES):
        z[last, j] = g[last, j] * di[last, j]
        z[last - 1, j] = g[last - 1, j] * di[last - 1, j] - a1[last - 1, j] * z[last, j]
    for k in range(n_nodes - 3, -1, -1):
        for j in range(LANES):
            z[k, j] = g[k, j] * di[k, j] - a1[k, j] * z[k + 1, j] - a2[k, j] * z[k + 2, j]


@njit(cache=True)
def _reweight_block(y, w0, w, obs_k, obs_u, z, scale_floor):  # pragma: no cover - compiled
    """Robust weights from the residuals of the current fit ``z``; the scale is 1.2533 x mean |residual|."""
    n_obs = y.shape[0]
    sabs = np.zeros(LANES)
    cnt = np.zeros(LANES)
    for o in range(n_obs):
        k = obs_k[o]
        u = obs_u[o]
        k1 = k + 1 if u > 0.0 else k
        for j in range(LANES):
            r = y[o, j] - ((1.0 - u) * z[k, j] + u * z[k1, j])
            w[o, j] = r  # residual, turned into a weight below
            sabs[j] += w0[o, j] * abs(r)
            cnt[j] += w0[o, j]
    for j in range(LANES):
        s = 1.2533 * sabs[j] / max(cnt[j], 1.0)
        sabs[j] = max(s, scale_floor)
    for o in range(n_obs):
        for j in range(LANES):
            w[o, j] = w0[o, j] * _robust_weight(w[o, j], sabs[j])


@njit(cache=True)
def _side_base(z, lo, hi, trough, zpk, base_frac):  # pragma: no cover - compiled
    """Robust base of one side of a cycle: the mean of the smoothed values in [lo, hi] that lie within
    ``base_frac`` of the side's amplitude above its trough. Returns (base, number of nodes averaged)."""
    lim = z[trough] + base_frac * (zpk - z[trough])
    s = 0.0
    c = 0
    for k in range(lo, hi + 1):
        if z[k] <= lim:
            s += z[k]
            c += 1
    return s / c, c


@njit(cache=True)
def _rise(z, tl, p, thr, xpk):  # pragma: no cover - compiled
    """First upward crossing of ``thr`` after node ``tl`` (linear between nodes); the peak if none."""
    for k in range(tl + 1, p + 1):
        if z[k] >= thr:
            return k - 1 + (thr - z[k - 1]) / (z[k] - z[k - 1])
    return xpk


@njit(cache=True)
def _fall(z, p, tr, thr, xpk):  # pragma: no cover - compiled
    """Last downward crossing of ``thr`` before node ``tr`` (linear between nodes); the peak if none."""
    for k in range(tr - 1, p - 1, -1):
        if z[k] >= thr:
            return k + (z[k] - thr) / (z[k] - z[k + 1])
    return xpk


@njit(cache=True)
def _gap_at(cpos, m, x):  # pragma: no cover - compiled
    """Length (nodes) of the gap between the clear observations around position ``x`` (sorted ``cpos[:m]``)."""
    lo = 0
    hi = m
    while lo < hi:  # first index with cpos >= x
        mid = (lo + hi) // 2
        if cpos[mid] < x:
            lo = mid + 1
        else:
            hi = mid
    if lo == 0 or lo == m:
        return 1e30
    return cpos[lo] - cpos[lo - 1]


@njit(cache=True)
def _analyse(z, kf, kl, cpos, m, ext, year_lo, year_hi, min_amp, rel_amp, base_frac, min_floor,
             max_gap, doy_a, step, out, col):  # pragma: no cover - compiled
    """Cycle detection and MCD12Q2 metrics of one smoothed curve ``z`` on nodes [kf, kl]; writes ``out[:, col]``
    and returns (qa, number of cycles with their peak in the year)."""
    nan = np.nan
    for r in range(out.shape[0]):
        out[r, col] = nan
    # level over the year (for flat curves) and over the analysed range
    zmin = z[kf]
    zmax = z[kf]
    for k in range(kf + 1, kl + 1):
        if z[k] < zmin:
            zmin = z[k]
        if z[k] > zmax:
            zmax = z[k]
    rng = zmax - zmin
    if rng < min_amp:
        ylo = max(kf, int(np.ceil(year_lo)))
        yhi = min(kl, int(np.ceil(year_hi)) - 1)
        if ylo <= yhi:
            a = z[ylo]
            b = z[ylo]
            for k in range(ylo + 1, yhi + 1):
                a = min(a, z[k])
                b = max(b, z[k])
            out[MINIMUM, col] = a
            out[PEAK_VALUE, col] = b
            out[AMPLITUDE, col] = b - a
        return QA_NO_CYCLE, 0
    hyst = max(min_amp, rel_amp * rng)
    # zig-zag: alternating significant extremes; ext[i] = node, sign +: peak, -: trough (stored as -(k+1))
    n_ext = 0
    mode = 0
    imax = kf
    imin = kf
    for k in range(kf + 1, kl + 1):
        v = z[k]
        if mode == 0:
            if v > z[imax]:
                imax = k
            if v < z[imin]:
                imin = k
            up = v - z[imin] >= hyst
            dn = z[imax] - v >= hyst
            if up and dn:
                if imax < imin:
                    ext[n_ext] = imax + 1
                    ext[n_ext + 1] = -(imin + 1)
                    n_ext += 2
                    mode = 1
                    imax = k
                else:
                    ext[n_ext] = -(imin + 1)
                    ext[n_ext + 1] = imax + 1
                    n_ext += 2
                    mode = -1
                    imin = k
            elif up:
                ext[n_ext] = -(imin + 1)
                n_ext += 1
                mode = 1
                imax = k
            elif dn:
                ext[n_ext] = imax + 1
                n_ext += 1
                mode = -1
                imin = k
        elif mode == 1:
            if v > z[imax]:
                imax = k
            elif z[imax] - v >= hyst:
                ext[n_ext] = imax + 1
                n_ext += 1
                mode = -1
                imin = k
        else:
            if v < z[imin]:
                imin = k
            elif v - z[imin] >= hyst:
                ext[n_ext] = -(imin + 1)
                n_ext += 1
                mode = 1
                imax = k
    if mode == 1 and imax < kl:  # a maximum not followed by a full drop: a peak cut by the end of the series
        ext[n_ext] = imax + 1
        n_ext += 1
    elif mode == -1:  # the lowest point after the last peak
        ext[n_ext] = -(imin + 1)
        n_ext += 1
    # candidate cycles: peaks whose refined date lies in the year; keep the largest amplitude
    best = -1
    best_amp = -1.0
    n_cyc = 0
    b_xpk = 0.0
    b_zpk = 0.0
    b_bl = 0.0
    b_br = 0.0
    b_okl = False
    b_okr = False
    for e in range(n_ext):
        if ext[e] < 0:
            continue
        p = ext[e] - 1
        if p > kf and p < kl:
            zl = z[p - 1]
            zr = z[p + 1]
            den = zl - 2.0 * z[p] + zr
            delta = 0.5 * (zl - zr) / den if den < 0.0 else 0.0
            xpk = p + delta
            zpk = z[p] - 0.25 * (zl - zr) * delta
        else:
            xpk = float(p)
            zpk = z[p]
        if xpk < year_lo or xpk >= year_hi:
            continue
        n_cyc += 1
        tl = -ext[e - 1] - 1 if e > 0 else kf
        tr = -ext[e + 1] - 1 if e + 1 < n_ext else kl
        lo = ext[e - 2] - 1 if e > 1 else kf
        hi = ext[e + 2] - 1 if e + 2 < n_ext else kl
        bl, cl = _side_base(z, lo, p, tl, zpk, base_frac)
        br, cr = _side_base(z, p, hi, tr, zpk, base_frac)
        okl = tl > kf or cl >= min_floor
        okr = tr < kl or cr >= min_floor
        if okl and okr:
            amp = zpk - min(bl, br)
        elif okl:
            amp = zpk - bl
        elif okr:
            amp = zpk - br
        else:
            amp = 0.0
        if amp > best_amp:
            best_amp = amp
            best = e
            b_xpk = xpk
            b_zpk = zpk
            b_bl = bl
            b_br = br
            b_okl = okl
            b_okr = okr
    if best < 0 or not (b_okl or b_okr):
        out[MINIMUM, col] = zmin
        out[PEAK_VALUE, col] = zmax
        out[AMPLITUDE, col] = rng
        return QA_NO_CYCLE, n_cyc
    e = best
    p = ext[e] - 1
    tl = -ext[e - 1] - 1 if e > 0 else kf
    tr = -ext[e + 1] - 1 if e + 1 < n_ext else kl
    out[PEAK, col] = doy_a + step * b_xpk
    out[PEAK_VALUE, col] = b_zpk
    qa = QA_GOOD
    if b_okl:
        amp = b_zpk - b_bl
        for i in range(3):
            x = _rise(z, tl, p, b_bl + _FRACS[i] * amp, b_xpk)
            out[i, col] = doy_a + step * x
    else:
        qa = QA_PARTIAL
    if b_okr:
        amp = b_zpk - b_br
        for i in range(3):
            x = _fall(z, p, tr, b_br + _FRACS[i] * amp, b_xpk)
            out[6 - i, col] = doy_a + step * x
    else:
        qa = QA_PARTIAL
    if b_okl and b_okr:
        mn = min(b_bl, b_br)
    elif b_okl:
        mn = b_bl
    else:
        mn = b_br
    out[MINIMUM, col] = mn
    out[AMPLITUDE, col] = b_zpk - mn
    out[SEASON_LENGTH, col] = out[DORMANCY, col] - out[GREENUP, col]
    # greenup of the following cycle (its left side is this cycle's right trough)
    if e + 2 < n_ext:
        p2 = ext[e + 2] - 1
        if p2 > kf and p2 < kl:
            zl = z[p2 - 1]
            zr = z[p2 + 1]
            den = zl - 2.0 * z[p2] + zr
            delta = 0.5 * (zl - zr) / den if den < 0.0 else 0.0
            xpk2 = p2 + delta
            zpk2 = z[p2] - 0.25 * (zl - zr) * delta
        else:
            xpk2 = float(p2)
            zpk2 = z[p2]
        b2, _c2 = _side_base(z, p, p2, tr, zpk2, base_frac)
        x = _rise(z, tr, p2, b2 + _FRACS[0] * (zpk2 - b2), xpk2)
        out[NEXT_GREENUP, col] = doy_a + step * x
    if qa == QA_GOOD:
        for i in range(7):
            x = (out[i, col] - doy_a) / step
            if _gap_at(cpos, m, x) > max_gap:
                qa = QA_GAP
                break
    return qa, n_cyc


@njit(parallel=True, cache=True)
def phenology_kernel(values, clear, obs_idx, obs_k, obs_u, obs_in_year, p0, p1, p2, n_iter, min_obs, vlo, vhi,
                     year_lo, year_hi, min_amp, rel_amp, base_frac, min_floor, max_gap, doy_a, step, scale_floor,
                     out, n_clear, qa, n_cycles):  # pragma: no cover - compiled
    """All pixels: ``values``/``clear`` (T, N); observations ``obs_idx`` (rows of ``values`` inside the analysis
    window, in time order) at grid nodes ``obs_k`` + fraction ``obs_u``. Writes ``out`` (N_FLOAT, N) float32 and
    ``n_clear``/``qa``/``n_cycles`` (N,)."""
    n = values.shape[1]
    n_obs = obs_idx.shape[0]
    n_nodes = p0.shape[0]
    n_blocks = (n + LANES - 1) // LANES
    n_chunks = min(n_blocks, numba.get_num_threads() * 16)
    per_chunk = (n_blocks + n_chunks - 1) // max(n_chunks, 1)
    for c in prange(n_chunks):
        y = np.empty((n_obs, LANES))
        w0 = np.empty((n_obs, LANES))
        w = np.empty((n_obs, LANES))
        a0 = np.empty((n_nodes, LANES))
        a1 = np.empty((n_nodes, LANES))
        a2 = np.empty((n_nodes, LANES))
        g = np.empty((n_nodes, LANES))
        di = np.empty((n_nodes, LANES))
        z = np.empty((n_nodes, LANES))
        zc = np.empty(n_nodes)
        cpos = np.empty(n_obs)
        ext = np.empty(n_nodes + 2, dtype=np.int64)
        res = np.empty((N_FLOAT, 1))
        ny = np.zeros(LANES, dtype=np.int64)
        for b in range(c * per_chunk, min((c + 1) * per_chunk, n_blocks)):
            i0 = b * LANES
            nl = min(LANES, n - i0)
            ny[:] = 0
            for o in range(n_obs):
                t = obs_idx[o]
                iy = obs_in_year[o]
                for j in range(LANES):
                    ok = False
                    v = 0.0
                    if j < nl:
                        v = values[t, i0 + j]
                        ok = clear[t, i0 + j] and v >= vlo and v <= vhi
                    if ok:
                        y[o, j] = v
                        w0[o, j] = 1.0
                        w[o, j] = 1.0
                        if iy:
                            ny[j] += 1
                    else:
                        y[o, j] = 0.0
                        w0[o, j] = 0.0
                        w[o, j] = 0.0
            any_ok = False
            for j in range(nl):
                if ny[j] >= min_obs:
                    any_ok = True
            if not any_ok:
                for j in range(nl):
                    for r in range(N_FLOAT):
                        out[r, i0 + j] = np.nan
                    n_clear[i0 + j] = ny[j]
                    qa[i0 + j] = QA_FEW_OBSERVATIONS
                    n_cycles[i0 + j] = 0
                continue
            _smooth_block(y, w, obs_k, obs_u, p0, p1, p2, a0, a1, a2, di, g, z)
            for _it in range(n_iter):
                _reweight_block(y, w0, w, obs_k, obs_u, z, scale_floor)
                _smooth_block(y, w, obs_k, obs_u, p0, p1, p2, a0, a1, a2, di, g, z)
            for j in range(nl):
                i = i0 + j
                n_clear[i] = ny[j]
                if ny[j] < min_obs:
                    for r in range(N_FLOAT):
                        out[r, i] = np.nan
                    qa[i] = QA_FEW_OBSERVATIONS
                    n_cycles[i] = 0
                    continue
                m = 0
                for o in range(n_obs):
                    if w0[o, j] > 0.0:
                        cpos[m] = obs_k[o] + obs_u[o]
                        m += 1
                kf = int(cpos[0])
                kl = int(np.ceil(cpos[m - 1]))
                for k in range(n_nodes):
                    zc[k] = z[k, j]
                q, nc = _analyse(zc, kf, kl, cpos, m, ext, year_lo, year_hi, min_amp, rel_amp, base_frac,
                                 min_floor, max_gap, doy_a, step, res, 0)
                for r in range(N_FLOAT):
                    out[r, i] = res[r, 0]
                qa[i] = q
                n_cycles[i] = nc


def run(values, clear, grid, params):
    """Run :func:`phenology_kernel` for a prepared grid; returns (out (N_FLOAT, N) float32, n_clear, qa, n_cycles)."""
    n = values.shape[1]
    out = np.empty((N_FLOAT, n), dtype=np.float32)
    n_clear = np.empty(n, dtype=np.int32)
    qa = np.empty(n, dtype=np.uint8)
    n_cycles = np.empty(n, dtype=np.uint8)
    lo, hi = params.valid_range
    phenology_kernel(values, clear, grid.obs_idx, grid.obs_k, grid.obs_u, grid.obs_in_year, grid.p0, grid.p1,
                     grid.p2, params.robust_iterations, params.min_observations, lo, hi, grid.year_lo, grid.year_hi,
                     params.min_amplitude, params.relative_amplitude, params.base_fraction,
                     params.min_floor_days / params.step, params.max_gap / params.step, grid.doy_a, params.step,
                     SCALE_FLOOR, out, n_clear, qa, n_cycles)
    return out, n_clear, qa, n_cycles
