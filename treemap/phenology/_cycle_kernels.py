"""Per-pixel cycle analysis of the phenology method: one smoothed curve at a time.

Extremes of the block's curves, the zig-zag search for significant peaks and troughs, the robust base and top
levels, the threshold crossings of the MCD12Q2 dates, the gap test, and :func:`_analyse`, which combines them into
the metrics and QA code of one pixel.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from treemap.phenology._block_kernels import _last_clear, _next_clear
from treemap.phenology._jit import (_FAR, _KERNEL, _REDUCTION, _ZERO, AMPLITUDE, BASE_PASSES, DORMANCY, F15, F50, F90,
                                    GREENUP, MATURITY, MIDGREENDOWN, MIDGREENUP, MINIMUM, N_FLOAT, NEXT_GREENUP, PEAK,
                                    PEAK_CENTRE_FRACTION, PEAK_VALUE, QA_GAP, QA_GOOD, QA_NO_CYCLE, QA_PARTIAL,
                                    SEASON_LENGTH, SENESCENCE)

# Loops run over slices from index 0 rather than over range(lo, hi): numba guards every index that may be negative
# (a compare and a select per access), which blocks vectorisation and costs more than the loop body.


@njit(**_KERNEL)
def _block_minmax(g, kfs, kls, mn, mx, nl):  # pragma: no cover - compiled
    """Smallest and largest smoothed value of each lane on its nodes [kf, kl] (a vector pass over the block).
    ``mn``/``mx`` (2, lanes): the running values alternate between the two rows, since a read-modify-write of one
    row would be made into a masked store (very slow on some x86 cores); the result is left in row 0."""
    big = np.float32(np.inf)
    off = np.float32(1e30)
    for j in range(nl):
        mn[0, j] = big
        mx[0, j] = -big
    n_nodes = g.shape[0]
    for k in range(n_nodes + (n_nodes & 1)):  # an even count, so that the result ends in row 0
        gk = g[min(k, n_nodes - 1)]
        src = k & 1
        a0 = mn[src]
        b0 = mx[src]
        a1 = mn[1 - src]
        b1 = mx[1 - src]
        for j in range(nl):
            # pushed far out of range outside [kf, kl]
            pen = _ZERO if (k >= kfs[j]) & (k <= kls[j]) else off
            x = gk[j]
            a1[j] = min(a0[j], x + pen)
            b1[j] = max(b0[j], x - pen)


@njit(**_KERNEL)
def _minmax(z, lo, hi):  # pragma: no cover - compiled
    """Smallest and largest value on nodes [lo, hi]."""
    zs = z[lo:hi + 1]
    a = zs[0]
    b = a
    for k in range(1, zs.shape[0]):
        x = zs[k]
        a = x if x < a else a
        b = x if x > b else b
    return a, b


@njit(**_KERNEL)
def _refine_peak(z, p, kf, kl):  # pragma: no cover - compiled
    """Position and value of the vertex of the parabola through the nodes around peak node ``p``."""
    if p > kf and p < kl:
        zl = z[p - 1]
        zr = z[p + 1]
        den = zl - 2.0 * z[p] + zr
        if den < 0.0:
            delta = 0.5 * (zl - zr) / den
            return p + delta, z[p] - 0.25 * (zl - zr) * delta
    return float(p), z[p]


@njit(**_REDUCTION)
def _sum_below(zs, lim):  # pragma: no cover - compiled
    """Sum and count of the values of ``zs`` at or below ``lim`` (fastmath: vectorised, so summed in another order
    than NumPy does; the values are finite)."""
    s = 0.0
    c = 0.0
    for k in range(zs.shape[0]):
        x = zs[k]
        m = x <= lim
        s += x if m else 0.0
        c += 1.0 if m else 0.0
    return s, c


@njit(**_REDUCTION)
def _sum_above(zs, lim):  # pragma: no cover - compiled
    """Sum and count of the values of ``zs`` at or above ``lim`` (see :func:`_sum_below`)."""
    s = 0.0
    c = 0.0
    for k in range(zs.shape[0]):
        x = zs[k]
        m = x >= lim
        s += x if m else 0.0
        c += 1.0 if m else 0.0
    return s, c


@njit(**_KERNEL)
def _floor(z, lo, hi, trough, lim):  # pragma: no cover - compiled
    """Base level of the nodes [lo, hi] whose lowest value is ``trough``, and the count of values at or below
    ``lim`` (how long the floor is).

    The first estimate is the mean of the values at or below ``lim``; it sits above the floor where the band also
    holds the tails of the rise and fall. Each of :data:`BASE_PASSES` refinements takes the mean of the values at or
    below 2 x base - trough, a band as far above the base as the trough is below it: on a flat floor with noise
    that band shrinks to the floor's own spread and drops the tails, on a V-shaped trough (no floor) it keeps the
    base where it is."""
    zs = z[lo:hi + 1]
    s, c = _sum_below(zs, lim)
    base = s / c
    for _ in range(BASE_PASSES):
        s2, c2 = _sum_below(zs, 2.0 * base - trough)
        if c2 > 0.0:
            base = s2 / c2
    return base, c


@njit(**_KERNEL)
def _top(z, lo, hi, lim):  # pragma: no cover - compiled
    """Mean of the values on nodes [lo, hi] at or above ``lim``."""
    s, c = _sum_above(z[lo:hi + 1], lim)
    return s / c


@njit(**_KERNEL)
def _sides(z, ext, n_ext, e, kf, kl, base_frac, right):  # pragma: no cover - compiled
    """The cycle of the peak ``ext[e]``: its node, troughs, refined peak and the robust base of each side.

    Returns (p, tl, tr, xpk, zpk, bl, cl, br, cr): the base of a side comes from the values between the
    neighbouring peak (or series end) and this peak that lie within ``base_frac`` of the side's amplitude above its
    trough (:func:`_floor`); cl/cr count them. ``right=False`` skips the right base (returned as NaN, count 0).
    """
    p = ext[e] - 1
    tl = -ext[e - 1] - 1 if e > 0 else kf
    tr = -ext[e + 1] - 1 if e + 1 < n_ext else kl
    lo = ext[e - 2] - 1 if e > 1 else kf
    hi = ext[e + 2] - 1 if e + 2 < n_ext else kl
    xpk, zpk = _refine_peak(z, p, kf, kl)
    bl, cl = _floor(z, lo, p, z[tl], z[tl] + base_frac * (zpk - z[tl]))
    br, cr = np.nan, 0.0
    if right:
        br, cr = _floor(z, p, hi, z[tr], z[tr] + base_frac * (zpk - z[tr]))
    return p, tl, tr, xpk, zpk, bl, cl, br, cr


@njit(**_KERNEL)
def _last_below(z, lo, hi, lim):  # pragma: no cover - compiled
    """The last node in [lo, hi] at or below ``lim`` (``lo`` if none): where the final rise to a peak leaves the
    floor, so that a noise bump in the dormant season cannot pass for the greenup."""
    zs = z[lo:hi + 1]
    for i in range(zs.shape[0] - 1, -1, -1):
        if zs[i] <= lim:
            return lo + i
    return lo


@njit(**_KERNEL)
def _first_below(z, lo, hi, lim):  # pragma: no cover - compiled
    """The first node in [lo, hi] at or below ``lim`` (``hi`` if none): where the fall after a peak reaches the
    floor."""
    zs = z[lo:hi + 1]
    for i in range(zs.shape[0]):
        if zs[i] <= lim:
            return lo + i
    return hi


@njit(**_KERNEL)
def _rise(z, k0, p, thr, xpk):  # pragma: no cover - compiled
    """First upward crossing of ``thr`` on nodes (k0, p] (linear between nodes) and the node before it; the peak
    position if the curve never gets there. Never outside [k0, p]: a curve already at ``thr`` on node k0 crosses
    there (no extrapolation before the range, e.g. the series start)."""
    zs = z[k0:p + 1]
    for i in range(1, zs.shape[0]):
        if zs[i] >= thr:
            k = k0 + i
            a = zs[i - 1]
            return k - 1 + ((thr - a) / (zs[i] - a) if a < thr else 0.0), k - 1
    return xpk, p


@njit(**_KERNEL)
def _fall(z, p, k0, thr, xpk):  # pragma: no cover - compiled
    """Last downward crossing of ``thr`` on nodes [p, k0) (linear between nodes) and the node after it; the peak
    position if the curve never gets there. Never outside [p, k0]: a curve still at ``thr`` on node k0 crosses
    there (no extrapolation past the range, e.g. the series end)."""
    zs = z[p:k0 + 1]
    for i in range(zs.shape[0] - 2, -1, -1):
        if zs[i] >= thr:
            k = p + i
            b = zs[i + 1]
            return k + ((zs[i] - thr) / (zs[i] - b) if b < thr else 1.0), k + 1
    return xpk, p


@njit(**_KERNEL)
def _gap_at(bits, obs_day, day_obs, j, xd):  # pragma: no cover - compiled
    """Days between the clear observations of lane ``j`` on either side of day ``xd`` (days after node 0): the
    first observation at or after ``xd`` is ``day_obs[ceil(xd)]`` (observation days are whole), the clear ones
    around it come from the lane's bits."""
    n_obs = obs_day.shape[0]
    top = day_obs.shape[0] - 1
    xd = min(max(xd, 0.0), float(top))
    c = int(xd)
    c += 1 if c < xd else 0  # ceil
    o = day_obs[c]
    q = _last_clear(bits, j, o - 1) if o > 0 else -1
    left = obs_day[q] if q >= 0 else -_FAR
    q = _next_clear(bits, j, o) if o < n_obs else -1
    right = obs_day[q] if q >= 0 else _FAR
    return right - left


