"""The demo world's auxiliary layers: a DEM, WorldClim-like climate and SoilGrids-like soil water, in the CRSs,
resolutions and units of the real public products, and related to where each species grows.

Written under ``aux/`` of a world, with the layer set ``aux.yaml`` at the world's root (the format of
:func:`treemap.auxiliary.read_layer_set`, relative paths: the folder can be moved)::

    aux/dem_1arcsec.tif          elevation, float32 m, EPSG:4326 on a 1 arc-second grid (~31 x 20 m; SRTM / GLO-30)
    aux/wv0033_0-5cm_250m.tif    soil water content at 33 kPa, 0-5 cm, int16 10^-3 cm3/cm3, 250 m grid of the
                                 Interrupted Goode Homolosine (SoilGrids 2.0's own CRS and grid)
    aux/wc1_bio01_30s.tif        WorldClim 1 BIO01 annual mean temperature, int16 0.1 degC, EPSG:4326, 30 arc-seconds
    aux/wc1_bio05_30s.tif        BIO05 max temperature of the warmest month (0.1 degC)
    aux/wc1_bio06_30s.tif        BIO06 min temperature of the coldest month (0.1 degC)
    aux/wc1_bio12_30s.tif        BIO12 annual precipitation (mm)

None is on the world's UTM grid, so every run with them reprojects. Slope and aspect are not layers: treemap
derives them from the DEM (Horn, on the 10 m grid). The other 21 auxiliary variables have no layer and are missing.

How the layers relate to the species (the same rules for every seed, drawn from the world's truth codes and its
seed only, so an existing world gets the same layers as a freshly built one):

* Each class has a *habitat* (:data:`HABITAT`): an elevation preference, a wetness preference and a roughness,
  in standard units. Needleleaf species and Larix sit higher and on rougher ground (Larix highest), Fraxinus,
  Ulmus and Betula pubescens in moist valleys, Pinus and Castanea on dry ground; water is the lowest and wettest.
* Elevation (m) on the 10 m grid = 5 x regional relief (smooth noise of sd 1 over ~1.5 km) + 90 x (the class
  elevation preference + 0.15 x a stand-scale noise over ~120 m, smoothed over ~30 m) - 10 x valley (nearness to
  water, 1 at the river fading over ~300 m) + hills (smooth noise over ~50 m, 2 to 22 m high with the class
  roughness), shifted to a mean of :data:`MEAN_ELEVATION` over the world. Elevation thus carries the species'
  preference, blurred at the stand edges and by the relief and the hills.
* Soil water, 0-5 cm (10^-3 cm3/cm3) = 110 x (wetness preference + 0.2 x a stand-scale noise, smoothed over ~60 m)
  + 25 x valley - 0.08 per m above the mean elevation + 6 x broad noise (~800 m), shifted to a mean of
  :data:`MEAN_SOIL` and clipped to 50-600, then averaged over 250 m cells: much of the stand-scale signal is lost.
* Climate from the elevation alone by lapse rates (-6.0 K/km for BIO01, -6.5 for BIO05, -4.8 for BIO06; +0.55 mm/m
  for BIO12), averaged over 30 arc-second (~0.6 x 0.9 km) cells: over a 6 km world a few cells, a weak, smooth
  signal, as WorldClim is at this scale.

Each layer is the area average of its 10 m field over its own pixels (``rasterio.warp.reproject``, average), and
covers the world with a margin of :data:`MARGIN_M` (so halos and Horn neighbours at the world's edges have data).
Deterministic per (spec, truth): streams of :func:`treemap.demo.layout.stream` under :data:`STREAM_AUX`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from treemap.demo.classes import BUILT_UP, CROPLAND, GRASSLAND, WATER, class_table
from treemap.demo.layout import _fast_len, smooth_noise, stream
from treemap.demo.spec import PIXEL, WorldSpec

#: Random stream key of the auxiliary layers (layout 1, fields 2, clouds 3 are the world's).
STREAM_AUX = 4
#: Folder of the layers under the world's root, and the layer-set file beside it.
AUX_DIR = "aux"
LAYER_SET = "aux.yaml"
#: How far past the world's edges every layer reaches (m).
MARGIN_M = 1500.0
#: The 10 m fields are computed this far past the world (m): the margin plus a 30 arc-second pixel and more.
_FIELD_MARGIN_M = 3000.0
#: Mean elevation (m) and soil water (10^-3 cm3/cm3) over every world: worlds of all seeds share them.
MEAN_ELEVATION, MEAN_SOIL = 380.0, 300.0
#: SoilGrids 2.0's CRS (Interrupted Goode Homolosine, as in its VRTs); its 250 m grid is aligned to 250 m.
IGH = "+proj=igh +lat_0=0 +lon_0=0 +datum=WGS84 +units=m +no_defs"


@dataclass(frozen=True)
class Habitat:
    """Where a class grows, in standard units: elevation (+ higher), wetness (+ wetter), roughness (0..1)."""

    elevation: float
    wetness: float
    roughness: float


#: Habitat of every demo class, by name.
HABITAT: dict[str, Habitat] = {
    "Pinus sylvestris": Habitat(0.6, -1.2, 0.3),  # dry sandy ground and rocky ridges
    "Taxus baccata": Habitat(0.2, -0.2, 1.0),  # steep, shaded slopes
    "Larix decidua": Habitat(1.5, -0.3, 0.8),  # the highest ground, rough
    "Betula pubescens": Habitat(0.6, 1.3, 0.1),  # bogs: wet and flat, rather high
    "Carpinus betulus": Habitat(-0.8, 0.4, 0.2),  # lowland, heavy moist soils
    "Fraxinus excelsior": Habitat(-1.2, 1.2, 0.1),  # floodplains
    "Castanea sativa": Habitat(0.0, -0.9, 0.6),  # warm, dry slopes
    "Prunus avium": Habitat(-0.3, -0.5, 0.3),  # well-drained lower slopes
    "Ulmus glabra": Habitat(0.5, 0.8, 0.8),  # wych elm: moist upland ravines
    "Ilex aquifolium": Habitat(-0.2, 0.2, 0.3),
    "water": Habitat(-1.6, 2.0, 0.0),
    "grassland": Habitat(-0.2, 0.3, 0.2),
    "cropland": Habitat(-0.7, -0.1, 0.05),
    "built-up": Habitat(-0.9, -0.3, 0.05),
}


@dataclass(frozen=True)
class AuxFile:
    """One layer file: variable, file name, CRS, pixel size (CRS units), units, dtype, nodata, what it mimics."""

    variable: str
    name: str
    crs: str
    res: float
    units: str
    dtype: str
    nodata: float
    description: str


ARCSEC = 1.0 / 3600.0
FILES: tuple[AuxFile, ...] = (
    AuxFile("elevation", "dem_1arcsec.tif", "EPSG:4326", ARCSEC, "m", "float32", -9999.0,
            "elevation (m), 1 arc-second, like SRTM / Copernicus GLO-30"),
    AuxFile("soil_moisture_0_5cm", "wv0033_0-5cm_250m.tif", IGH, 250.0, "10^-3 cm3/cm3", "int16", -32768,
            "water content at 33 kPa, 0-5 cm (10^-3 cm3/cm3), 250 m, like SoilGrids 2.0 wv0033"),
    AuxFile("bio01", "wc1_bio01_30s.tif", "EPSG:4326", 30 * ARCSEC, "0.1 degC", "int16", -9999,
            "annual mean temperature (0.1 degC), 30 arc-seconds, like WorldClim 1 BIO1"),
    AuxFile("bio05", "wc1_bio05_30s.tif", "EPSG:4326", 30 * ARCSEC, "0.1 degC", "int16", -9999,
            "max temperature of the warmest month (0.1 degC), 30 arc-seconds, like WorldClim 1 BIO5"),
    AuxFile("bio06", "wc1_bio06_30s.tif", "EPSG:4326", 30 * ARCSEC, "0.1 degC", "int16", -9999,
            "min temperature of the coldest month (0.1 degC), 30 arc-seconds, like WorldClim 1 BIO6"),
    AuxFile("bio12", "wc1_bio12_30s.tif", "EPSG:4326", 30 * ARCSEC, "mm", "int16", -9999,
            "annual precipitation (mm), 30 arc-seconds, like WorldClim 1 BIO12"),
)


# ---------------------------------------------------------------------------------------------------- fields


def _blur(a: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian filter (sd ``sigma`` pixels) with mirrored edges, by FFT; float64."""
    pad = int(math.ceil(3 * sigma))
    p = np.pad(np.asarray(a, dtype=np.float64), pad, mode="reflect")
    ph, pw = _fast_len(p.shape[0]), _fast_len(p.shape[1])
    fy = np.fft.fftfreq(ph)[:, None]
    fx = np.fft.rfftfreq(pw)[None, :]
    transfer = np.exp(-2.0 * (np.pi * sigma) ** 2 * (fx ** 2 + fy ** 2))
    out = np.fft.irfft2(np.fft.rfft2(p, s=(ph, pw)) * transfer, s=(ph, pw))
    return out[pad:pad + a.shape[0], pad:pad + a.shape[1]]


