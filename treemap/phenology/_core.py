"""Shared front end of the two implementations: parameters, time grid, result type."""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, fields

import numpy as np

from treemap.phenology import _numba as K
from treemap.phenology.sanity import PLAUSIBLE_LIMIT, PhenologyStats

#: The seven MCD12Q2 transition dates, in order.
TRANSITIONS: tuple[str, ...] = ("greenup", "midgreenup", "maturity", "peak", "senescence", "midgreendown",
                                "dormancy")
#: Float fields of :class:`PhenologyResult`, in the row order of the kernels' output.
FLOAT_FIELDS: tuple[str, ...] = TRANSITIONS + ("minimum", "peak_value", "amplitude", "season_length",
                                               "next_greenup")

#: QA codes (``PhenologyResult.qa``).
QA_GOOD = K.QA_GOOD  #: 0: one cycle found, all seven dates defined
QA_FEW_OBSERVATIONS = K.QA_FEW_OBSERVATIONS  #: 1: fewer clear observations in the year than ``min_observations``
QA_NO_CYCLE = K.QA_NO_CYCLE  #: 2: flat / evergreen / constant curve, or no cycle peaking in the year
QA_PARTIAL = K.QA_PARTIAL  #: 3: the cycle is cut by the start or end of the series; one side's dates are NaN
QA_GAP = K.QA_GAP  #: 4: all dates defined, but one falls in a gap between clear observations > ``max_gap`` days

QA_CODES: dict[int, str] = {
    QA_GOOD: "good: all seven transition dates defined",
    QA_FEW_OBSERVATIONS: "too few clear observations in the year: every metric NaN",
    QA_NO_CYCLE: "no vegetation cycle peaking in the year (flat, evergreen or constant curve): dates NaN",
    QA_PARTIAL: "cycle cut by the start or end of the series (a side it does not resolve): that side's dates NaN",
    QA_GAP: "all dates defined, at least one inside a gap between clear observations longer than max_gap",
}


