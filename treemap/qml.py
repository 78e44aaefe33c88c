"""QGIS layer styles (.qml) for the products: :func:`categorical_qml` (a paletted renderer: value, colour, label per
class) for class maps, :func:`ramp_qml` / :func:`probability_qml` (a single-band pseudocolour renderer with an
interpolated viridis, cividis, magma or inferno ramp, :data:`treemap.styles.RAMPS`) for probabilities and
uncertainties, :func:`species_qml` for a species list's class map, and :func:`write_qml` to write one atomically
beside a COG (:func:`qml_path`: QGIS loads ``NAME.qml`` by itself when it opens ``NAME.tif``). The colours are
:mod:`treemap.styles`'."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from treemap.styles import RAMPS, hex_colour, rgb_of, species_colours

_DOCTYPE = "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>"
QGIS_VERSION = "3.28.0-Firenze"
_XML_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _text(value) -> str:
    """A label as XML can carry it: characters XML 1.0 forbids become U+FFFD, line breaks and tabs spaces
    (ElementTree escapes ``& < > "`` itself)."""
    return _XML_ILLEGAL.sub("\ufffd", re.sub(r"[\t\r\n]", " ", str(value)))


def _number(value: float) -> str:
    text = f"{float(value):.10g}"
    return "0" if text == "-0" else text


def _qml_root() -> ET.Element:
    return ET.Element("qgis", {"version": QGIS_VERSION, "styleCategories": "Symbology"})


def _min_max_origin(renderer: ET.Element) -> None:
    """User-defined limits: QGIS keeps the style's values instead of stretching to the layer's statistics."""
    origin = ET.SubElement(renderer, "minMaxOrigin")
    for tag, text in (("limits", "None"), ("extent", "WholeRaster"), ("statAccuracy", "Estimated"),
                      ("cumulativeCutLower", "0.02"), ("cumulativeCutUpper", "0.98"), ("stdDevFactor", "2")):
        ET.SubElement(origin, tag).text = text


def _transparency(renderer: ET.Element, value: float | None) -> None:
    element = ET.SubElement(renderer, "rasterTransparency")
    if value is not None:
        pixels = ET.SubElement(element, "singleValuePixelList")
        ET.SubElement(pixels, "pixelListEntry", {"min": _number(value), "max": _number(value),
                                                 "percentTransparent": "100"})


def _finish(root: ET.Element, pipe: ET.Element) -> str:
    ET.SubElement(pipe, "brightnesscontrast", {"brightness": "0", "contrast": "0", "gamma": "1"})
    ET.SubElement(pipe, "huesaturation", {
        "saturation": "0", "grayscaleMode": "0", "invertColors": "0", "colorizeOn": "0", "colorizeRed": "255",
        "colorizeGreen": "128", "colorizeBlue": "128", "colorizeStrength": "100"})
    ET.SubElement(pipe, "rasterresampler", {"maxOversampling": "2"})
    ET.SubElement(pipe, "resamplingStage").text = "resamplingFilter"
    ET.SubElement(root, "blendMode").text = "0"
    ET.indent(root, space="  ")
    return _DOCTYPE + "\n" + ET.tostring(root, encoding="unicode") + "\n"


def categorical_qml(names: Sequence[str], colours: Sequence[Sequence[int] | str], nodata: int | None = 255,
                    band: int = 1, values: Sequence[int] | None = None) -> str:
    """A QGIS 3.x layer style (.qml) for a class map: a paletted renderer on ``band`` with one palette entry (value,
    colour, label) per class. Class i has value ``values[i]`` (default i), colour ``colours[i]`` (RGB(A) or
    ``#rrggbb``; alpha is kept) and label ``names[i]``. ``nodata`` is left out of the palette and made transparent,
    so it draws as nothing even where the file does not flag it."""
    names = [_text(n) for n in names]
    values = list(range(len(names))) if values is None else [int(v) for v in values]
    if len(colours) != len(names) or len(values) != len(names):
        raise ValueError(f"{len(names)} class names need as many colours and values; got {len(colours)} colours "
                         f"and {len(values)} values")
    if len(set(values)) != len(values):
        raise ValueError("class values must be distinct")
    if nodata is not None and int(nodata) in values:
        raise ValueError(f"the nodata value {nodata} cannot also be a class")
    root = _qml_root()
    pipe = ET.SubElement(root, "pipe")
    renderer = ET.SubElement(pipe, "rasterrenderer", {"type": "paletted", "band": str(int(band)), "opacity": "1",
                                                      "alphaBand": "-1", "nodataColor": ""})
    _transparency(renderer, nodata)
    _min_max_origin(renderer)
    palette = ET.SubElement(renderer, "colorPalette")
    for value, colour, name in zip(values, colours, names):
        alpha = 255 if isinstance(colour, str) or len(tuple(colour)) < 4 else int(tuple(colour)[3])
        ET.SubElement(palette, "paletteEntry", {"value": str(value), "color": hex_colour(colour),
                                                "alpha": str(alpha), "label": name})
    return _finish(root, pipe)


def ramp_qml(band: int = 1, minimum: float = 0.0, maximum: float = 1.0, ramp: str = "viridis",
             label_unit: str = "probability", nodata: float | None = 255, *, raw: bool, scale: float = 1.0,
             offset: float = 0.0, clip: bool = True, precision: int = 2) -> str:
    """A QGIS 3.x layer style (.qml) for a continuous band: a single-band pseudocolour renderer whose interpolated
    colour-ramp shader runs through the nine published stops of ``ramp`` (:data:`RAMPS`) from ``minimum`` to
    ``maximum``.

    QGIS applies a band's scale and offset before it renders (a uint8 probability band with scale 0.005 reads as
    0..1 there), so the shader works in data units: value = DN x ``scale`` + ``offset``. ``raw`` (required) says
    what ``minimum`` and ``maximum`` are: False, data units (0.0 and 1.0 for a probability); True, stored DN (0 and
    200 for a probability), converted with ``scale`` and ``offset``, which must then be the band's. ``nodata`` is
    always a stored DN (255); it is made transparent at its data value. With ``clip`` values outside
    minimum..maximum are not drawn. Each stop is labelled with its data value and ``label_unit``; ``precision`` is
    the number of decimals QGIS shows where it labels values itself.
    """
    if ramp not in RAMPS:
        raise ValueError(f"unknown colour ramp {ramp!r}; one of {', '.join(RAMPS)}")
    if not scale:
        raise ValueError("scale must not be 0")
    lo, hi = (float(minimum) * scale + offset, float(maximum) * scale + offset) if raw else (float(minimum),
                                                                                             float(maximum))
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise ValueError(f"the ramp needs minimum < maximum, got {lo!r} .. {hi!r} (data units)")
    stops = RAMPS[ramp]
    positions = [k / (len(stops) - 1) for k in range(len(stops))]
    unit = _text(label_unit).strip()
    root = _qml_root()
    pipe = ET.SubElement(root, "pipe")
    renderer = ET.SubElement(pipe, "rasterrenderer", {
        "type": "singlebandpseudocolor", "band": str(int(band)), "opacity": "1", "alphaBand": "-1",
        "classificationMin": _number(lo), "classificationMax": _number(hi), "nodataColor": ""})
    _transparency(renderer, None if nodata is None else float(nodata) * scale + offset)
    _min_max_origin(renderer)
    shader = ET.SubElement(ET.SubElement(renderer, "rastershader"), "colorrampshader", {
        "colorRampType": "INTERPOLATED", "classificationMode": "1", "clip": "1" if clip else "0",
        "minimumValue": _number(lo), "maximumValue": _number(hi), "labelPrecision": str(int(precision))})
    source = ET.SubElement(shader, "colorramp", {"type": "gradient", "name": "[source]"})

    def rgba(colour: str) -> str:
        return ",".join(str(c) for c in rgb_of(colour)) + ",255"

    inner = ":".join(f"{_number(p)};{rgba(c)}" for p, c in zip(positions[1:-1], stops[1:-1]))
    for key, value in (("color1", rgba(stops[0])), ("color2", rgba(stops[-1])), ("discrete", "0"),
                       ("rampType", "gradient"), ("stops", inner)):
        ET.SubElement(source, "prop", {"k": key, "v": value})
    for p, colour in zip(positions, stops):
        value = lo + p * (hi - lo) if p < 1 else hi
        label = _number(round(value, max(int(precision), 0) + 4)) + (f" {unit}" if unit else "")
        ET.SubElement(shader, "item", {"alpha": "255", "value": _number(value), "label": label,
                                       "color": hex_colour(colour)})
    return _finish(root, pipe)


def probability_qml(band: int = 1, ramp: str = "viridis") -> str:
    """:func:`ramp_qml` for a probability band as treemap writes it: uint8 DN with scale 0.005 (DN 200 = 1.0),
    nodata 255, drawn from probability 0 to 1."""
    from treemap.outputs import NODATA_U8, PROB_SCALE

    return ramp_qml(band, 0.0, 1.0, ramp, "probability", NODATA_U8, raw=False, scale=PROB_SCALE)


def species_qml(species_list, nodata: int = 255) -> str:
    """:func:`categorical_qml` of a dominant-species map: species i drawn in :func:`species_colours` colour i."""
    return categorical_qml(list(species_list.species), species_colours(species_list), nodata=nodata)


def qml_path(raster: str | Path) -> Path:
    """The style QGIS loads by itself with a raster: ``NAME.qml`` beside ``NAME.tif``."""
    return Path(raster).with_suffix(".qml")


def write_qml(path: str | Path, text: str) -> Path:
    """Write a style atomically (:func:`treemap.durable.atomic_write_text`) after checking it is well-formed XML;
    a write failure is a WriteError naming ``path``."""
    from treemap.durable import atomic_write_text

    try:
        ET.fromstring(text)
    except ET.ParseError as exc:
        raise ValueError(f"not a well-formed QGIS style: {exc}") from None
    return atomic_write_text(Path(path), text)
