"""The four phenological seasons of a pixel (the SSL4Eco recipe): intervals between consecutive transitions."""

from __future__ import annotations

import numpy as np

#: Season names and their intervals: Greenup->Maturity, Maturity->Senescence, Senescence->Dormancy,
#: Dormancy->next Greenup.
SEASONS: tuple[str, ...] = ("greenup_maturity", "maturity_senescence", "senescence_dormancy",
                            "dormancy_next_greenup")


def seasonal_windows(result) -> np.ndarray:
    """(4, 2, N) float32: start and end (day of year of ``result.year``) of the four seasons per pixel.

    Seasons in :data:`SEASONS` order. The winter season ends at the next cycle's greenup when the series held one
    (``result.next_greenup``), otherwise at this greenup + 365 days. NaN where a bounding date is undefined.
    """
    g = np.asarray(result.greenup, dtype=np.float32)
    nxt = np.asarray(result.next_greenup, dtype=np.float32)
    nxt = np.where(np.isfinite(nxt), nxt, g + np.float32(365.0))
    bounds = (g, result.maturity, result.senescence, result.dormancy, nxt)
    out = np.empty((4, 2, g.shape[0]), dtype=np.float32)
    for s in range(4):
        out[s, 0] = bounds[s]
        out[s, 1] = bounds[s + 1]
    return out