@dataclass(frozen=True)
class PhenologyResult:
    """Per-pixel phenology metrics of one year, all (N,) arrays.

    Dates are day of year relative to 1 January of ``year`` (1 = 1 January; below 1 or above 365/366 for
    transitions in the neighbouring years), fractional, NaN where undefined. Levels are in index units.
    """

    greenup: np.ndarray
    midgreenup: np.ndarray
    maturity: np.ndarray
    peak: np.ndarray
    senescence: np.ndarray
    midgreendown: np.ndarray
    dormancy: np.ndarray
    minimum: np.ndarray  #: the cycle's base: the lower of its two robust side bases
    peak_value: np.ndarray  #: smoothed index at the peak
    amplitude: np.ndarray  #: peak_value - minimum
    season_length: np.ndarray  #: dormancy - greenup, days
    next_greenup: np.ndarray  #: greenup of the following cycle when the series holds its green-up side, else NaN
    n_clear: np.ndarray  #: int32: clear, valid observations dated in the year
    qa: np.ndarray  #: uint8: see :data:`QA_CODES`
    n_cycles: np.ndarray  #: uint8: cycles whose peak falls in the year (the largest one is reported)
    year: int
    #: input sanity and guard counts of the call that made the result (not per pixel; ``None`` when unknown, e.g.
    #: a result put together from parts: add the parts' stats up with :meth:`PhenologyStats.combine`)
    stats: PhenologyStats | None = None

    def __len__(self) -> int:
        return int(self.qa.shape[0])

    def as_dict(self) -> dict[str, np.ndarray]:
        """The (N,) arrays by name (not ``year`` and ``stats``)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("year", "stats")}

    def dates(self) -> np.ndarray:
        """(7, N) float32: the seven transition dates in MCD12Q2 order."""
        return np.stack([getattr(self, name) for name in TRANSITIONS])

    def take(self, index) -> PhenologyResult:
        """The result for a subset of pixels (any NumPy index on the pixel axis); ``stats`` stay those of the call."""
        return PhenologyResult(**{k: v[index] for k, v in self.as_dict().items()}, year=self.year, stats=self.stats)


#: Largest Whittaker lambda ((smoothing / step) ** 4) accepted: the float32 solver divides by zero at 8.1e5.
MAX_LAMBDA = 1e5


@dataclass(frozen=True)
class Params:
    min_observations: int = 12
    min_amplitude: float = 0.05
    relative_amplitude: float = 0.35
    step: float = 5.0
    smoothing: float = 5.0
    robust_iterations: int = 1
    reject_below: float = 4.0
    reject_above: float = 6.0
    base_fraction: float = 0.2
    peak_fraction: float = 0.15
    min_floor_days: float = 30.0
    max_gap: float = 45.0
    margin: float = 183.0
    valid_range: tuple[float, float] = (-1.0, 1.0)

    def check(self) -> None:
        if self.min_observations < 4:
            raise ValueError("min_observations must be at least 4")
        if not self.step > 0 or not self.smoothing > 0:
            raise ValueError("step and smoothing must be positive")
        if self.robust_iterations < 0:
            raise ValueError("robust_iterations must be >= 0")
        if not 0.0 <= self.base_fraction < 0.5 or not 0.0 <= self.peak_fraction < 0.5:
            raise ValueError("base_fraction and peak_fraction must be in [0, 0.5)")
        if not 0.0 < self.relative_amplitude <= 1.0:
            raise ValueError("relative_amplitude must be in (0, 1]")
        if self.min_amplitude <= 0:
            raise ValueError("min_amplitude must be positive")
        if (self.smoothing / self.step) ** 4 > MAX_LAMBDA:
            # the float32 banded solve loses every digit beyond this: the curve would collapse to zero
            raise ValueError(f"smoothing {self.smoothing:g} days is too long for step {self.step:g}: keep "
                             f"smoothing / step <= {MAX_LAMBDA ** 0.25:.0f}")
        lo, hi = self.valid_range
        if not -PLAUSIBLE_LIMIT <= lo < hi <= PLAUSIBLE_LIMIT:
            raise ValueError(f"valid_range must be an interval within +-{PLAUSIBLE_LIMIT} (index units), got "
                             f"{self.valid_range}")


@dataclass(frozen=True)
class Grid:
    """The analysis window on a regular grid of nodes ``step`` days apart, and the observations on it."""

    obs_idx: np.ndarray  # (To,) int64: rows of the input inside the window, in time order
    obs_k: np.ndarray  # (To,) int64: node at or before each observation
    obs_u: np.ndarray  # (To,) float64: fraction of a step past that node
    obs_day: np.ndarray  # (To,) float64: whole days after node 0 (the first date in the window)
    obs_in_year: np.ndarray  # (To,) bool
    p0: np.ndarray  # (K,) penalty bands (diagonal, first and second off-diagonals)
    p1: np.ndarray
    p2: np.ndarray
    year_lo: float  # 1 January of the year, in node units
    year_hi: float  # 1 January of the next year, in node units
    doy_a: float  # day of year of node 0
    n_nodes: int


def to_days(dates) -> np.ndarray:
    """Dates (datetime64 of any unit, date/datetime objects or ISO strings) -> int64 days since 1970-01-01."""
    arr = np.asarray(dates)
    if arr.dtype.kind == "M":
        return arr.astype("datetime64[D]").astype(np.int64)
    if arr.dtype.kind == "O" and arr.size and isinstance(arr.flat[0], _dt.datetime):
        arr = np.array([d.date() for d in arr.ravel()]).reshape(arr.shape)
    return np.asarray(arr, dtype="datetime64[D]").astype(np.int64)


def jan1(year: int) -> int:
    return int(np.datetime64(f"{int(year):04d}-01-01", "D").astype(np.int64))


def penalty_bands(n_nodes: int, lam: float, ridge: float = 1e-9) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bands of lam * D'D for second differences D ((n-2) x n), plus ``ridge`` on the diagonal."""
    p0 = np.full(n_nodes, 6.0)
    p1 = np.full(n_nodes, -4.0)
    p2 = np.ones(n_nodes)
    if n_nodes >= 2:
        p0[0] = p0[-1] = 1.0
        p1[0] = p1[-2] = -2.0
    if n_nodes >= 3:
        p0[1] = p0[-2] = 5.0
    p1[-1] = 0.0
    p2[-2:] = 0.0
    if n_nodes == 2:
        p0[:] = 0.0
        p1[:] = 0.0
    return lam * p0 + ridge, lam * p1, lam * p2