@njit(**_KERNEL)
def _zigzag(z, kf, kl, hyst, peak_frac, min_top, ext):  # pragma: no cover - compiled
    """Alternating significant extremes of ``z`` on nodes [kf, kl] into ``ext``: k + 1 for a peak at node k,
    -(k + 1) for a trough. An extreme counts once the curve has moved ``hyst`` away from it; at the series end the
    last maximum counts if the curve fell after it, the last minimum always. A rise still going at the series end
    (the maximum on the last node) is appended as an open peak, for the next-cycle greenup only, when its top (the
    values within ``peak_frac`` of the rise below the last one) spans ``min_top`` nodes. Returns (number of
    extremes, 1 if the last is an open peak else 0). Works on nodes counted from ``kf``."""
    zs = z[kf:kl + 1]
    last = kl - kf
    n_ext = 0
    imax = 0
    imin = 0
    vmax = zs[0]
    vmin = zs[0]
    mode = 0
    k = 1
    while k <= last:  # until the first swing both extremes are tracked
        v = zs[k]
        if v > vmax:
            imax = k
            vmax = v
        if v < vmin:
            imin = k
            vmin = v
        up = v - vmin >= hyst
        dn = vmax - v >= hyst
        if up and dn:  # both at once: the earlier extreme first
            if imax < imin:
                ext[0] = imax + kf + 1
                ext[1] = -(imin + kf + 1)
                mode = 1
                imax = k
                vmax = v
            else:
                ext[0] = -(imin + kf + 1)
                ext[1] = imax + kf + 1
                mode = -1
                imin = k
                vmin = v
            n_ext = 2
        elif up:
            ext[0] = -(imin + kf + 1)
            n_ext = 1
            mode = 1
            imax = k
            vmax = v
        elif dn:
            ext[0] = imax + kf + 1
            n_ext = 1
            mode = -1
            imin = k
            vmin = v
        k += 1
        if mode != 0:
            break
    while k <= last:
        if mode == 1:  # climbing: track the running maximum; leave on a confirmed drop
            swing = False
            while k <= last:
                kend = last
                if k + 3 <= last:  # four nodes at once when none of them can confirm a drop (short chain)
                    x0 = zs[k]
                    x1 = zs[k + 1]
                    x2 = zs[k + 2]
                    x3 = zs[k + 3]
                    m01 = x1 > x0
                    m23 = x3 > x2
                    i01 = k + 1 if m01 else k
                    v01 = x1 if m01 else x0
                    i23 = k + 3 if m23 else k + 2
                    v23 = x3 if m23 else x2
                    m = v23 > v01
                    ib = i23 if m else i01
                    vb = v23 if m else v01
                    c = vb > vmax
                    hi4 = vb if c else vmax
                    if hi4 - min(min(x0, x1), min(x2, x3)) < hyst:
                        imax = ib if c else imax
                        vmax = hi4
                        k += 4
                        continue
                    kend = k + 3
                while k <= kend:  # node by node
                    v = zs[k]
                    c = v > vmax
                    imax = k if c else imax
                    vmax = v if c else vmax
                    if vmax - v >= hyst:
                        swing = True
                        break
                    k += 1
                if swing:
                    break
            if not swing:
                break
            ext[n_ext] = imax + kf + 1
            n_ext += 1
            mode = -1
            imin = k
            vmin = zs[k]
        else:  # falling: the same for the running minimum and a confirmed rise
            swing = False
            while k <= last:
                kend = last
                if k + 3 <= last:
                    x0 = zs[k]
                    x1 = zs[k + 1]
                    x2 = zs[k + 2]
                    x3 = zs[k + 3]
                    m01 = x1 < x0
                    m23 = x3 < x2
                    i01 = k + 1 if m01 else k
                    v01 = x1 if m01 else x0
                    i23 = k + 3 if m23 else k + 2
                    v23 = x3 if m23 else x2
                    m = v23 < v01
                    ib = i23 if m else i01
                    vb = v23 if m else v01
                    c = vb < vmin
                    lo4 = vb if c else vmin
                    if max(max(x0, x1), max(x2, x3)) - lo4 < hyst:
                        imin = ib if c else imin
                        vmin = lo4
                        k += 4
                        continue
                    kend = k + 3
                while k <= kend:
                    v = zs[k]
                    c = v < vmin
                    imin = k if c else imin
                    vmin = v if c else vmin
                    if v - vmin >= hyst:
                        swing = True
                        break
                    k += 1
                if swing:
                    break
            if not swing:
                break
            ext[n_ext] = -(imin + kf + 1)
            n_ext += 1
            mode = 1
            imax = k
            vmax = zs[k]
        k += 1
    n_open = 0
    if mode == 1:
        if imax < last:  # a maximum without the full drop after it: a peak cut by the series end
            ext[n_ext] = imax + kf + 1
            n_ext += 1
        else:  # still rising at the series end
            tlo = -ext[n_ext - 1] - 1 - kf
            lim = zs[last] - peak_frac * (zs[last] - zs[tlo])
            m = 0
            for q in range(last, tlo, -1):
                if zs[q] < lim:
                    break
                m += 1
            if m >= min_top:
                ext[n_ext] = kl + 1
                n_ext += 1
                n_open = 1
    elif mode == -1:  # the lowest point after the last peak
        ext[n_ext] = -(imin + kf + 1)
        n_ext += 1
    return n_ext, n_open


