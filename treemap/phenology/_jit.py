"""Shared settings of the compiled phenology kernels: block and tile sizes, method constants, the rows of the
float output, the QA codes, float32 literals, and the numba options the kernels compile with.

How the kernels use blocks and tiles is described in :mod:`treemap.phenology._numba` ("the module docstring" below);
:mod:`treemap.phenology._numpy` reads the method constants from here too (through :mod:`treemap.phenology._numba`).
"""

from __future__ import annotations

import numpy as np

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
#: the peak date is the centre of the curve's top: the values within this fraction of the amplitude below the
#: maximum (see :func:`treemap.phenology._cycle_kernels._analyse`)
PEAK_CENTRE_FRACTION = 0.1

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