def make_grid(days: np.ndarray, year: int, params: Params) -> Grid | None:
    """The grid for ``year``: dates within ``margin`` days around the year, nodes from the first of them."""
    y0, y1 = jan1(year), jan1(year + 1)
    inside = (days >= y0 - params.margin) & (days < y1 + params.margin)
    idx = np.flatnonzero(inside)
    if idx.size < 2:
        return None
    idx = idx[np.argsort(days[idx], kind="stable")]
    t = days[idx].astype(np.float64)
    t0 = t[0]
    pos = (t - t0) / params.step
    k = np.floor(pos).astype(np.int64)
    u = pos - k
    n_nodes = int(k[-1]) + (2 if u[-1] > 0 else 1)
    n_nodes = max(n_nodes, 4)
    lam = (params.smoothing / params.step) ** 4
    p0, p1, p2 = penalty_bands(n_nodes, lam)
    in_year = (days[idx] >= y0) & (days[idx] < y1)
    return Grid(obs_idx=idx.astype(np.int64), obs_k=k, obs_u=u, obs_day=t - t0, obs_in_year=in_year, p0=p0, p1=p1,
                p2=p2, year_lo=(y0 - t0) / params.step, year_hi=(y1 - t0) / params.step, doy_a=t0 - y0 + 1.0,
                n_nodes=n_nodes)


def check_inputs(days: np.ndarray, values, clear) -> tuple[np.ndarray, np.ndarray]:
    values = np.asarray(values)
    clear = np.asarray(clear)
    if values.ndim == 1:
        values = values[:, None]
    if clear.ndim == 1:
        clear = clear[:, None]
    if days.ndim != 1:
        raise ValueError("dates must be one-dimensional (T,)")
    if values.shape[0] != days.shape[0] or values.ndim != 2:
        raise ValueError(f"values must be (T, N) with T = {days.shape[0]}, got {values.shape}")
    if clear.shape != values.shape:
        raise ValueError(f"clear must have the shape of values {values.shape}, got {clear.shape}")
    if values.dtype != np.float32 and values.dtype != np.float64:
        values = values.astype(np.float32)
    return values, clear.astype(np.bool_, copy=False)


def empty_result(n: int, year: int, n_clear: np.ndarray | None = None,
                 stats: PhenologyStats | None = None) -> PhenologyResult:
    nan = np.full(n, np.nan, dtype=np.float32)
    return PhenologyResult(**{name: nan.copy() for name in FLOAT_FIELDS},
                           n_clear=np.zeros(n, np.int32) if n_clear is None else n_clear.astype(np.int32),
                           qa=np.full(n, QA_FEW_OBSERVATIONS, np.uint8), n_cycles=np.zeros(n, np.uint8),
                           year=int(year), stats=stats)


def pack(out: np.ndarray, n_clear: np.ndarray, qa: np.ndarray, n_cycles: np.ndarray, year: int,
         stats: PhenologyStats | None = None) -> PhenologyResult:
    return PhenologyResult(**{name: out[i] for i, name in enumerate(FLOAT_FIELDS)}, n_clear=n_clear, qa=qa,
                           n_cycles=n_cycles, year=int(year), stats=stats)