@njit(**_KERNEL)
def _analyse(z, kf, kl, zmin, zmax, bits, obs_day, day_obs, lane, gap_max, day_first, day_last, ext, year_lo,
             year_hi, min_amp, rel_amp, base_frac, peak_frac, min_floor, min_top, max_gap, doy_a, step,
             out):  # pragma: no cover - compiled
    """Cycle detection and MCD12Q2 metrics of one smoothed curve ``z`` on nodes [kf, kl] (its smallest and largest
    value there ``zmin``, ``zmax``); fills ``out`` (N_FLOAT,) and returns (qa, number of cycles peaking in the
    year). The lane's clear observations: ``bits`` (see :func:`_clear_bits`), the longest gap between them
    ``gap_max`` and the days of the first and last one."""
    for r in range(N_FLOAT):
        out[r] = np.nan
    rng = zmax - zmin
    if rng < min_amp:  # flat: evergreen, bare, constant
        ylo = max(kf, int(np.ceil(year_lo)))
        yhi = min(kl, int(np.ceil(year_hi)) - 1)
        if ylo <= yhi:
            a, b = _minmax(z, ylo, yhi)
            out[MINIMUM] = a
            out[PEAK_VALUE] = b
            out[AMPLITUDE] = b - a
        return QA_NO_CYCLE, 0
    hyst = max(min_amp, rel_amp * rng)
    n_ext, n_open = _zigzag(z, kf, kl, hyst, peak_frac, min_top, ext)
    # the cycles peaking in the year (an open peak is not one); the largest one is reported
    best = -1
    n_cyc = 0
    best_amp = -1.0
    b_xpk = 0.0
    b_zpk = 0.0
    b_bl = 0.0
    b_br = 0.0
    b_okl = False
    b_okr = False
    for e in range(n_ext - n_open):
        if ext[e] < 0:
            continue
        xpk, _z = _refine_peak(z, ext[e] - 1, kf, kl)
        if xpk < year_lo or xpk >= year_hi:
            continue
        n_cyc += 1
        p, tl, tr, xpk, zpk, bl, cl, br, cr = _sides(z, ext, n_ext, e, kf, kl, base_frac, True)
        # a side at the series start or end needs a floor min_floor long; where the zig-zag confirmed no trough
        # there (the peak is the first or last extreme), that floor must also lie min_amp below the peak (a
        # plateau level with the top is no base: its thresholds would not be crossed inside the series)
        okl = tl > kf or (cl >= min_floor and (e > 0 or zpk - bl >= min_amp))
        okr = tr < kl or (cr >= min_floor and (e + 1 < n_ext or zpk - br >= min_amp))
        if okl and okr:
            amp = zpk - min(bl, br)
        elif okl:
            amp = zpk - bl
        elif okr:
            amp = zpk - br
        else:
            amp = -0.5
        if amp > best_amp:
            best_amp = amp
            best = e
            b_xpk = xpk
            b_zpk = zpk
            b_bl = bl
            b_br = br
            b_okl = okl
            b_okr = okr
    if best < 0:
        out[MINIMUM] = zmin
        out[PEAK_VALUE] = zmax
        out[AMPLITUDE] = rng
        return QA_NO_CYCLE, n_cyc
    if not (b_okl or b_okr):  # a peak, but no usable side: the series is too short around it
        out[PEAK] = doy_a + step * b_xpk
        out[PEAK_VALUE] = b_zpk
        return QA_PARTIAL, n_cyc
    e = best
    p = ext[e] - 1
    tl = -ext[e - 1] - 1 if e > 0 else kf
    tr = -ext[e + 1] - 1 if e + 1 < n_ext else kl
    if b_okl and b_okr:
        mn = min(b_bl, b_br)
    elif b_okl:
        mn = b_bl
    else:
        mn = b_br
    # robust peak level: the mean of the cycle's top rather than its single (noise-lifted) maximum
    top = b_zpk
    if peak_frac > 0.0:
        top = _top(z, tl, tr, z[p] - peak_frac * (z[p] - mn))
    # a side whose base is not below the peak level has no thresholds to cross (a plateau at a series end with a
    # large peak_fraction): it is not resolved
    b_okl = b_okl and top > b_bl
    b_okr = b_okr and top > b_br
    # the peak date: the centre of the top, midway between the curve's upward and downward crossings of a level just
    # under the maximum (the maximum alone wanders along a flat top with the noise)
    centre_lim = z[p] - PEAK_CENTRE_FRACTION * (z[p] - mn)
    x_up, _k = _rise(z, tl, p, centre_lim, b_xpk)
    x_down, _k = _fall(z, p, tr, centre_lim, b_xpk)
    out[PEAK] = doy_a + step * 0.5 * (x_up + x_down)
    out[PEAK_VALUE] = top
    out[MINIMUM] = mn
    out[AMPLITUDE] = top - mn
    qa = QA_GOOD
    if b_okl:
        amp = top - b_bl
        k0 = _last_below(z, tl, p, b_bl)
        x, k0 = _rise(z, k0, p, b_bl + F15 * amp, b_xpk)
        out[GREENUP] = doy_a + step * x
        x, k0 = _rise(z, k0, p, b_bl + F50 * amp, b_xpk)
        out[MIDGREENUP] = doy_a + step * x
        x, k0 = _rise(z, k0, p, b_bl + F90 * amp, b_xpk)
        out[MATURITY] = doy_a + step * x
    else:
        qa = QA_PARTIAL
    if b_okr:
        amp = top - b_br
        k0 = _first_below(z, p, tr, b_br)
        x, k0 = _fall(z, p, k0, b_br + F15 * amp, b_xpk)
        out[DORMANCY] = doy_a + step * x
        x, k0 = _fall(z, p, k0, b_br + F50 * amp, b_xpk)
        out[MIDGREENDOWN] = doy_a + step * x
        x, k0 = _fall(z, p, k0, b_br + F90 * amp, b_xpk)
        out[SENESCENCE] = doy_a + step * x
    else:
        qa = QA_PARTIAL
    # each side in order: where a level is never reached on the nodes, its crossing falls back to the parabola's
    # vertex, which may lie beyond the linear crossing of a lower level on the peak's segment; it is capped there
    if out[MIDGREENUP] < out[GREENUP]:
        out[MIDGREENUP] = out[GREENUP]
    if out[MATURITY] < out[MIDGREENUP]:
        out[MATURITY] = out[MIDGREENUP]
    if out[MIDGREENDOWN] > out[DORMANCY]:
        out[MIDGREENDOWN] = out[DORMANCY]
    if out[SENESCENCE] > out[MIDGREENDOWN]:
        out[SENESCENCE] = out[MIDGREENDOWN]
    # the two sides meet at the vertex: a linear crossing on the peak's own segments can land past it (the vertex
    # lies up to half a node from the peak node), and where that crosses maturity over senescence, both are moved
    # to the vertex
    if out[MATURITY] > out[SENESCENCE]:
        vertex = doy_a + step * b_xpk
        for r in (GREENUP, MIDGREENUP, MATURITY):
            if out[r] > vertex:
                out[r] = vertex
        for r in (SENESCENCE, MIDGREENDOWN, DORMANCY):
            if out[r] < vertex:
                out[r] = vertex
    # the centre of the top lies between maturity and senescence (NaN bounds do not count)
    if out[PEAK] < out[MATURITY]:
        out[PEAK] = out[MATURITY]
    if out[PEAK] > out[SENESCENCE]:
        out[PEAK] = out[SENESCENCE]
    out[SEASON_LENGTH] = out[DORMANCY] - out[GREENUP]
    # greenup of the following cycle (its left side is this cycle's right trough), by the same rules; that cycle
    # may be an open peak (still rising at the series end, its top reached)
    if e + 2 < n_ext:
        p2, tl2, tr2, xpk2, zpk2, bl2, _cl, br2, _cr = _sides(z, ext, n_ext, e + 2, kf, kl, base_frac, False)
        top2 = zpk2
        if peak_frac > 0.0:
            top2 = _top(z, tl2, tr2, z[p2] - peak_frac * (z[p2] - bl2))
        x, _k = _rise(z, _last_below(z, tl2, p2, bl2), p2, bl2 + F15 * (top2 - bl2), xpk2)
        out[NEXT_GREENUP] = doy_a + step * x
    if qa == QA_GOOD:
        # the exact test only where it can fail: a gap longer than max_gap somewhere, or a date outside the clear
        # observations (the gap around a date inside them is one between consecutive clear observations)
        inside = gap_max <= max_gap
        for i in range(7):
            xd = out[i] - doy_a
            inside &= (xd > day_first) & (xd <= day_last)
        if not inside:
            for i in range(7):
                if _gap_at(bits, obs_day, day_obs, lane, out[i] - doy_a) > max_gap:
                    qa = QA_GAP
                    break
    return qa, n_cyc
