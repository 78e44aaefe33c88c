"""A built-in per-pixel tree / not-tree rule from the 12 monthly composites ``treemap predict`` already makes.

Input: ``comp`` (12, 10, H, W) float32 reflectance from :func:`treemap.composite.monthly_composites`, bands in
:data:`treemap.cube.MODEL_BANDS` order, NaN where a month has no clear observation; optionally that function's
per-month clear counts (12, H, W). No other data (no land-cover map, no date, no latitude) is needed.

Season anchoring (hemisphere-agnostic)
--------------------------------------
Calendar months are never used. Each pixel's *peak* months are its greenest (highest NDVI) snow-free clear
month and, up to ``peak_months`` (3) in all, the next greenest ones within ``peak_ndvi_drop`` (0.05) NDVI of it:
a tree canopy's plateau, but only the top of a crop's short peak even when one of its peak months is missing (a
shoulder month, half bare soil, would look like a tree canopy's flat visible spectrum). Its *dormant* months are
its ``dormant_months`` (3) least green snow-free clear months, leaving out months with NDSI above
``dormant_max_ndsi`` (0: partial snow or frost, which brighten the visible like bare soil). A month
counts as snow when NDSI = (B03 - B11) / (B03 + B11) > ``snow_ndsi`` (0.4) and B03 > ``snow_min_green`` (0.1; open
water has a high NDSI too but is dark, as in the Sen2Cor and MODIS snow tests): snow is bright in the visible and would
otherwise make a snowy deciduous forest in winter look like a bare field; such months are observations (they
count for the nodata test) but never peak nor dormant months.

Features (:func:`mask_features`)
--------------------------------
``peak_ndvi`` (gate only)
    Mean NDVI of the peak months. Below ``min_peak_ndvi`` (0.55) the pixel is not tree: water, built-up, rock
    and bare soil never get there, a tree canopy in leaf does (demo: water, built-up <= 0.23; trees >= 0.67).
``peak_blue_green`` (discriminant weight > 0)
    B02 / B03 at the peak months: how flat the visible spectrum of the canopy in leaf is. A tree canopy is
    rough: much of what the sensor sees is crown shadow, lit only by diffuse skylight, which is blue-rich, plus
    gaps onto a brownish floor; both flatten the green peak. A smooth, closed herbaceous canopy (meadow, crop
    at full growth) is sunlit leaves, with the sharpest green peak. Residual haze in L2A reflectance (path
    radiance, strongest in B02) also weighs most on dark canopies. This is the strongest single feature against
    grassland in the demo world (0.5 and 99.5 percentiles: trees 0.49-0.62, grassland 0.45-0.49). A ratio, so
    illumination and calibration gains largely cancel.
``peak_swir2`` (weight < 0)
    B12 at the peak months. Tree crowns shade each other and hold much water, which absorbs strongly at 2.2 um:
    at peak season a tree canopy is darker in the SWIR than grass or a crop (evergreens most of all).
``dormant_vis`` (weight < 0)
    Median over the dormant months of the visible reflectance (mean of B02, B03, B04). A cropland field has a
    bare-soil phase (before sowing, after harvest) that is bright in the visible; a leafless deciduous canopy
    (bark, shadows, litter) and an evergreen one stay dark, and so does a meadow that never goes bare. The
    median of three months ignores one contaminated month (a residual cloud or haze) in either direction.

Diagnostics also returned: ``dormant_ndvi`` (mean NDVI of the dormant months), ``n_valid`` (clear months,
snow included), ``n_snow_free`` and ``max_gap`` (longest circular run of months without a clear observation).

Other features were tried on the demo world and left out. Peak SWIR1 and B12 / B11 add almost nothing beside B12. Peak
NDVI as a discriminant feature helps there (a closed crop or meadow reaches a higher peak NDVI than the demo's
tree canopies) but would reject dense broadleaf forest on real data, whose peak NDVI is as high as a crop's.
Dormant NDVI separates grassland from deciduous trees but puts evergreens on the wrong side (and gains < 0.1 %
as a fourth feature). Fast green-up and harvest (largest month-to-month NDVI change) overlap between crops and
deciduous trees at a monthly step (the demo's trees flush about as fast as its crops); the bare-soil phase
separates them.

The rule (:func:`tree_mask`)
----------------------------
``nodata`` (255) where fewer than ``min_months`` (4) clear months (snow included), or ``max_gap`` above
``max_missing_run`` (5) months: with at most 5 missing months in a row, every half-year -- whichever half is the
growing season at the pixel's latitude -- holds at least one observation. A pixel observed well enough but under
snow in every clear month (glacier, permanent snow; also a bright surface that passes the snow test all year) is
not tree (0). Otherwise tree (1) where ``peak_ndvi >= min_peak_ndvi`` and the linear discriminant

    score = bias + sum_i weight_i * (feature_i - centre_i) / scale_i

is positive, else not tree (0). The centres and scales standardise the features (their means and standard
deviations over the vegetated pixels of the seed-0 demo world); bias and weights are a class-balanced logistic
regression of tree against grassland + cropland on those pixels, rounded (:data:`DEFAULT_RULE`). In reflectance
units: ``score = 3.2 + 100 (B02/B03 - 0.532) - 100 (B12 - 0.092) - 67 (vis_dormant - 0.065)``; so 0.01 of
blue/green ratio weighs as much as 0.01 of peak B12 reflectance or 0.015 of dormant visible reflectance.

Measured on the offline demo world (whole world against its truth, nodata counted as an error both ways;
fitted on seed 0, checked on seeds 1 and 2; ``benchmarks/tree_mask.py``): trees kept 99.87 / 99.78 / 99.73 %,
non-trees removed 99.92 / 99.97 / 99.97 % (seeds 0 / 1 / 2; water and built-up 100 %, grassland >= 99.85 %,
cropland >= 99.98 %). With two random months per pixel missing, >= 99.5 % both ways; with four, trees 99.8 %
and non-trees 98.5 % (cropland 97.3 % on seed 1).

Limits on real data: the coefficients come from a synthetic world with one grassland and one cropland
end-member, and the blue/green margin between them and the trees there is a few hundredths; on real data B02
carries the largest atmospheric-correction error (aerosol), shaded slopes raise B02/B03 for any cover, and real
meadows, crops, orchards, vineyards, shrubland and wetlands span more than one end-member each. Expect the rule
to need re-fitting (same features, new constants in a :class:`MaskRule`) on labelled real pixels. Hedgerows,
orchards and urban trees mix with other cover at 10-20 m. A light dusting of snow or frost (NDSI still below 0)
brightens a dormant month like bare soil; a month of residual cloud is absorbed by the median, two are not.
Winter cereals are green in winter, so their bare phase is short (after harvest) and may be missed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from treemap.cube import MODEL_BANDS

TREE, NOT_TREE, NODATA = 1, 0, 255

_B02, _B03, _B04, _B08, _B11, _B12 = (MODEL_BANDS.index(b) for b in ("B02", "B03", "B04", "B08", "B11", "B12"))

#: The features the discriminant uses, in the order of :attr:`MaskRule.centre`, ``scale`` and ``weight``.
FEATURES: tuple[str, ...] = ("peak_blue_green", "peak_swir2", "dormant_vis")


@dataclass(frozen=True)
class MaskRule:
    """Parameters of :func:`tree_mask` (see the module documentation for the reasoning)."""

    peak_months: int = 3  # at most this many greenest snow-free months define the peak season ...
    peak_ndvi_drop: float = 0.05  # ... those within this NDVI of the greenest one
    dormant_months: int = 3  # least green snow-free months that define the dormant season
    snow_ndsi: float = 0.4  # NDSI above which a month is snow (never peak nor dormant) ...
    snow_min_green: float = 0.1  # ... if also this bright in B03 (water has a high NDSI too, but is dark)
    dormant_max_ndsi: float = 0.0  # months above it (partial snow, frost) are never dormant months
    min_months: int = 4  # fewer clear months (snow included): nodata
    max_missing_run: int = 5  # longest run of months without a clear observation; longer: nodata
    min_peak_ndvi: float = 0.55  # gate: below it, not tree
    # the linear discriminant over FEATURES (fitted on the seed-0 demo world, see the module documentation)
    centre: tuple[float, ...] = (0.532, 0.092, 0.065)
    scale: tuple[float, ...] = (0.052, 0.017, 0.024)
    weight: tuple[float, ...] = (5.2, -1.7, -1.6)
    bias: float = 3.2

    def __post_init__(self) -> None:
        n = len(FEATURES)
        if not (len(self.centre) == len(self.scale) == len(self.weight) == n):
            raise ValueError(f"centre, scale and weight need {n} values each ({', '.join(FEATURES)})")
        if any(s <= 0 for s in self.scale):
            raise ValueError("scale values must be positive")
        if self.peak_months < 1 or self.dormant_months < 1:
            raise ValueError("peak_months and dormant_months must be at least 1")

    def score(self, feats: dict[str, np.ndarray]) -> np.ndarray:
        """The discriminant (float32, H x W); positive means tree-like."""
        out = np.full(np.shape(feats[FEATURES[0]]), self.bias, dtype=np.float32)
        for name, c, s, w in zip(FEATURES, self.centre, self.scale, self.weight):
            out += np.float32(w / s) * (feats[name] - np.float32(c))
        return out


DEFAULT_RULE = MaskRule()


def _ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(a - b) / (a + b), NaN where the sum is not positive."""
    s = a + b
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(s > 0, (a - b) / s, np.nan).astype(np.float32)


