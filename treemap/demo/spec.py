"""The demo world's specification, its grids and its acquisition calendar."""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from dataclasses import dataclass
from pathlib import Path

#: Bump whenever the generator's output changes for a given spec (it names the cache folder).
GENERATOR_VERSION = "1"

#: Reflectance bands in wavelength order (the order of every band axis in this package).
BANDS: tuple[str, ...] = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")
BANDS_10M: tuple[str, ...] = ("B02", "B03", "B04", "B08")
BANDS_20M: tuple[str, ...] = ("B05", "B06", "B07", "B8A", "B11", "B12")
PIXEL = 10.0  # metres, world grid

#: Sides (km) a world of ``treemap demo --size WxH`` may have. The generator holds the whole world's per-pixel
#: fields in memory (peak RSS measured on 2 cores: 0.47 GB for the default 6.4 x 4 km, 0.50 GB at 5 x 5 km, 0.99 GB
#: at 10 x 10 km, so about 0.35 GB + 0.65 kB per 10 m pixel: about 4.4 GB at 25 x 25 km); its stand layout costs
#: time growing with the square of the area, and its cloud fields grow to 8192 px squares above 20.48 km. 25 km
#: leaves room for 20 x 20 km (400 km²) AOIs with a margin.
MIN_SIDE_KM, MAX_SIDE_KM = 1.0, 25.0


@dataclass(frozen=True)
class WorldSpec:
    """Everything that determines a demo world; equal specs give byte-identical worlds."""

    seed: int = 0
    epsg: int = 32632
    x_min: float = 496000.0  # UTM metres; world union extent
    y_max: float = 5544000.0
    width_px: int = 640  # at 10 m -> 6.4 km
    height_px: int = 400  # at 10 m -> 4.0 km
    year: int = 2022
    cadence_days: int = 5  # dates: Jan <first_day> + k * cadence while in the year
    overlap_px: int = 120  # width of the strip covered by both MGRS-like tiles (10 m px)
    first_day: int = 3  # day of January of the first acquisition
    tiles: tuple[str, str] = ("32UMA", "32UNA")  # west, east
    forest_fraction: float = 0.65
    mean_stand_ha: float = 5.0  # mean size of a forest stand / field (Voronoi cell)
    baseline_04_start: str = "2022-01-25"  # scenes from this date on carry BOA_ADD_OFFSET (+1000 DN)
    acquisition_time: str = "10:36:29.024"  # UTC time of day of every acquisition

    def validate(self) -> None:
        if self.width_px < 40 or self.height_px < 40 or self.width_px % 2 or self.height_px % 2:
            raise ValueError("width_px and height_px must be even and at least 40")
        if self.overlap_px < 0 or self.overlap_px % 2 or self.overlap_px >= self.width_px - 8:
            raise ValueError("overlap_px must be even, >= 0 and smaller than width_px - 8")
        if self.x_min % 20 or self.y_max % 20:
            raise ValueError("x_min and y_max must be multiples of 20 m (10 m and 20 m grids share the origin)")
        if not 1900 < self.year < 2200:
            raise ValueError("year out of range")
        if self.cadence_days < 1 or not 1 <= self.first_day <= 31:
            raise ValueError("cadence_days must be >= 1 and first_day a day of January")
        if not 0.05 <= self.forest_fraction <= 0.9:
            raise ValueError("forest_fraction must be within 0.05..0.9")
        if self.mean_stand_ha <= 0:
            raise ValueError("mean_stand_ha must be positive")
        if len(self.tiles) != 2 or any(len(t) != 5 for t in self.tiles):
            raise ValueError("tiles must be two MGRS tile names like '32UMA'")

    def to_json(self) -> dict:
        """The spec as plain JSON values (tuples become lists)."""
        out = dataclasses.asdict(self)
        out["tiles"] = list(self.tiles)
        return out

    @classmethod
    def from_json(cls, data: dict) -> "WorldSpec":
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        if "tiles" in kwargs:
            kwargs["tiles"] = tuple(kwargs["tiles"])
        return cls(**kwargs)


