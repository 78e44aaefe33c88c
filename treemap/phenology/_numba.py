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
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.cpython.unsafe.numbers import leading_zeros, trailing_zeros
from numba.extending import intrinsic

#: pixels per block (see the module docstring); 128 keeps a block's work arrays in L2
LANES = 128
#: a robust re-fit that concerns at most this many pixels of a block runs on them alone
SUB_LANES = 8
#: curves transposed out of a block at a time for the per-pixel analysis
TILE = 16
#: a cycle still rising when the series ends counts as the next cycle (for ``next_greenup``) once its top, the
#: values within ``peak_fraction`` of its rise below the last one, spans this many days
MIN_TOP_DAYS = 10.0
#: refinement passes of a side's base (see :func:`_floor`)
BASE_PASSES = 2

# rows of the float output
GREENUP, MIDGREENUP, MATURITY, PEAK, SENESCENCE, MIDGREENDOWN, DORMANCY = range(7)
MINIMUM, PEAK_VALUE, AMPLITUDE, SEASON_LENGTH, NEXT_GREENUP = range(7, 12)
N_FLOAT = 12

QA_GOOD, QA_FEW_OBSERVATIONS, QA_NO_CYCLE, QA_PARTIAL, QA_GAP = 0, 1, 2, 3, 4

#: MCD12Q2 thresholds (fractions of the amplitude)
F15, F50, F90 = 0.15, 0.5, 0.9
#: least noise scale of the robust step (index units): exact fits (constant series) reject nothing
SCALE_FLOOR = 1e-3
#: noise scale = this x mean absolute residual (sqrt(pi / 2): the standard deviation for Gaussian noise)
MAD_TO_SIGMA = 1.2533
#: day offset standing for "no clear observation before / after" in the gap test
FAR = 1e9

_F = np.float32
_ONE = np.float32(1.0)
_ZERO = np.float32(0.0)
_FAR = np.float32(FAR)


#: rows of the input prefetched ahead of the gather (the rows of a block are far apart in memory)
PREFETCH_ROWS = 8



def _no_refcount_option() -> dict:
    """``{"_nrt": False}`` where this numba has the option (an underscored one, so a later release may drop or
    rename it: the kernels then compile with reference counting, correct and somewhat slower)."""
    try:
        from numba.core.options import DefaultOptions
    except ImportError:  # pragma: no cover - depends on the numba release
        return {}
    return {"_nrt": False} if hasattr(DefaultOptions, "_nrt") else {}


#: options of the kernels that allocate nothing: no reference counting of the arrays they slice (numba's ``_nrt``
#: option; the counting is atomic, costly in per-pixel helpers, and makes threads contend for shared arrays)
_KERNEL = dict(cache=True, error_model="numpy", **_no_refcount_option())
#: options of the masked sums: fastmath lets them vectorise (the values are finite)
_REDUCTION = dict(_KERNEL, fastmath=True)


# --------------------------------------------------------------------------------------------- block kernels


