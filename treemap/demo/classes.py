"""Land-cover classes of the demo world: truth codes, spectral end-members and seasonal timing.

Each class has a leaf-off (dormant) and a leaf-on (mature) reflectance spectrum in the band order of
:data:`treemap.demo.spec.BANDS`; the surface reflectance on day ``t`` is ``off + (on - off) * v(t)`` with ``v`` a
double logistic (rise centred on ``sos``, fall centred on ``eos``, widths ``rup``/``rdn`` days), plus optional
short-lived terms: autumn colouring (a bump centred on ``eos``) and blossom (Prunus, early spring).
Species differ by a few percent reflectance in red-edge, NIR and SWIR and by one to five weeks in timing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from treemap.taxonomy import demo_species_list

WATER, GRASSLAND, CROPLAND, BUILT_UP = 101, 102, 103, 104


@dataclass(frozen=True)
class ClassDef:
    code: int
    name: str
    kind: str  # "tree" or "other"
    on: tuple[float, ...]
    off: tuple[float, ...]
    sos: float  # DOY, centre of the rise
    eos: float  # DOY, centre of the fall
    rup: float  # days
    rdn: float
    autumn: tuple[float, ...] = (0.0,) * 10  # added at eos (Gaussian, sd 10 days)
    phenology: bool = True  # False: truth phenology is nodata (no vegetation cycle)
    taxon: tuple[str, str, str, str] | None = None  # level0, family, genus, species


#                 B02    B03    B04    B05    B06    B07    B08    B8A    B11    B12
_TREES = {
    "Pinus sylvestris": dict(
        on=(0.024, 0.045, 0.025, 0.072, 0.165, 0.205, 0.225, 0.235, 0.125, 0.058),
        off=(0.022, 0.039, 0.026, 0.062, 0.135, 0.165, 0.185, 0.195, 0.115, 0.054),
        sos=112, eos=288, rup=10, rdn=12),
    "Taxus baccata": dict(
        on=(0.019, 0.038, 0.019, 0.058, 0.140, 0.168, 0.185, 0.193, 0.098, 0.043),
        off=(0.019, 0.034, 0.020, 0.053, 0.122, 0.146, 0.160, 0.168, 0.094, 0.043),
        sos=128, eos=278, rup=10, rdn=12),
    "Larix decidua": dict(
        on=(0.030, 0.058, 0.031, 0.088, 0.225, 0.283, 0.310, 0.325, 0.172, 0.080),
        off=(0.046, 0.060, 0.066, 0.090, 0.118, 0.132, 0.145, 0.153, 0.205, 0.135),
        sos=99, eos=300, rup=6, rdn=7,
        autumn=(0.004, 0.030, 0.045, 0.032, 0.010, 0.0, 0.0, 0.0, 0.012, 0.008)),
    "Betula pubescens": dict(
        on=(0.033, 0.066, 0.033, 0.102, 0.272, 0.352, 0.392, 0.405, 0.190, 0.084),
        off=(0.062, 0.076, 0.082, 0.108, 0.150, 0.168, 0.185, 0.195, 0.212, 0.132),
        sos=107, eos=282, rup=5, rdn=8,
        autumn=(0.002, 0.022, 0.032, 0.022, 0.005, 0.0, 0.0, 0.0, 0.008, 0.005)),
    "Carpinus betulus": dict(
        on=(0.027, 0.057, 0.026, 0.086, 0.248, 0.318, 0.350, 0.366, 0.170, 0.073),
        off=(0.040, 0.054, 0.064, 0.094, 0.124, 0.143, 0.158, 0.168, 0.208, 0.134),
        sos=117, eos=295, rup=6, rdn=8,
        autumn=(0.001, 0.015, 0.022, 0.015, 0.0, 0.0, 0.0, 0.0, 0.006, 0.004)),
    "Fraxinus excelsior": dict(
        on=(0.034, 0.062, 0.036, 0.097, 0.238, 0.298, 0.326, 0.342, 0.198, 0.092),
        off=(0.046, 0.060, 0.071, 0.101, 0.131, 0.150, 0.165, 0.175, 0.228, 0.150),
        sos=136, eos=285, rup=5, rdn=6),
    "Castanea sativa": dict(
        on=(0.026, 0.055, 0.027, 0.083, 0.232, 0.305, 0.338, 0.352, 0.160, 0.068),
        off=(0.041, 0.056, 0.067, 0.096, 0.128, 0.148, 0.163, 0.173, 0.218, 0.140),
        sos=129, eos=302, rup=7, rdn=8,
        autumn=(0.0, 0.008, 0.020, 0.014, 0.0, 0.0, 0.0, 0.0, 0.015, 0.010)),
    "Prunus avium": dict(
        on=(0.031, 0.063, 0.031, 0.093, 0.262, 0.333, 0.366, 0.380, 0.186, 0.082),
        off=(0.045, 0.060, 0.068, 0.100, 0.135, 0.155, 0.170, 0.180, 0.215, 0.135),
        sos=113, eos=288, rup=6, rdn=8,
        autumn=(0.0, 0.005, 0.035, 0.012, 0.0, 0.0, 0.0, 0.0, 0.006, 0.004)),
    "Ulmus glabra": dict(
        on=(0.030, 0.060, 0.030, 0.090, 0.240, 0.300, 0.322, 0.338, 0.192, 0.090),
        off=(0.043, 0.057, 0.067, 0.098, 0.128, 0.148, 0.163, 0.173, 0.216, 0.138),
        sos=123, eos=292, rup=6, rdn=8,
        autumn=(0.0, 0.010, 0.015, 0.010, 0.0, 0.0, 0.0, 0.0, 0.004, 0.003)),
    "Ilex aquifolium": dict(
        on=(0.024, 0.050, 0.023, 0.076, 0.205, 0.255, 0.280, 0.292, 0.142, 0.061),
        off=(0.024, 0.047, 0.025, 0.071, 0.185, 0.228, 0.252, 0.263, 0.137, 0.061),
        sos=125, eos=285, rup=12, rdn=14),
}

_OTHERS = (
    ClassDef(WATER, "water", "other",
             on=(0.045, 0.055, 0.035, 0.026, 0.016, 0.013, 0.011, 0.010, 0.006, 0.004),
             off=(0.045, 0.055, 0.035, 0.026, 0.016, 0.013, 0.011, 0.010, 0.006, 0.004),
             sos=120, eos=280, rup=10, rdn=10, phenology=False),
    ClassDef(GRASSLAND, "grassland", "other",
             on=(0.030, 0.068, 0.035, 0.100, 0.270, 0.345, 0.375, 0.392, 0.225, 0.115),
             off=(0.042, 0.070, 0.060, 0.100, 0.175, 0.205, 0.225, 0.235, 0.225, 0.140),
             sos=88, eos=292, rup=12, rdn=15),
    # cropland: bare soil, then a sharp crop cycle; the calendar (winter cereal or summer crop) is per field
    ClassDef(CROPLAND, "cropland", "other",
             on=(0.025, 0.062, 0.026, 0.092, 0.305, 0.405, 0.450, 0.470, 0.205, 0.092),
             off=(0.080, 0.108, 0.140, 0.168, 0.190, 0.208, 0.225, 0.235, 0.300, 0.245),
             sos=95, eos=192, rup=7, rdn=4,
             autumn=(0.010, 0.030, 0.050, 0.040, 0.010, 0.0, 0.0, 0.0, 0.040, 0.030)),
    # built-up: a per-pixel mix of the materials below (on/off are the mean, unused per pixel)
    ClassDef(BUILT_UP, "built-up", "other",
             on=(0.100, 0.117, 0.150, 0.170, 0.183, 0.192, 0.200, 0.207, 0.240, 0.210),
             off=(0.100, 0.117, 0.150, 0.170, 0.183, 0.192, 0.200, 0.207, 0.240, 0.210),
             sos=120, eos=280, rup=10, rdn=10, phenology=False),
)

#: Crop calendars (sos, eos, rup, rdn): winter cereal, summer crop (maize-like).
CROP_CALENDARS = ((95.0, 192.0, 7.0, 4.0), (158.0, 258.0, 6.0, 4.0))

#: Built-up materials: red roof tiles, asphalt, concrete.
URBAN_MATERIALS = np.array([
    (0.070, 0.090, 0.160, 0.200, 0.220, 0.230, 0.240, 0.250, 0.300, 0.250),
    (0.070, 0.080, 0.090, 0.100, 0.110, 0.115, 0.120, 0.125, 0.140, 0.130),
    (0.160, 0.180, 0.200, 0.210, 0.220, 0.230, 0.240, 0.245, 0.280, 0.250),
], dtype=np.float32)

#: Forest floor (litter, moss, soil) seen through gaps in the canopy.
FOREST_FLOOR = np.array((0.050, 0.070, 0.080, 0.110, 0.150, 0.170, 0.190, 0.200, 0.250, 0.160), dtype=np.float32)

#: Prunus blossom: added to the spectrum around DOY ``BLOSSOM_DOY`` (Gaussian, sd ``BLOSSOM_SD`` days).
BLOSSOM = np.array((0.045, 0.050, 0.045, 0.040, 0.020, 0.010, 0.008, 0.008, 0.010, 0.008), dtype=np.float32)
BLOSSOM_DOY, BLOSSOM_SD = 103.0, 5.0
AUTUMN_SD = 10.0


def class_table() -> tuple[ClassDef, ...]:
    """Trees first (codes 1..10 in the order of ``demo_species_list()``), then water, grassland, cropland, built-up."""
    trees = []
    for code, taxon in enumerate(demo_species_list().taxa, start=1):
        params = _TREES.get(taxon.species)
        if params is None:
            raise ValueError(f"demo world has no spectra for species {taxon.species!r}")
        trees.append(ClassDef(code, taxon.species, "tree",
                              taxon=(taxon.level0, taxon.family, taxon.genus, taxon.species), **params))
    return tuple(trees) + _OTHERS


#: ESA WorldCover class codes of the demo's classes (trees are all 10 "tree cover"; 0 stays "outside the world").
WORLDCOVER = {"tree": 10, WATER: 80, GRASSLAND: 30, CROPLAND: 40, BUILT_UP: 50}


def worldcover_codes(codes: np.ndarray, table: tuple[ClassDef, ...]) -> np.ndarray:
    """Truth codes -> ESA WorldCover codes (uint8, 0 where the truth is 0): the demo's land-cover raster."""
    lut = np.zeros(256, dtype=np.uint8)
    for c in table:
        lut[c.code] = WORLDCOVER["tree"] if c.kind == "tree" else WORLDCOVER[c.code]
    return lut[np.asarray(codes, dtype=np.uint8)]


def classes_json(table: tuple[ClassDef, ...]) -> dict:
    """The content of ``truth/classes.json``: code -> name, kind (and taxonomy for trees)."""
    out: dict[str, dict] = {}
    for c in table:
        entry: dict = {"name": c.name, "kind": c.kind}
        if c.taxon is not None:
            entry.update(level0=c.taxon[0], family=c.taxon[1], genus=c.taxon[2], species=c.taxon[3])
        out[str(c.code)] = entry
    return out
