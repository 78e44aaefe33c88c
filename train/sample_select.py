"""One location of ``train.sample``: its phenological seasons and the scene chosen for each.

* **Transitions** (:func:`window_transitions`): the clear-sky vegetation-index series of a ``window`` x ``window``
  pixel square around the location, read as ``treemap phenology`` reads a tile (:func:`treemap.phenology_run.
  tile_series`: harmonised, SCL-masked, snow left out), goes through :func:`treemap.phenology.phenology_metrics` once
  per calendar year of the search window. Greenup, maturity, senescence and dormancy are the medians over the
  pixel-years that have all four (days of year; medians keep their order) and an amplitude of at least 0.1
  (:data:`WEAK_CYCLE`), or over all that have the four when fewer than ``min_pixel_years`` are that strong: the
  near-flat cycles that noise gives evergreen pixels must not pull a mixed window's seasons. Fewer than
  ``min_pixel_years`` pixel-years with the four at all (water, rock, evergreen or built-up windows, too few clear
  dates): the astronomical seasons of the location's hemisphere stand in (:func:`calendar_transitions`), and the
  record says so.
* **Seasons** (:class:`Season`): the four intervals of :data:`treemap.phenology.SEASONS`, as days of a typical
  year: greenup->maturity, maturity->senescence, senescence->dormancy, and dormancy->greenup one year on (winter).
  They tile the year; an interval includes its start and excludes its end, so no scene belongs to two seasons.
* **Scenes** (:func:`choose_scene`): the candidates of a season are the acquisitions (the scenes of one overpass,
  overlapping MGRS tiles mosaicked, as everywhere in treemap) of any year whose day of year lies in the interval.
  Their cloud share is measured on the patch from SCL: the share of the patch's pixels that are not clear sky
  (SCL other than 4, 5, 6, 7, 11, or no data) in every scene of the acquisition. Candidates are read nearest the
  season's middle first (ties by date); the first one under ``max_cloud`` fixes the distance d; every candidate up
  to d + ``tie_days`` is a near tie, and the least cloudy near tie wins (then the nearer, then the earlier).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date

import numpy as np

from treemap.phenology import SEASONS

log = logging.getLogger("train.sample")

#: Shard channels: the 10 m and 20 m bands SSL4Eco keeps, then NDVI.
CHANNELS: tuple[str, ...] = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "NDVI")
#: The transitions that bound the four seasons.
BOUNDS: tuple[str, ...] = ("greenup", "maturity", "senescence", "dormancy")
#: Days of a typical year (seasons are matched by day of year across years).
PERIOD = 365.25
#: Astronomical season starts (days of year, northern hemisphere): March equinox, June solstice, September equinox,
#: December solstice; the southern hemisphere is half a year later.
CALENDAR = (79.0, 172.0, 265.0, 355.0)
LOW_NDVI, LOW_NDVI_WEIGHT = 0.1, 0.25
#: Index amplitude below which a pixel's cycle counts as weak (see :func:`window_transitions`).
WEAK_CYCLE = 0.1


@dataclass(frozen=True)
class Transitions:
    greenup: float
    maturity: float
    senescence: float
    dormancy: float
    source: str  # "phenology" or "calendar"
    pixel_years: int = 0

    def seasons(self) -> list["Season"]:
        b = (self.greenup, self.maturity, self.senescence, self.dormancy, self.greenup + PERIOD)
        return [Season(name, float(b[k] % PERIOD), float(b[k + 1] - b[k])) for k, name in enumerate(SEASONS)]

    def to_json(self) -> dict:
        return {**{k: round(float(getattr(self, k)), 2) for k in BOUNDS}, "source": self.source,
                "pixel_years": self.pixel_years}


@dataclass(frozen=True)
class Season:
    """An interval of the typical year: ``start`` (day of year, 0 <= start < 365.25) and ``length`` days."""

    name: str
    start: float
    length: float

    def offset(self, doy: float) -> float:
        return (doy - self.start) % PERIOD

    def contains(self, doy: float) -> bool:
        return self.offset(doy) < self.length

    def distance(self, doy: float) -> float:
        """Days between ``doy`` and the season's middle."""
        return abs(self.offset(doy) - self.length / 2)

    def to_json(self) -> dict:
        return {"start": round(self.start, 2), "end": round((self.start + self.length) % PERIOD, 2),
                "middle": round((self.start + self.length / 2) % PERIOD, 2)}


def calendar_transitions(lat: float) -> Transitions:
    shift = 0.0 if lat >= 0 else PERIOD / 2
    return Transitions(*(c + shift for c in CALENDAR), source="calendar")