def _pick(x: np.ndarray, order: np.ndarray, k: int, n_ok: np.ndarray) -> np.ndarray:
    """x (12, H, W) at the first ``k`` months of ``order``; NaN beyond each pixel's ``n_ok`` usable months."""
    k = min(k, order.shape[0])
    out = np.take_along_axis(x, order[:k], axis=0)
    out[np.arange(k)[:, None, None] >= n_ok[None]] = np.nan
    return out


def _nanmean0(a: np.ndarray) -> np.ndarray:
    n = (~np.isnan(a)).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (np.nansum(a, axis=0) / n).astype(np.float32)


def _nanmedian0(a: np.ndarray) -> np.ndarray:
    """Median over axis 0 ignoring NaN (NaN sorts last); all-NaN -> NaN."""
    ordered = np.sort(a, axis=0)
    n = (~np.isnan(a)).sum(axis=0)
    lo = np.take_along_axis(ordered, np.maximum((n - 1) // 2, 0)[None], axis=0)[0]
    hi = np.take_along_axis(ordered, np.minimum(n // 2, a.shape[0] - 1)[None], axis=0)[0]
    out = ((lo + hi) / 2).astype(np.float32)
    out[n == 0] = np.nan
    return out


def _max_missing_run(valid: np.ndarray) -> np.ndarray:
    """Longest circular run of months without a valid observation (0..12), (H, W) int."""
    months = valid.shape[0]
    run = np.zeros(valid.shape[1:], dtype=np.int16)
    best = np.zeros_like(run)
    for m in range(2 * months):  # twice round the year: runs that wrap over the year's end
        run = np.where(valid[m % months], 0, run + 1).astype(np.int16)
        np.maximum(best, run, out=best)
    return np.minimum(best, months)


def mask_features(comp: np.ndarray, counts: np.ndarray | None = None,
                  rule: MaskRule = DEFAULT_RULE) -> dict[str, np.ndarray]:
    """Per-pixel features of the monthly composites ``comp`` (12, 10, H, W); see the module documentation.

    ``counts`` (12, H, W), the clear acquisitions per month, is optional: a month with a count of 0 is missing
    even if ``comp`` holds values there. Returns float32 (H, W) arrays (NaN where undefined) for the features in
    :data:`FEATURES` plus ``peak_ndvi`` and ``dormant_ndvi``, and int16 ``n_valid``, ``n_snow_free``, ``max_gap``.
    """
    comp = np.asarray(comp, dtype=np.float32)
    if comp.ndim != 4 or comp.shape[1] != len(MODEL_BANDS):
        raise ValueError(f"comp must be (months, {len(MODEL_BANDS)}, H, W), got {comp.shape}")
    valid = np.isfinite(comp).all(axis=1)
    if counts is not None:
        counts = np.asarray(counts)
        if counts.shape != valid.shape:
            raise ValueError(f"counts must be {valid.shape}, got {counts.shape}")
        valid &= counts > 0
    blue, green, red, nir = comp[:, _B02], comp[:, _B03], comp[:, _B04], comp[:, _B08]
    swir1, swir2 = comp[:, _B11], comp[:, _B12]
    ndvi = _ratio(nir, red)
    ndsi = _ratio(green, swir1)
    with np.errstate(invalid="ignore"):
        snow = (ndsi > rule.snow_ndsi) & (green > rule.snow_min_green)
        free = valid & np.isfinite(ndvi) & ~snow
    n_free = free.sum(axis=0)

    key = np.where(free, ndvi, -np.inf)
    greenest = np.argsort(-key, axis=0, kind="stable")  # snow-free months first, greenest first
    with np.errstate(invalid="ignore"):
        bare_ok = free & (ndsi <= rule.dormant_max_ndsi)
    n_bare_ok = bare_ok.sum(axis=0)
    least = np.argsort(np.where(bare_ok, ndvi, np.inf), axis=0, kind="stable")  # least green first

    top = _pick(ndvi, greenest, rule.peak_months, n_free)
    with np.errstate(invalid="ignore"):
        n_peak = np.where(n_free > 0, (top >= top[0] - np.float32(rule.peak_ndvi_drop)).sum(axis=0), 0)

    def peak(x: np.ndarray) -> np.ndarray:
        return _nanmean0(_pick(x, greenest, rule.peak_months, n_peak))

    p_blue, p_green = peak(blue), peak(green)
    with np.errstate(invalid="ignore", divide="ignore"):
        blue_green = np.where(p_green > 0, p_blue / p_green, np.nan).astype(np.float32)
    vis = (blue + green + red) / np.float32(3.0)
    return {
        "peak_ndvi": peak(ndvi),
        "peak_blue_green": blue_green,
        "peak_swir2": peak(swir2),
        "dormant_vis": _nanmedian0(_pick(vis, least, rule.dormant_months, n_bare_ok)),
        "dormant_ndvi": _nanmean0(_pick(ndvi, least, rule.dormant_months, n_bare_ok)),
        "n_valid": valid.sum(axis=0).astype(np.int16),
        "n_snow_free": n_free.astype(np.int16),
        "max_gap": _max_missing_run(valid),
    }


def nodata_mask(feats: dict[str, np.ndarray], rule: MaskRule = DEFAULT_RULE) -> np.ndarray:
    """True where the time series is too thin for a decision (see the module documentation)."""
    return (feats["n_valid"] < rule.min_months) | (feats["max_gap"] > rule.max_missing_run)


def tree_mask(comp: np.ndarray, rule: MaskRule = DEFAULT_RULE, counts: np.ndarray | None = None) -> np.ndarray:
    """Tree (1) / not tree (0) / nodata (255) per pixel of the monthly composites ``comp`` (12, 10, H, W): uint8
    (H, W). ``counts`` as in :func:`mask_features`."""
    feats = mask_features(comp, counts, rule)
    with np.errstate(invalid="ignore"):  # NaN features (no snow-free month): not tree
        tree = (feats["peak_ndvi"] >= rule.min_peak_ndvi) & (rule.score(feats) > 0)
    out = np.where(tree, TREE, NOT_TREE).astype(np.uint8)
    out[nodata_mask(feats, rule)] = NODATA
    return out