def _habitat_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per truth code (0..255): elevation, wetness and roughness preference (0 for codes no class has)."""
    elev, wet, rough = np.zeros(256), np.zeros(256), np.zeros(256)
    names = {WATER: "water", GRASSLAND: "grassland", CROPLAND: "cropland", BUILT_UP: "built-up"}
    for c in class_table():
        h = HABITAT[names.get(c.code, c.name)]
        elev[c.code], wet[c.code], rough[c.code] = h.elevation, h.wetness, h.roughness
    return elev, wet, rough


@dataclass
class Fields:
    """The 10 m fields on the world's grid extended by ``margin`` pixels on every side."""

    margin: int  # pixels
    transform: tuple[float, ...]  # affine of the extended grid (6 numbers, rasterio order)
    values: dict[str, np.ndarray]  # variable -> (H + 2 m, W + 2 m) float64, in the layer's units


def fields(spec: WorldSpec, codes: np.ndarray) -> Fields:
    """The 10 m fields of the layers (see the module doc) from the world's truth codes and seed."""
    m = int(round(_field_margin(spec) / PIXEL))
    codes = np.pad(np.asarray(codes, dtype=np.uint8), m, mode="reflect")  # the world's land goes on past its edge
    shape = codes.shape
    elev_pref, wet_pref, rough_pref = _habitat_arrays()

    def noise(k: int, sigma: float) -> np.ndarray:
        return smooth_noise(stream(spec.seed, STREAM_AUX, k), shape, sigma).astype(np.float64)

    water = (codes == WATER).astype(np.float64)
    valley = np.minimum(_blur(water, 30.0) / 0.06, 1.0)  # 1 along the river and the lake, fading over ~300 m
    relief = noise(1, 150.0)
    elevation = (5.0 * relief
                 + 90.0 * _blur(elev_pref[codes] + 0.15 * noise(2, 12.0), 3.0)
                 - 10.0 * valley
                 + _blur(2.0 + 20.0 * rough_pref[codes], 6.0) * noise(3, 5.0))
    # worlds of every seed are samples of one landscape: the same mean elevation and soil water over the world
    inner = (slice(m, shape[0] - m), slice(m, shape[1] - m))
    elevation += MEAN_ELEVATION - elevation[inner].mean()
    soil = (110.0 * _blur(wet_pref[codes] + 0.2 * noise(4, 12.0), 6.0) + 25.0 * valley
            - 0.08 * (elevation - MEAN_ELEVATION) + 6.0 * noise(5, 80.0))
    soil += MEAN_SOIL - soil[inner].mean()
    values = {  # climate: lapse rates on the elevation (its 30 arc-second cell means), nothing else
        "elevation": elevation,
        "soil_moisture_0_5cm": np.clip(soil, 50.0, 600.0),
        "bio01": 10.0 * (10.6 - 0.0060 * elevation),
        "bio05": 10.0 * (23.4 - 0.0065 * elevation),
        "bio06": 10.0 * (-2.2 - 0.0048 * elevation),
        "bio12": 640.0 + 0.55 * elevation,
    }
    transform = (PIXEL, 0.0, spec.x_min - m * PIXEL, 0.0, -PIXEL, spec.y_max + m * PIXEL)
    return Fields(margin=m, transform=transform, values=values)


