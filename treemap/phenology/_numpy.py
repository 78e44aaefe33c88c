"""The phenology method in plain NumPy, vectorised over pixels (no numba).

The same steps in the same order as :mod:`treemap.phenology._numba`, with the same float32 arithmetic in the
smoother, so both give the same result (to float rounding in a few sums); it serves as the reference for that
implementation and as the baseline of the benchmark. Loops run over time (nodes, observations) or over the few
extremes of a curve, never over pixels.
"""

from __future__ import annotations

import numpy as np

from treemap.phenology import _numba as K

_F = np.float32
_CHUNK = 8192  # pixels at a time: bounds the (nodes, pixels) temporaries


def run(values, clear, grid, params):
    """Same contract as :func:`treemap.phenology._numba.run`."""
    n = values.shape[1]
    out = np.full((K.N_FLOAT, n), np.nan, dtype=np.float32)
    n_clear = np.zeros(n, dtype=np.int32)
    qa = np.full(n, K.QA_FEW_OBSERVATIONS, dtype=np.uint8)
    n_cycles = np.zeros(n, dtype=np.uint8)
    for i0 in range(0, n, _CHUNK):
        sl = slice(i0, min(n, i0 + _CHUNK))
        o, c, q, m = _run_chunk(values[:, sl], clear[:, sl], grid, params)
        out[:, sl], n_clear[sl], qa[sl], n_cycles[sl] = o, c, q, m
    return out, n_clear, qa, n_cycles


def smooth(values, clear, grid, params):
    """The smoothed curves (n_nodes, N) float32 on the grid (after the robust step); NaN for pixels with too few
    clear observations."""
    ok, v, ny = _usable(values, clear, grid, params)
    dead = ny < params.min_observations
    y = np.where(ok, v, _F(0.0)).astype(np.float32)
    w0 = ok.astype(np.float32)
    y[:, dead] = 0.0
    w0[:, dead] = 1.0
    z = _robust_fit(y, w0, grid, params)
    z[:, dead] = np.nan
    return z


def _usable(values, clear, grid, params):
    """The observations that count (clear, inside ``valid_range``), their values, and the count in the year."""
    lo, hi = _F(params.valid_range[0]), _F(params.valid_range[1])
    v = values[grid.obs_idx].astype(np.float32)
    with np.errstate(invalid="ignore"):
        ok = clear[grid.obs_idx] & (v >= lo) & (v <= hi)
    ny = (ok & grid.obs_in_year[:, None]).sum(axis=0).astype(np.int32)
    return ok, v, ny


def _robust_fit(y, w0, grid, params):
    """The Whittaker fit, then ``robust_iterations`` rejections and refits of the pixels whose weights changed."""
    w = w0.copy()
    obs_u = grid.obs_u.astype(np.float32)
    obs_v = (1.0 - grid.obs_u).astype(np.float32)
    p0, p1, p2 = grid.p0.astype(np.float32), grid.p1.astype(np.float32), grid.p2.astype(np.float32)
    z = _fit(y, w, grid.obs_k, obs_u, obs_v, p0, p1, p2)
    for _ in range(params.robust_iterations):
        changed = _reject(y, w0, w, grid.obs_k, obs_u, obs_v, z, params)
        if not changed.any():
            break
        z[:, changed] = _fit(y[:, changed], w[:, changed], grid.obs_k, obs_u, obs_v, p0, p1, p2)
    return z


