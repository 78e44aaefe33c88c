"""QA codes and greenup dates of `treemap.phenology` on REAL Sentinel-2 L2A pixels: the 64 x 64 Flanders patch of
2018 in the tests (46 dates, crops and grass; tests/data/flanders/NOTICE).

    python benchmarks/phenology_real.py [--index ndvi|evi] [--no-snow-screen]

NDVI or EVI from B02/B04/B08 (10 m; DN / 10000, these 2018 scenes predate the +1000 offset), clear where the 20 m
SCL (each cell repeated 2 x 2) is vegetation, bare soil, water or unclassified (4, 5, 6, 7: SCL 11 snow never
counts, as in `treemap phenology`), the snow screen on the 10 m B03 and the 20 m B11 (repeated) unless
``--no-snow-screen``. Prints one JSON line: the QA share per code, the greenup median and quartiles (day of year
2018) over pixels that have one, the share of those in spring (day 60-160), the snow observations screened, and the
final guard's count of changed pixels (0 unless a kernel misbehaves).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
NPZ = REPO / "tests" / "data" / "flanders" / "flanders_2018.npz"


def main(argv: list[str] | None = None) -> dict:
    from treemap.phenology import QA_CODES, evi, ndvi, phenology_metrics

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--index", choices=("ndvi", "evi"), default="ndvi")
    ap.add_argument("--no-snow-screen", action="store_true")
    args = ap.parse_args(argv)
    z = np.load(NPZ)
    up = lambda a: np.repeat(np.repeat(a, 2, axis=1), 2, axis=2)  # noqa: E731 - 20 m -> 10 m
    blue, green, red, nir = (z[b].astype(np.float32) / 10000 for b in ("B02", "B03", "B04", "B08"))
    swir1 = up(z["B11"]).astype(np.float32) / 10000
    scl = up(z["SCL"])
    clear = np.isin(scl, (4, 5, 6, 7)) & (z["B04"] > 0) & (z["B08"] > 0)
    vi = ndvi(red, nir) if args.index == "ndvi" else evi(blue, red, nir)
    screened = 0
    if not args.no_snow_screen:
        from treemap.phenology.tile import BAND_ORDER, vegetation_index

        refl = np.full((vi.shape[0], len(BAND_ORDER)) + vi.shape[1:], np.nan, dtype=np.float32)
        for name, band in (("B02", blue), ("B03", green), ("B04", red), ("B08", nir), ("B11", swir1)):
            refl[:, BAND_ORDER.index(name)] = band
        for name in BAND_ORDER:  # the bands the screen does not use: any finite value
            if np.isnan(refl[:, BAND_ORDER.index(name)]).all():
                refl[:, BAND_ORDER.index(name)] = 0.1
        refl[~np.broadcast_to(clear[:, None], refl.shape)] = np.nan
        vi2, ok = vegetation_index(refl, args.index, snow_screen=True)
        screened = int((clear & ~ok).sum())
        clear = ok
        vi = vi2
    t = vi.shape[0]
    res = phenology_metrics(z["datetime"], vi.reshape(t, -1), clear.reshape(t, -1), 2018)
    qa = np.bincount(res.qa, minlength=len(QA_CODES)) / res.qa.size
    g = res.greenup[np.isfinite(res.greenup)]
    out = {"index": args.index, "pixels": int(res.qa.size), "dates": int(t),
           "qa_share": {str(k): round(float(v), 4) for k, v in enumerate(qa)},
           "greenup": {"n": int(g.size), "median": round(float(np.median(g)), 1) if g.size else None,
                       "q25": round(float(np.percentile(g, 25)), 1) if g.size else None,
                       "q75": round(float(np.percentile(g, 75)), 1) if g.size else None,
                       "spring_share": round(float(((g >= 60) & (g <= 160)).mean()), 4) if g.size else None},
           "snow_screened": screened,
           "guarded_pixels": int(res.stats.n_guarded_pixels) if res.stats else None}
    print(json.dumps(out), flush=True)
    return out


if __name__ == "__main__":
    main()