# ---------------------------------------------------------------------------------------------------- writing


def _grid(spec: WorldSpec, f: AuxFile) -> tuple[object, int, int]:
    """Transform, width, height of layer ``f``: the world plus :data:`MARGIN_M`, snapped outwards to the layer's
    global grid (whole multiples of its pixel size from 0, as WorldClim, SRTM and SoilGrids grids are)."""
    from rasterio.transform import Affine
    from rasterio.warp import transform_bounds

    x0, y1 = spec.x_min - MARGIN_M, spec.y_max + MARGIN_M
    x1, y0 = spec.x_min + spec.width_px * PIXEL + MARGIN_M, spec.y_max - spec.height_px * PIXEL - MARGIN_M
    left, bottom, right, top = transform_bounds(f"EPSG:{spec.epsg}", f.crs, x0, y0, x1, y1, densify_pts=21)
    r = f.res
    c0, c1 = math.floor(left / r + 1e-9), math.ceil(right / r - 1e-9)
    r0, r1 = math.floor(bottom / r + 1e-9), math.ceil(top / r - 1e-9)
    return Affine(r, 0.0, c0 * r, 0.0, -r, r1 * r), c1 - c0, r1 - r0


def _field_margin(spec: WorldSpec) -> float:
    """How far (m) past the world the 10 m fields must reach: :data:`_FIELD_MARGIN_M`, or more for a large world
    (``treemap demo --size``), where a layer's grid, turned against UTM (most the Homolosine's), reaches further out
    than the margin: its envelope in UTM, rounded up to 500 m, plus 500 m."""
    from rasterio.warp import transform_bounds

    x0, y1 = spec.x_min, spec.y_max
    x1, y0 = x0 + spec.width_px * PIXEL, y1 - spec.height_px * PIXEL
    reach = 0.0
    for f in FILES:
        transform, w, h = _grid(spec, f)
        bounds = (transform.c, transform.f + h * transform.e, transform.c + w * transform.a, transform.f)
        left, bottom, right, top = transform_bounds(f.crs, f"EPSG:{spec.epsg}", *bounds, densify_pts=21)
        reach = max(reach, x0 - left, right - x1, y0 - bottom, top - y1)
    if reach < _FIELD_MARGIN_M - 50.0:  # every world of the default size: the fields it always had
        return _FIELD_MARGIN_M
    return 500.0 * (math.ceil(reach / 500.0) + 1)


