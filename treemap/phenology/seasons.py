"""The four phenological seasons of a pixel (the SSL4Eco recipe): intervals between consecutive transitions."""

from __future__ import annotations

import numpy as np

#: Season names and their intervals: Greenup->Maturity, Maturity->Senescence, Senescence->Dormancy,
#: Dormancy->(next) Greenup.
SEASONS: tuple[str, ...] = ("greenup_maturity", "maturity_senescence", "senescence_dormancy",
                            "dormancy_greenup")


def seasonal_windows(result) -> np.ndarray:
    """(4, 2, N) float32: start and end (day of year of ``result.year``) of the four seasons per pixel.

    Seasons in :data:`SEASONS` order. The dormant season runs from dormancy to the next cycle's greenup when the
    series holds one (``result.next_greenup``). Otherwise (the series ends before the next green-up) it is the
    dormant season that precedes this cycle, dormancy - 365 days to greenup: the same season one year earlier,
    which the series does hold. NaN where a bounding date is undefined.
    """
    g = np.asarray(result.greenup, dtype=np.float32)
    d = np.asarray(result.dormancy, dtype=np.float32)
    nxt = np.asarray(result.next_greenup, dtype=np.float32)
    has_next = np.isfinite(nxt)
    out = np.empty((4, 2, g.shape[0]), dtype=np.float32)
    bounds = (g, result.maturity, result.senescence, d)
    for s in range(3):
        out[s, 0] = bounds[s]
        out[s, 1] = bounds[s + 1]
    out[3, 0] = np.where(has_next, d, d - np.float32(365.0))
    out[3, 1] = np.where(has_next, nxt, g)
    return out