def window_transitions(dates: np.ndarray, values: np.ndarray, clear: np.ndarray, years: list[int],
                       min_observations: int = 12, min_pixel_years: int = 10) -> Transitions | None:
    """Median transitions over the window's pixel-years (see the module doc); None when too few have all four."""
    from treemap.phenology import phenology_metrics

    found, amplitudes = [], []
    for year in years:
        r = phenology_metrics(dates, values, clear, year, min_observations=min_observations)
        four = np.stack([np.asarray(getattr(r, k), dtype=np.float64) for k in BOUNDS])
        amplitude = np.asarray(r.amplitude, dtype=np.float64)
        ok = np.isfinite(four).all(axis=0) & (four[3] - four[0] < PERIOD)
        found.append(four[:, ok])
        amplitudes.append(amplitude[ok])
    both = np.concatenate(found, axis=1) if found else np.empty((4, 0))
    strong = np.concatenate(amplitudes) >= WEAK_CYCLE if found else np.zeros(0, dtype=bool)
    if strong.sum() >= max(min_pixel_years, 1):
        both = both[:, strong]
    if both.shape[1] < max(min_pixel_years, 1):
        return None
    med = np.median(both, axis=1)
    return Transitions(*(float(v) for v in med), source="phenology", pixel_years=int(both.shape[1]))


# -- scenes ---------------------------------------------------------------------------------------------------------
@dataclass
class Candidate:
    day: date
    doy: int
    distance: float
    indices: tuple[int, ...]  # scene indices of the acquisition in the patch cube
    scene_ids: tuple[str, ...]


@dataclass
class Chosen:
    candidate: Candidate
    cloud: float
    image: np.ndarray  # (9, P, P) float32, CHANNELS
    clear: np.ndarray  # (P, P) bool
    evaluated: int

    @property
    def mean_ndvi(self) -> float:
        ndvi = self.image[-1]
        sel = ndvi[self.clear & np.isfinite(ndvi)]
        if not sel.size:
            sel = ndvi[np.isfinite(ndvi)]
        return float(sel.mean()) if sel.size else float("nan")


def candidates(season: Season, cube) -> list[Candidate]:
    """The acquisitions of the patch cube inside the season, nearest its middle first (then by date)."""
    from treemap.cube import acquisitions

    out = []
    for group in acquisitions(cube.scenes):
        day = group.key[1]
        doy = day.timetuple().tm_yday
        if season.contains(doy):
            out.append(Candidate(day, doy, season.distance(doy), group.indices,
                                 tuple(cube.scenes[i].id for i in group.indices)))
    return sorted(out, key=lambda c: (c.distance, c.day, c.scene_ids))


def patch_image(cube, indices: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, float]:
    """One acquisition over the patch: (9, P, P) float32 image in :data:`CHANNELS` (harmonised reflectance, NaN
    where no scene has data), the clear-sky mask and the cloud share (1 - clear share).

    Per pixel, the first scene where it is clear sky with all bands; where no scene is clear, the first scene with
    data (so the image shows the cloud as it is, and the mask says so)."""
    from treemap.composite import clear_mask, harmonise
    from treemap.cube import CLEAR_SCL
    from treemap.phenology import ndvi

    idx = list(indices)
    dn, scl = cube.load(idx)
    refl = harmonise(dn, cube.scale[idx], cube.offset[idx])[:, :8]  # B02..B8A in Sentinel-2 order
    del dn
    has = np.isfinite(refl).all(axis=1)
    ok = clear_mask(scl, CLEAR_SCL) & has
    image = np.full(refl.shape[1:], np.nan, dtype=np.float32)
    clear = np.zeros(refl.shape[2:], dtype=bool)
    filled = np.zeros(refl.shape[2:], dtype=bool)
    for layer in (ok, has):
        for k in range(refl.shape[0]):
            take = layer[k] & ~filled
            image[:, take] = refl[k][:, take]
            if layer is ok:
                clear |= take
            filled |= take
    nd = ndvi(image[2], image[6])
    return np.concatenate([image, nd[None]]), clear, float(1.0 - clear.mean())


def choose_scene(cands: list[Candidate], cube, max_cloud: float, tie_days: float) -> tuple[Chosen | None, list]:
    """The scene of one season by the rule of the module doc; also every (candidate, cloud) read, in order."""
    best: Chosen | None = None
    limit = None
    seen = []
    for cand in cands:
        if limit is not None and cand.distance > limit:
            break
        image, clear, cloud = patch_image(cube, cand.indices)
        seen.append((cand, cloud))
        if cloud * 100.0 >= max_cloud:
            continue
        if limit is None:
            limit = cand.distance + tie_days
        if best is None or (cloud, cand.distance, cand.day) < (best.cloud, best.candidate.distance,
                                                                best.candidate.day):
            best = Chosen(cand, cloud, image, clear, 0)
    if best is not None:
        best.evaluated = len(seen)
    return best, seen


def weight_of(chosen: list[Chosen]) -> float:
    """1/4 when the patch's mean NDVI is below 0.1 in every chosen season (water, bare ground, snow), else 1."""
    ndvis = [c.mean_ndvi for c in chosen]
    return LOW_NDVI_WEIGHT if ndvis and all(np.isfinite(v) and v < LOW_NDVI for v in ndvis) else 1.0