def layer_arrays(spec: WorldSpec, codes: np.ndarray) -> dict[str, tuple[np.ndarray, object]]:
    """Every layer of :data:`FILES` as (array in its dtype, transform), the area average of its 10 m field."""
    from rasterio.crs import CRS
    from rasterio.transform import Affine
    from rasterio.warp import Resampling, reproject

    fl = fields(spec, codes)
    src_transform = Affine(*fl.transform)
    src_crs = CRS.from_epsg(spec.epsg)
    out = {}
    for f in FILES:
        transform, w, h = _grid(spec, f)
        dst = np.full((h, w), np.nan, dtype=np.float64)
        reproject(fl.values[f.variable], dst, src_transform=src_transform, src_crs=src_crs, src_nodata=np.nan,
                  dst_transform=transform, dst_crs=CRS.from_user_input(f.crs), dst_nodata=np.nan,
                  resampling=Resampling.average, num_threads=1)
        if np.isnan(dst).any():
            raise AssertionError(f"demo aux layer {f.name} has pixels the 10 m fields do not cover")
        if f.dtype == "float32":
            arr = dst.astype(np.float32)
        else:
            arr = np.rint(dst).astype(f.dtype)
        out[f.variable] = (arr, transform)
    return out


def layer_set_text() -> str:
    """The content of ``aux.yaml``."""
    lines = ["# Auxiliary layers of the demo world (treemap.demo.auxlayers): synthetic, in the CRSs, grids and units",
             "# of the public products they stand in for.  treemap predict --aux aux.yaml",
             "# Slope and aspect are derived from the elevation; the other variables have no layer (missing)."]
    for f in FILES:
        lines.append(f"{f.variable}: {{path: {AUX_DIR}/{f.name}, units: \"{f.units}\"}}  # {f.description}")
    return "\n".join(lines) + "\n"


def write_aux_layers(root: Path, spec: WorldSpec, codes: np.ndarray) -> Path:
    """Write the layers under ``root/aux/`` and the layer set ``root/aux.yaml`` (last: its presence = complete);
    every file goes to a temporary name first, so concurrent writers of the same world are harmless."""
    from rasterio.crs import CRS

    from treemap.demo.world import write_cog

    folder = Path(root) / AUX_DIR
    folder.mkdir(exist_ok=True)
    arrays = layer_arrays(spec, codes)
    for f in FILES:
        arr, transform = arrays[f.variable]
        target = folder / f.name
        tmp = folder / f".{f.name}.{os.getpid()}.tmp"
        try:
            write_cog(tmp, arr, transform, CRS.from_user_input(f.crs), f.nodata, descriptions=(f.description,))
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
    target = Path(root) / LAYER_SET
    tmp = target.with_name(f".{LAYER_SET}.{os.getpid()}.tmp")
    tmp.write_text(layer_set_text(), encoding="utf-8")
    os.replace(tmp, target)
    return target

