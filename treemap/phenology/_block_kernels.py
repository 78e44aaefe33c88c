"""Block kernels of the phenology method: the work on a block of pixels with the pixel as the innermost loop.

Gathering a block's observations (with a prefetch hint for the input rows), the weighted Whittaker smoother, the
robust rejection step, and the bookkeeping of each lane's clear observations (bit masks, longest gap, first / last /
next clear observation) that the gap test and the per-pixel analysis use.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.cpython.unsafe.numbers import leading_zeros, trailing_zeros
from numba.extending import intrinsic

from treemap.phenology._jit import _F, _FAR, _KERNEL, _ONE, _ZERO, MAD_TO_SIGMA, PREFETCH_ROWS


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