def _run_chunk(values, clear, grid, params):
    n = values.shape[1]
    out = np.full((K.N_FLOAT, n), np.nan, dtype=np.float32)
    qa = np.full(n, K.QA_FEW_OBSERVATIONS, dtype=np.uint8)
    n_cycles = np.zeros(n, dtype=np.uint8)
    ok, v, ny = _usable(values, clear, grid, params)
    live = np.flatnonzero(ny >= params.min_observations)
    if live.size == 0:
        return out, ny, qa, n_cycles
    ok = ok[:, live]
    y = np.where(ok, v[:, live], _F(0.0)).astype(np.float32)
    w0 = ok.astype(np.float32)
    z = _robust_fit(y, w0, grid, params)
    n_obs = len(grid.obs_idx)
    first = np.argmax(ok, axis=0)
    last = n_obs - 1 - np.argmax(ok[::-1], axis=0)
    kf = grid.obs_k[first]
    kl = np.minimum(grid.obs_k[last] + (grid.obs_u[last] > 0), grid.n_nodes - 1)
    o, q, m = _analyse(z, kf, kl, w0, grid, params)
    out[:, live] = o
    qa[live] = q
    n_cycles[live] = m
    return out, ny, qa, n_cycles


def _fit(y, w, obs_k, obs_u, obs_v, p0, p1, p2):
    """Weighted Whittaker fit of all columns (pixels), float32; returns z (n_nodes, n)."""
    n_nodes = p0.shape[0]
    n = y.shape[1]
    a0 = np.repeat(p0[:, None], n, axis=1)
    a1 = np.repeat(p1[:, None], n, axis=1)
    g = np.zeros((n_nodes, n), dtype=np.float32)
    for o in range(y.shape[0]):
        k = obs_k[o]
        u = obs_u[o]
        if u == 0:
            a0[k] += w[o]
            g[k] += w[o] * y[o]
        else:
            v = obs_v[o]
            wj = w[o]
            yj = wj * y[o]
            a0[k] += wj * (v * v)
            a1[k] += wj * (u * v)
            a0[k + 1] += wj * (u * u)
            g[k] += v * yj
            g[k + 1] += u * yj
    # factorisation and forward substitution as in the kernel: a0 <- 1/d, a1 <- l1, g <- forward solution
    one = _F(1.0)
    inv = one / a0[0]
    ep = a1[0].copy()
    a0[0] = inv
    a1[0] = ep * inv
    c1 = p2[0]
    lk = a1[0]
    d = a0[1] - lk * ep
    inv = one / d
    e = a1[1] - lk * c1
    a0[1] = inv
    a1[1] = e * inv
    ep = e
    g[1] = g[1] - lk * g[0]
    for k in range(2, n_nodes):
        c1 = p2[k - 1]
        c2 = p2[k - 2]
        c2sq = c2 * c2
        lk = a1[k - 1]
        i2 = a0[k - 2]
        d = a0[k] - lk * ep - c2sq * i2
        inv = one / d
        e = a1[k] - lk * c1
        a0[k] = inv
        a1[k] = e * inv
        ep = e
        g[k] = g[k] - lk * g[k - 1] - (c2 * i2) * g[k - 2]
    last = n_nodes - 1
    x1 = g[last] * a0[last]
    g[last] = x1
    g[last - 1] = g[last - 1] * a0[last - 1] - a1[last - 1] * x1
    for k in range(n_nodes - 3, -1, -1):
        g[k] = a0[k] * (g[k] - p2[k] * g[k + 2]) - a1[k] * g[k + 1]
    return g


def _reject(y, w0, w, obs_k, obs_u, obs_v, z, params):
    """The robust step of :func:`treemap.phenology._numba._reject`; updates ``w`` in place and returns the mask of
    pixels whose weights changed."""
    last = z.shape[0] - 1
    k1 = np.minimum(obs_k + 1, last)
    res = y - (obs_v[:, None] * z[obs_k] + obs_u[:, None] * z[k1])
    sabs = np.zeros(y.shape[1], dtype=np.float32)
    cnt = np.zeros(y.shape[1], dtype=np.float32)
    for o in range(y.shape[0]):  # accumulate in time order, as the kernel does
        sabs += w[o] * np.abs(res[o])
        cnt += w[o]
    s = np.maximum(_F(K.MAD_TO_SIGMA) * sabs / np.maximum(cnt, _F(1.0)), _F(K.SCALE_FLOOR))
    keep = (res >= -_F(params.reject_below) * s) & (res <= _F(params.reject_above) * s)
    new = np.where(keep, w0, _F(0.0))
    changed = (new != w).any(axis=0)
    w[...] = new
    return changed