@dataclass(frozen=True)
class DemoWorld:
    root: Path  # folder of the world
    catalog: Path  # root/catalog.json (static STAC catalog)
    spec: WorldSpec
    truth_species: Path  # root/truth/species.tif
    truth_phenology: Path  # root/truth/phenology.tif
    classes: Path  # root/truth/classes.json
    landcover: Path | None = None  # root/truth/landcover.tif: the truth in ESA WorldCover codes (for --mask)
    aux_layers: Path | None = None  # root/aux.yaml: layer set of the auxiliary layers under root/aux (for --aux)


@dataclass(frozen=True)
class TileGrid:
    """One MGRS-like tile: a window of the world's 10 m grid (columns col0..col1)."""

    name: str  # "32UMA"
    col0: int
    col1: int
    x0: float  # upper-left corner (UTM m)
    y0: float
    width: int  # 10 m pixels
    height: int

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        return (self.x0, self.y0 - self.height * PIXEL, self.x0 + self.width * PIXEL, self.y0)

    def shape(self, res: int) -> tuple[int, int]:
        f = res // 10
        return (self.height // f, self.width // f)

    def transform(self, res: int) -> list[float]:
        """``proj:transform`` (6 numbers, as Earth Search writes it)."""
        return [float(res), 0.0, self.x0, 0.0, -float(res), self.y0]


def parse_size(text: str) -> tuple[float, float]:
    """``"WxH"`` in km (``"10x10"``, ``"2x1.5"``) -> (width, height) km; a ``ValueError`` says what is wrong."""
    parts = str(text).strip().lower().split("x")
    if len(parts) != 2:
        raise ValueError("is not a size like 10x10 (width x height in km)")
    try:
        sides = tuple(float(p) for p in parts)
        if not all(math.isfinite(s) for s in sides):
            raise ValueError
    except ValueError:
        raise ValueError("is not a size like 10x10 (width x height in km)") from None
    if not all(MIN_SIDE_KM <= s <= MAX_SIDE_KM for s in sides):
        raise ValueError(f"is outside {MIN_SIDE_KM:g}..{MAX_SIDE_KM:g} km per side")
    return sides  # type: ignore[return-value]


def sized_spec(seed: int, width_km: float, height_km: float) -> WorldSpec:
    """The default world of ``seed`` with another extent (same origin, north-west corner): each side rounded to
    the 20 m grid (an even number of 10 m pixels). The two MGRS-like tiles overlap by 1.2 km as in the default
    world, or by a third of the width in worlds narrower than 3.6 km. ``6.4 x 4`` km is the default world itself."""
    base = WorldSpec(seed=seed)
    width_px, height_px = 2 * round(width_km * 50), 2 * round(height_km * 50)
    overlap_px = min(base.overlap_px, 2 * (width_px // 6))
    return dataclasses.replace(base, width_px=width_px, height_px=height_px, overlap_px=overlap_px)


def tile_grids(spec: WorldSpec) -> tuple[TileGrid, TileGrid]:
    """West and east tile; both start on the 20 m grid and share an ``overlap_px`` wide strip."""
    w = spec.width_px
    a_end = (w + spec.overlap_px) // 2
    a_end += a_end % 2
    b_start = a_end - spec.overlap_px
    west = TileGrid(spec.tiles[0], 0, a_end, spec.x_min, spec.y_max, a_end, spec.height_px)
    east = TileGrid(spec.tiles[1], b_start, w, spec.x_min + b_start * PIXEL, spec.y_max, w - b_start,
                    spec.height_px)
    return west, east


def acquisition_dates(spec: WorldSpec) -> list[dt.date]:
    start = dt.date(spec.year, 1, spec.first_day)
    out = []
    day = start
    while day.year == spec.year:
        out.append(day)
        day += dt.timedelta(days=spec.cadence_days)
    return out


def processing_baseline(spec: WorldSpec, day: dt.date) -> str:
    return "04.00" if day >= dt.date.fromisoformat(spec.baseline_04_start) else "03.01"


def days_in_year(year: int) -> int:
    return (dt.date(year + 1, 1, 1) - dt.date(year, 1, 1)).days