@intrinsic
def _prefetch(typingctx, arr, row, col):
    """Prefetch hint (llvm.prefetch: read, keep in all cache levels) for the address of ``arr[row, col]`` of a C
    contiguous 2-d array; no effect on the results."""
    if not (isinstance(arr, types.Array) and arr.ndim == 2 and isinstance(row, types.Integer)
            and isinstance(col, types.Integer)):
        return None
    sig = types.void(arr, row, col)

    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        i64 = ir.IntType(64)
        i32 = ir.IntType(32)
        ncol = builder.extract_value(ary.shape, 1)
        r = context.cast(builder, args[1], signature.args[1], types.int64)
        c = context.cast(builder, args[2], signature.args[2], types.int64)
        offset = builder.add(builder.mul(r, ncol), c)
        ptr = builder.gep(ary.data, [builder.zext(offset, i64) if offset.type != i64 else offset])
        i8p = builder.bitcast(ptr, ir.IntType(8).as_pointer())
        fnty = ir.FunctionType(ir.VoidType(), [i8p.type, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0i8")
        builder.call(fn, [i8p, i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return sig, codegen



@njit(**_KERNEL)
def _gather(values, clear, obs_idx, i0, nl, vlo, vhi, y, w0):  # pragma: no cover - compiled
    """Observations of pixels [i0, i0 + nl) into ``y`` (value, 0 where not usable) and ``w0`` (1 where clear and
    valid, else 0), (n_obs, lanes). Lanes past ``nl`` are left for the caller. The input rows a few observations
    ahead are prefetched: a block's rows lie far apart in memory, and the hardware prefetchers do not follow."""
    n_obs = obs_idx.shape[0]
    for o in range(n_obs):
        if o + PREFETCH_ROWS < n_obs:
            ahead = obs_idx[o + PREFETCH_ROWS]
            for c in range(i0, i0 + nl, 16):
                _prefetch(values, ahead, c)
            for c in range(i0, i0 + nl, 64):
                _prefetch(clear, ahead, c)
        vrow = values[obs_idx[o], i0:i0 + nl]
        crow = clear[obs_idx[o], i0:i0 + nl]
        yo = y[o]
        wo = w0[o]
        for j in range(nl):
            v = vrow[j]
            ok = crow[j] & (v >= vlo) & (v <= vhi)
            yo[j] = v if ok else _ZERO
            wo[j] = _ONE if ok else _ZERO


@njit(**_KERNEL)
def _count(w0, o_lo, o_hi, ny, nl):  # pragma: no cover - compiled
    """Clear observations [o_lo, o_hi) per lane (float32: exact far beyond any series length)."""
    for j in range(nl):
        ny[j] = _ZERO
    for o in range(o_lo, o_hi):
        wo = w0[o]
        for j in range(nl):
            ny[j] += wo[j]


@njit(**_KERNEL)
def _fit(y, w, obs_k, obs_u, obs_v, p0, p1, p2, a0, a1, g, ep, nl):  # pragma: no cover - compiled
    """Weighted Whittaker fit of a block of ``nl`` lanes, in float32: solve (B' W B + P) z = B' W y.

    ``B`` interpolates the node values linearly to the observation times (node ``obs_k`` with weight
    ``obs_v`` = 1 - u, the next node with weight ``obs_u``), so B' W B is tridiagonal; ``P`` = lambda D'D + a tiny
    ridge is pentadiagonal (bands ``p0``, ``p1``, ``p2``), and its second band, the same for every pixel, is never
    stored per lane. Banded LDL' factorisation with forward substitution in one pass, keeping only 1/d (in ``a0``)
    and the first band of L (in ``a1``): with e_k = l1_k d_k, d_k = A0_k - l1_{k-1} e_{k-1} - p2_{k-2}^2 / d_{k-2}
    and e_k = A1_k - l1_{k-1} p2_{k-1}; ``ep`` carries e_{k-1} per lane. Then back substitution; the solution is
    left in ``g``.
    """
    n_nodes = g.shape[0]
    n_obs = y.shape[0]
    for k in range(n_nodes):
        b0 = p0[k]
        b1 = p1[k]
        r0 = a0[k]
        r1 = a1[k]
        rg = g[k]
        for j in range(nl):
            r0[j] = b0
            r1[j] = b1
            rg[j] = _ZERO
    for o in range(n_obs):
        k = obs_k[o]
        u = obs_u[o]
        wo = w[o]
        yo = y[o]
        r0 = a0[k]
        rg = g[k]
        if u == _ZERO:
            for j in range(nl):
                r0[j] += wo[j]
                rg[j] += wo[j] * yo[j]
        else:
            v = obs_v[o]
            vv = v * v
            uv = u * v
            uu = u * u
            r1 = a1[k]
            s0 = a0[k + 1]
            sg = g[k + 1]
            for j in range(nl):
                wj = wo[j]
                yj = wj * yo[j]
                r0[j] += wj * vv
                r1[j] += wj * uv
                s0[j] += wj * uu
                rg[j] += v * yj
                sg[j] += u * yj
    # factorisation and forward substitution: a0 <- 1/d, a1 <- l1, g <- forward solution
    r0 = a0[0]
    r1 = a1[0]
    for j in range(nl):
        inv = _ONE / r0[j]
        e = r1[j]
        r0[j] = inv
        r1[j] = e * inv
        ep[j] = e
    c1 = p2[0]
    r0 = a0[1]
    r1 = a1[1]
    q1 = a1[0]
    rg = g[1]
    qg = g[0]
    for j in range(nl):
        lj = q1[j]
        d = r0[j] - lj * ep[j]
        inv = _ONE / d
        e = r1[j] - lj * c1
        r0[j] = inv
        r1[j] = e * inv
        ep[j] = e
        rg[j] = rg[j] - lj * qg[j]
    for k in range(2, n_nodes):
        c1 = p2[k - 1]
        c2 = p2[k - 2]
        c2sq = c2 * c2
        r0 = a0[k]
        r1 = a1[k]
        rg = g[k]
        q1 = a1[k - 1]
        qg = g[k - 1]
        s0 = a0[k - 2]
        sg = g[k - 2]
        for j in range(nl):
            lj = q1[j]
            i2 = s0[j]
            d = r0[j] - lj * ep[j] - c2sq * i2
            inv = _ONE / d
            e = r1[j] - lj * c1
            r0[j] = inv
            r1[j] = e * inv
            ep[j] = e
            rg[j] = rg[j] - lj * qg[j] - (c2 * i2) * sg[j]
    # back substitution: x_k = (1/d_k) (y_k - p2_k x_{k+2}) - l1_k x_{k+1}
    last = n_nodes - 1
    for j in range(nl):
        x1 = g[last, j] * a0[last, j]
        g[last, j] = x1
        g[last - 1, j] = g[last - 1, j] * a0[last - 1, j] - a1[last - 1, j] * x1
    for k in range(n_nodes - 3, -1, -1):
        c = p2[k]
        r0 = a0[k]
        r1 = a1[k]
        rg = g[k]
        q = g[k + 1]
        s = g[k + 2]
        for j in range(nl):
            rg[j] = r0[j] * (rg[j] - c * s[j]) - r1[j] * q[j]


@njit(**_KERNEL)
def _reject(y, w0, wcur, wnew, obs_k, obs_u, obs_v, z, sabs, cnt, chg, lo_mult, hi_mult, scale_floor,
            nl):  # pragma: no cover - compiled
    """Robust step: weight 0 for the clear observations more than ``lo_mult`` noise scales below or ``hi_mult``
    above the fit ``z``, 1 for the others, into ``wnew`` (which may be ``wcur``). The scale is
    :data:`MAD_TO_SIGMA` x the mean absolute residual of the observations kept so far (weights ``wcur``; at least
    ``scale_floor``). Counts the changed weights per lane in ``chg`` and returns the number of lanes with a change.
    The residuals are computed twice rather than stored: cheaper than the memory traffic."""
    n_obs = y.shape[0]
    last = z.shape[0] - 1
    for j in range(nl):
        sabs[j] = _ZERO
        cnt[j] = _ZERO
        chg[j] = 0
    for o in range(n_obs):
        k = obs_k[o]
        zk = z[k]
        zk1 = z[min(k + 1, last)]
        u = obs_u[o]
        v = obs_v[o]
        yo = y[o]
        wo = wcur[o]
        for j in range(nl):
            r = yo[j] - (v * zk[j] + u * zk1[j])
            sabs[j] += wo[j] * abs(r)
            cnt[j] += wo[j]
    for j in range(nl):
        sabs[j] = max(_F(MAD_TO_SIGMA) * sabs[j] / max(cnt[j], _ONE), scale_floor)
    for o in range(n_obs):
        k = obs_k[o]
        zk = z[k]
        zk1 = z[min(k + 1, last)]
        u = obs_u[o]
        v = obs_v[o]
        yo = y[o]
        wo = wcur[o]
        wn = wnew[o]
        w0o = w0[o]
        for j in range(nl):
            r = yo[j] - (v * zk[j] + u * zk1[j])
            s = sabs[j]
            keep = (r >= -lo_mult * s) & (r <= hi_mult * s)
            wk = w0o[j]  # loaded outside the conditional expression, so that it becomes a select
            wk = wk if keep else _ZERO
            chg[j] += np.int32(1) if wk != wo[j] else np.int32(0)
            wn[j] = wk
    lanes_changed = 0
    for j in range(nl):
        lanes_changed += 1 if chg[j] > 0 else 0
    return lanes_changed


@njit(**_KERNEL)
def _clear_bits(w0, bits, tmp, nl):  # pragma: no cover - compiled
    """The clear observations of each lane as bits: bit b of ``bits[i, j]`` is set when observation 64 i + b of lane
    j is clear (for the gap test and the first / last clear observation). The words are built in ``tmp`` (2, lanes)
    with the two rows alternating: updating one row in place would be made into a masked store (very slow on some
    x86 cores)."""
    n_obs = w0.shape[0]
    one = np.int64(1)
    nil = np.int64(0)
    for i in range(bits.shape[0]):
        o0 = 64 * i
        o1 = min(n_obs, o0 + 64)
        t0 = tmp[0]
        for j in range(nl):
            t0[j] = nil
        for o in range(o0, o1):
            src = (o - o0) & 1
            a = tmp[src]
            b = tmp[1 - src]
            bit = one << np.int64(o - o0)
            wo = w0[o]
            for j in range(nl):
                b[j] = a[j] | (bit if wo[j] > _ZERO else nil)
        t = tmp[(o1 - o0) & 1]
        bi = bits[i]
        for j in range(nl):
            bi[j] = t[j]


@njit(**_KERNEL)
def _longest_gap(w0, obs_day, last, gmax, nl):  # pragma: no cover - compiled
    """The longest gap (days) between consecutive clear observations of each lane, left in ``gmax[0]``; ``last``
    and ``gmax`` (2, lanes) alternate rows like the words of :func:`_clear_bits`."""
    n_obs = w0.shape[0]
    for j in range(nl):
        last[0, j] = _FAR  # no clear observation yet: the first one opens no gap
        gmax[0, j] = _ZERO
    for o in range(n_obs + (n_obs & 1)):  # an even count, so that the result ends in row 0
        src = o & 1
        la = last[src]
        ga = gmax[src]
        lb = last[1 - src]
        gb = gmax[1 - src]
        if o < n_obs:
            d = obs_day[o]
            wo = w0[o]
            for j in range(nl):
                c = wo[j] > _ZERO
                prev = la[j]
                lb[j] = d if c else prev
                gb[j] = max(ga[j], d - prev if c else _ZERO)
        else:
            for j in range(nl):
                lb[j] = la[j]
                gb[j] = ga[j]


@njit(**_KERNEL)
def _first_clear(bits, j):  # pragma: no cover - compiled
    """The first clear observation of lane ``j`` (-1 if none)."""
    for i in range(bits.shape[0]):
        m = bits[i, j]
        if m != 0:
            return 64 * i + trailing_zeros(m)
    return -1


@njit(**_KERNEL)
def _last_clear(bits, j, o):  # pragma: no cover - compiled
    """The last clear observation of lane ``j`` at or before observation ``o`` (-1 if none)."""
    i = o >> 6
    b = o & 63
    full = np.int64(-1)
    m = bits[i, j] & (full if b == 63 else (np.int64(1) << np.int64(b + 1)) - 1)
    while True:
        if m != 0:
            return 64 * i + 63 - leading_zeros(m)
        i -= 1
        if i < 0:
            return -1
        m = bits[i, j]


@njit(**_KERNEL)
def _next_clear(bits, j, o):  # pragma: no cover - compiled
    """The first clear observation of lane ``j`` at or after observation ``o`` (-1 if none)."""
    i = o >> 6
    if i >= bits.shape[0]:
        return -1
    m = bits[i, j] & ~((np.int64(1) << np.int64(o & 63)) - 1)
    while True:
        if m != 0:
            return 64 * i + trailing_zeros(m)
        i += 1
        if i >= bits.shape[0]:
            return -1
        m = bits[i, j]


# ----------------------------------------------------------------------------------------- per-pixel analysis
#
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
    position if the curve never gets there."""
    zs = z[k0:p + 1]
    for i in range(1, zs.shape[0]):
        if zs[i] >= thr:
            k = k0 + i
            return k - 1 + (thr - zs[i - 1]) / (zs[i] - zs[i - 1]), k - 1
    return xpk, p


@njit(**_KERNEL)
def _fall(z, p, k0, thr, xpk):  # pragma: no cover - compiled
    """Last downward crossing of ``thr`` on nodes [p, k0) (linear between nodes) and the node after it; the peak
    position if the curve never gets there."""
    zs = z[p:k0 + 1]
    for i in range(zs.shape[0] - 2, -1, -1):
        if zs[i] >= thr:
            k = p + i
            return k + (zs[i] - thr) / (zs[i] - zs[i + 1]), k + 1
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
        okl = tl > kf or cl >= min_floor
        okr = tr < kl or cr >= min_floor
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
    out[PEAK] = doy_a + step * b_xpk
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