# ----------------------------------------------------------------------------------------------------- analysis


def _take(z, k):
    """z[k[i], i] for per-pixel node indices k."""
    return np.take_along_axis(z, np.asarray(k)[None, :], axis=0)[0]


def _refine_peak(z, p, kf, kl):
    zp = _take(z, p)
    inner = (p > kf) & (p < kl)
    zl = _take(z, np.where(inner, p - 1, p))
    zr = _take(z, np.where(inner, p + 1, p))
    den = zl - 2.0 * zp + zr
    use = inner & (den < 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        delta = np.where(use, 0.5 * (zl - zr) / np.where(use, den, -1.0), 0.0)
    x = np.where(use, p + delta, p.astype(np.float64))
    v = np.where(use, zp - 0.25 * (zl - zr) * delta, zp)
    return x, v


def _masked_mean(z, mask):
    c = mask.sum(axis=0)
    s = np.where(mask, z, 0.0).sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return s / c, c


def _floor(z, kk, lo, hi, trough, lim):
    span = (kk >= lo) & (kk <= hi)
    base, c = _masked_mean(z, span & (z <= lim))
    for _ in range(K.BASE_PASSES):
        b2, c2 = _masked_mean(z, span & (z <= 2.0 * base - trough))
        base = np.where(c2 > 0, b2, base)
    return base, c


def _top(z, kk, lo, hi, lim):
    return _masked_mean(z, (kk >= lo) & (kk <= hi) & (z >= lim))[0]


def _last_below(z, kk, lo, hi, lim):
    m = (kk >= lo) & (kk <= hi) & (z <= lim)
    k = z.shape[0] - 1 - np.argmax(m[::-1], axis=0)
    return np.where(m.any(axis=0), k, lo)


def _first_below(z, kk, lo, hi, lim):
    m = (kk >= lo) & (kk <= hi) & (z <= lim)
    return np.where(m.any(axis=0), np.argmax(m, axis=0), hi)


def _rise(z, kk, k0, p, thr, xpk):
    m = (kk > k0) & (kk <= p) & (z >= thr)
    found = m.any(axis=0)
    k = np.argmax(m, axis=0)
    km = np.maximum(k - 1, 0)
    zk, zm = _take(z, k), _take(z, km)
    with np.errstate(divide="ignore", invalid="ignore"):
        x = km + np.where(zm < thr, (thr - zm) / (zk - zm), 0.0)  # no extrapolation before k0
    return np.where(found, x, xpk), np.where(found, km, p)


def _fall(z, kk, p, k0, thr, xpk):
    m = (kk >= p) & (kk < k0) & (z >= thr)
    found = m.any(axis=0)
    k = z.shape[0] - 1 - np.argmax(m[::-1], axis=0)
    kp = np.minimum(k + 1, z.shape[0] - 1)
    zk, zp = _take(z, k), _take(z, kp)
    with np.errstate(divide="ignore", invalid="ignore"):
        x = k + np.where(zp < thr, (zk - thr) / (zk - zp), 1.0)  # no extrapolation past k0
    return np.where(found, x, xpk), np.where(found, kp, p)


def _ext(ext, n_ext, e, default):
    """Node of the extreme number ``e`` (per pixel; array or scalar) where it exists, else ``default``."""
    e = np.broadcast_to(np.asarray(e), n_ext.shape)
    has = (e >= 0) & (e < n_ext)
    val = np.abs(ext[np.clip(e, 0, ext.shape[0] - 1), np.arange(n_ext.shape[0])]) - 1
    return np.where(has, val, default), has


def _sides(z, kk, ext, n_ext, e, kf, kl, base_frac):
    p, _ = _ext(ext, n_ext, e, kf)
    tl, _ = _ext(ext, n_ext, e - 1, kf)
    tr, _ = _ext(ext, n_ext, e + 1, kl)
    lo, _ = _ext(ext, n_ext, e - 2, kf)
    hi, _ = _ext(ext, n_ext, e + 2, kl)
    xpk, zpk = _refine_peak(z, p, kf, kl)
    ztl, ztr = _take(z, tl), _take(z, tr)
    bl, cl = _floor(z, kk, lo, p, ztl, ztl + base_frac * (zpk - ztl))
    br, cr = _floor(z, kk, p, hi, ztr, ztr + base_frac * (zpk - ztr))
    return p, tl, tr, xpk, zpk, bl, cl, br, cr


def _zigzag(z, kf, kl, hyst, peak_frac, min_top):
    """Alternating significant extremes per pixel, as in the kernel: (ext (n_nodes + 2, n), n_ext (n,), n_open (n,):
    1 where the last extreme is an open peak, a rise still going at the series end whose top spans ``min_top``
    nodes)."""
    n_nodes, n = z.shape
    cols = np.arange(n)
    ext = np.zeros((n_nodes + 2, n), dtype=np.int64)
    n_ext = np.zeros(n, dtype=np.int64)
    mode = np.zeros(n, dtype=np.int8)
    imax = kf.copy()
    imin = kf.copy()
    vmax = _take(z, kf)
    vmin = vmax.copy()

    def emit(mask, value):
        idx = cols[mask]
        ext[n_ext[idx], idx] = value[mask] if np.ndim(value) else value
        n_ext[idx] += 1

    for k in range(1, n_nodes):
        act = (k > kf) & (k <= kl)
        if not act.any():
            continue
        v = z[k]
        m1 = act & (mode == 1)
        mm = act & (mode == -1)
        m0 = act & (mode == 0)
        # mode 1: looking for the peak
        up1 = m1 & (v > vmax)
        drop = m1 & ~(v > vmax) & (vmax - v >= hyst)
        # mode -1: looking for the trough
        dn1 = mm & (v < vmin)
        rise = mm & ~(v < vmin) & (v - vmin >= hyst)
        emit(drop, imax + 1)
        emit(rise, -(imin + 1))
        imax = np.where(up1, k, imax)
        vmax = np.where(up1, v, vmax)
        imin = np.where(drop, k, imin)
        vmin = np.where(drop, v, vmin)
        mode = np.where(drop, -1, mode).astype(np.int8)
        imin = np.where(dn1, k, imin)
        vmin = np.where(dn1, v, vmin)
        imax = np.where(rise, k, imax)
        vmax = np.where(rise, v, vmax)
        mode = np.where(rise, 1, mode).astype(np.int8)
        # mode 0: both extremes tracked until the first swing
        if m0.any():
            a = m0 & (v > vmax)
            imax = np.where(a, k, imax)
            vmax = np.where(a, v, vmax)
            b = m0 & (v < vmin)
            imin = np.where(b, k, imin)
            vmin = np.where(b, v, vmin)
            up = m0 & (v - vmin >= hyst)
            dn = m0 & (vmax - v >= hyst)
            both = up & dn
            pk_first = both & (imax < imin)
            tr_first = both & ~(imax < imin)
            emit(pk_first, imax + 1)
            emit(pk_first, -(imin + 1))
            emit(tr_first, -(imin + 1))
            emit(tr_first, imax + 1)
            only_up = up & ~dn
            only_dn = dn & ~up
            emit(only_up, -(imin + 1))
            emit(only_dn, imax + 1)
            to1 = pk_first | only_up
            to_m1 = tr_first | only_dn
            mode = np.where(to1, 1, np.where(to_m1, -1, mode)).astype(np.int8)
            imax = np.where(to1, k, imax)
            vmax = np.where(to1, v, vmax)
            imin = np.where(to_m1, k, imin)
            vmin = np.where(to_m1, v, vmin)
    emit((mode == 1) & (imax < kl), imax + 1)
    n_open = np.zeros(n, dtype=np.int64)
    rising = (mode == 1) & (imax >= kl)  # still rising at the series end
    if rising.any():
        tlo = -ext[np.maximum(n_ext - 1, 0), cols] - 1
        zkl = _take(z, kl)
        lim = zkl - peak_frac * (zkl - _take(z, np.clip(tlo, 0, n_nodes - 1)))
        kk = np.arange(n_nodes)[:, None]
        below = (kk > tlo) & (kk <= kl) & (z < lim)
        last_below = np.where(below.any(axis=0), n_nodes - 1 - np.argmax(below[::-1], axis=0), tlo)
        is_open = rising & (kl - last_below >= min_top)
        emit(is_open, kl + 1)
        n_open[is_open] = 1
    emit(mode == -1, -(imin + 1))
    return ext, n_ext, n_open


def _analyse(z32, kf, kl, w0, grid, params):
    n_nodes, n = z32.shape
    z = z32.astype(np.float64)
    kk = np.arange(n_nodes)[:, None]
    step, doy_a = params.step, grid.doy_a
    min_floor = params.min_floor_days / params.step
    bf, pf = params.base_fraction, params.peak_fraction
    out = np.full((K.N_FLOAT, n), np.nan)
    qa = np.full(n, K.QA_NO_CYCLE, dtype=np.uint8)
    n_cyc = np.zeros(n, dtype=np.int64)
    inside = (kk >= kf) & (kk <= kl)
    zmin = np.where(inside, z, np.inf).min(axis=0)
    zmax = np.where(inside, z, -np.inf).max(axis=0)
    rng = zmax - zmin
    flat = rng < params.min_amplitude
    if flat.any():
        ylo = np.maximum(kf, int(np.ceil(grid.year_lo)))
        yhi = np.minimum(kl, int(np.ceil(grid.year_hi)) - 1)
        iny = (kk >= ylo) & (kk <= yhi)
        has = flat & (ylo <= yhi)
        a = np.where(iny, z, np.inf).min(axis=0)
        b = np.where(iny, z, -np.inf).max(axis=0)
        out[K.MINIMUM] = np.where(has, a, np.nan)
        out[K.PEAK_VALUE] = np.where(has, b, np.nan)
        out[K.AMPLITUDE] = np.where(has, b - a, np.nan)
    cyc = ~flat
    hyst = np.maximum(params.min_amplitude, params.relative_amplitude * rng)
    ext, n_ext, n_open = _zigzag(z, kf, kl, np.where(cyc, hyst, np.inf), pf, K.MIN_TOP_DAYS / params.step)
    n_ext = np.where(cyc, n_ext, 0)
    n_open = np.where(cyc, n_open, 0)
    # candidates: peaks whose refined position falls in the year; keep the largest amplitude
    best = np.full(n, -1)
    best_amp = np.full(n, -1.0)
    b = {name: np.zeros(n) for name in ("xpk", "zpk", "bl", "br")}
    b_okl = np.zeros(n, dtype=bool)
    b_okr = np.zeros(n, dtype=bool)
    for e in range(int(n_ext.max(initial=0))):
        is_peak = (e < n_ext - n_open) & (ext[e] > 0)  # an open peak is no candidate
        if not is_peak.any():
            continue
        xpk0, _ = _refine_peak(z, np.where(is_peak, ext[e] - 1, kf), kf, kl)
        cand = is_peak & (xpk0 >= grid.year_lo) & (xpk0 < grid.year_hi)
        if not cand.any():
            continue
        n_cyc += cand
        p, tl, tr, xpk, zpk, bl, cl, br, cr = _sides(z, kk, ext, n_ext, e, kf, kl, bf)
        # a floor at a series end without a confirmed trough must lie min_amplitude below the peak (see the kernel)
        okl = (tl > kf) | ((cl >= min_floor) & ((e > 0) | (zpk - bl >= params.min_amplitude)))
        okr = (tr < kl) | ((cr >= min_floor) & ((e + 1 < n_ext) | (zpk - br >= params.min_amplitude)))
        amp = np.where(okl & okr, zpk - np.minimum(bl, br), np.where(okl, zpk - bl, np.where(okr, zpk - br, -0.5)))
        upd = cand & (amp > best_amp)
        best = np.where(upd, e, best)
        best_amp = np.where(upd, amp, best_amp)
        for name, val in (("xpk", xpk), ("zpk", zpk), ("bl", bl), ("br", br)):
            b[name] = np.where(upd, val, b[name])
        b_okl = np.where(upd, okl, b_okl)
        b_okr = np.where(upd, okr, b_okr)
    none = cyc & (best < 0)
    out[K.MINIMUM] = np.where(none, zmin, out[K.MINIMUM])
    out[K.PEAK_VALUE] = np.where(none, zmax, out[K.PEAK_VALUE])
    out[K.AMPLITUDE] = np.where(none, rng, out[K.AMPLITUDE])
    n_cycles = n_cyc
    got = best >= 0
    cut = got & ~(b_okl | b_okr)
    out[K.PEAK] = np.where(cut, doy_a + step * b["xpk"], out[K.PEAK])
    out[K.PEAK_VALUE] = np.where(cut, b["zpk"], out[K.PEAK_VALUE])
    qa[cut] = K.QA_PARTIAL
    sel = np.flatnonzero(got & ~cut)
    if sel.size:
        o, q = _chosen(z[:, sel], kk, ext[:, sel], n_ext[sel], best[sel], kf[sel], kl[sel], b["xpk"][sel],
                       b["zpk"][sel], b["bl"][sel], b["br"][sel], b_okl[sel], b_okr[sel], w0[:, sel], grid, params)
        out[:, sel] = o
        qa[sel] = q
    return out.astype(np.float32), qa, n_cycles.astype(np.uint8)


def _chosen(z, kk, ext, n_ext, e, kf, kl, xpk, zpk, bl, br, okl, okr, w0, grid, params):
    n = z.shape[1]
    step, doy_a = params.step, grid.doy_a
    bf, pf = params.base_fraction, params.peak_fraction
    out = np.full((K.N_FLOAT, n), np.nan)
    p, _ = _ext(ext, n_ext, e, kf)
    tl, _ = _ext(ext, n_ext, e - 1, kf)
    tr, _ = _ext(ext, n_ext, e + 1, kl)
    mn = np.where(okl & okr, np.minimum(bl, br), np.where(okl, bl, br))
    top = zpk
    zp = _take(z, p)
    if pf > 0.0:
        top = _top(z, kk, tl, tr, zp - pf * (zp - mn))
    okl = okl & (top > bl)  # a side whose base is not below the peak level is not resolved (see the kernel)
    okr = okr & (top > br)
    centre_lim = zp - K.PEAK_CENTRE_FRACTION * (zp - mn)
    x_up, _k = _rise(z, kk, tl, p, centre_lim, xpk)
    x_down, _k = _fall(z, kk, p, tr, centre_lim, xpk)
    out[K.PEAK] = doy_a + step * 0.5 * (x_up + x_down)
    out[K.PEAK_VALUE] = top
    out[K.MINIMUM] = mn
    out[K.AMPLITUDE] = top - mn
    amp = top - bl
    k0 = _last_below(z, kk, tl, p, bl)
    for row, f in ((K.GREENUP, K.F15), (K.MIDGREENUP, K.F50), (K.MATURITY, K.F90)):
        x, k0 = _rise(z, kk, k0, p, bl + f * amp, xpk)
        out[row] = np.where(okl, doy_a + step * x, np.nan)
    amp = top - br
    k0 = _first_below(z, kk, p, tr, br)
    for row, f in ((K.DORMANCY, K.F15), (K.MIDGREENDOWN, K.F50), (K.SENESCENCE, K.F90)):
        x, k0 = _fall(z, kk, p, k0, br + f * amp, xpk)
        out[row] = np.where(okr, doy_a + step * x, np.nan)
    qa = np.where(okl & okr, K.QA_GOOD, K.QA_PARTIAL).astype(np.uint8)
    with np.errstate(invalid="ignore"):
        # each side in order (see the kernel): a vertex fallback is capped at the lower level's crossing
        out[K.MIDGREENUP] = np.where(out[K.MIDGREENUP] < out[K.GREENUP], out[K.GREENUP], out[K.MIDGREENUP])
        out[K.MATURITY] = np.where(out[K.MATURITY] < out[K.MIDGREENUP], out[K.MIDGREENUP], out[K.MATURITY])
        out[K.MIDGREENDOWN] = np.where(out[K.MIDGREENDOWN] > out[K.DORMANCY], out[K.DORMANCY], out[K.MIDGREENDOWN])
        out[K.SENESCENCE] = np.where(out[K.SENESCENCE] > out[K.MIDGREENDOWN], out[K.MIDGREENDOWN], out[K.SENESCENCE])
        crossed = out[K.MATURITY] > out[K.SENESCENCE]  # both sides moved to the vertex (see the kernel)
        vertex = doy_a + step * xpk
        for row in (K.GREENUP, K.MIDGREENUP, K.MATURITY):
            out[row] = np.where(crossed & (out[row] > vertex), vertex, out[row])
        for row in (K.SENESCENCE, K.MIDGREENDOWN, K.DORMANCY):
            out[row] = np.where(crossed & (out[row] < vertex), vertex, out[row])
        out[K.PEAK] = np.where(out[K.PEAK] < out[K.MATURITY], out[K.MATURITY], out[K.PEAK])
        out[K.PEAK] = np.where(out[K.PEAK] > out[K.SENESCENCE], out[K.SENESCENCE], out[K.PEAK])
    out[K.SEASON_LENGTH] = out[K.DORMANCY] - out[K.GREENUP]
    nxt = e + 2 < n_ext
    if nxt.any():
        e2 = np.where(nxt, e + 2, e)
        p2, tl2, tr2, xpk2, zpk2, bl2, _c, _b, _d = _sides(z, kk, ext, n_ext, e2, kf, kl, bf)
        top2 = zpk2
        zp2 = _take(z, p2)
        if pf > 0.0:
            top2 = _top(z, kk, tl2, tr2, zp2 - pf * (zp2 - bl2))
        x, _k = _rise(z, kk, _last_below(z, kk, tl2, p2, bl2), p2, bl2 + K.F15 * (top2 - bl2), xpk2)
        out[K.NEXT_GREENUP] = np.where(nxt, doy_a + step * x, np.nan)
    # QA 4: a date inside a long gap between clear observations (days after node 0, whole for observations)
    day = grid.obs_day.astype(np.float32)
    far = np.float32(K.FAR)
    prev = np.maximum.accumulate(np.where(w0 > 0, day[:, None], -far), axis=0)
    nx = np.minimum.accumulate(np.where(w0 > 0, day[:, None], far)[::-1], axis=0)[::-1]
    n_obs = day.shape[0]
    cols = np.arange(n)
    gap = np.zeros(n, dtype=bool)
    for row in range(7):
        xd = out[row] - doy_a
        lo = np.searchsorted(grid.obs_day, np.where(np.isfinite(xd), xd, 0.0), side="left")
        left = np.where(lo > 0, prev[np.maximum(lo - 1, 0), cols], -far)
        right = np.where(lo < n_obs, nx[np.minimum(lo, n_obs - 1), cols], far)
        gap |= (right - left) > np.float32(params.max_gap)
    qa = np.where((qa == K.QA_GOOD) & gap, K.QA_GAP, qa).astype(np.uint8)
    return out, qa
