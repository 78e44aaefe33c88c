"""Colours and QGIS layer styles (.qml) for the products.

Species colours (:func:`species_colours`) start from Paul Tol's *muted* qualitative scheme (Tol, "Colour Schemes",
SRON/EPS/TN/09-002, 2021): nine colours chosen to stay apart for people with protanopia, deuteranopia and
tritanopia as well as normal vision. It is the largest of the published colour-blind-safe qualitative sets (Okabe-Ito
has eight, one of them black, which reads as a hole on a map; Tol's *bright* and *vibrant* have six or seven, and
Tol's *light* is meant for backgrounds behind labels), and its medium lightness leaves room for the lighter and darker
shades that lists with more than nine genera need. Under Machado et al. (2009) full-severity simulation its colours
stay at least 11.5 CIEDE2000 units apart for every kind of vision (see ``tests/test_styles.py``).

The hue carries the genus: the first nine genera of a list, in the order they first appear, get the nine muted colours
as published; every further species gets a shade (another OKLab lightness and chroma at the same OKLab hue) of its
genus' hue, so the species of one genus read as lighter and darker variants of one colour. A genus after the ninth
takes the hue, and every further species the shade, that is farthest -- in CIEDE2000 under normal vision and all
three simulated dichromacies, whichever is nearest -- from the colours already handed out, the nine muted colours
and the missing-data grey, white and black, where the colour of the row just before counts at half its distance:
neighbouring rows, which a legend shows side by side and which are often relatives, end up about twice as far apart
as the closest pair of the list. With more than nine genera a hue carries several genera, told apart by lightness
and chroma: the legend, not the hue alone, names the genus.

A species' colour depends on its genus and on the genera of the rows before it, not on its name: appending species
never repaints the species before them; inserting, deleting or reordering rows repaints the rows after the change
(the row order is also the class index of the dominant-species map). Names are deliberately not hashed into
colours: a hash cannot keep the genera of a short list apart, and short lists are the common case.
A genus keeps its hue until the hue's ~80 shades are used up. Beyond the ~720 shades of the nine hues (far beyond
what a reader can tell apart anyway; the dominant-species map holds at most 254 classes) colours are merely unique.

The candidate shades are a fixed table and the choices among them compare distances rounded to 0.1 unit, so the same
list gives the same colours on every run and machine; the tests pin the table and the demo list's colours.

The QGIS layer styles built from these colours are :mod:`treemap.qml`'s.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence

import numpy as np

Rgba = tuple[int, int, int, int]

#: Paul Tol's muted scheme, in his order: rose, indigo, sand, green, cyan, wine, teal, olive, purple.
TOL_MUTED: tuple[str, ...] = ("#CC6677", "#332288", "#DDCC77", "#117733", "#88CCEE", "#882255", "#44AA99",
                              "#999933", "#AA4499")
#: Okabe & Ito (2008), "Color Universal Design": the leaf-type colours and their spares.
OKABE_ITO: dict[str, str] = {"orange": "#E69F00", "sky blue": "#56B4E9", "bluish green": "#009E73",
                             "yellow": "#F0E442", "blue": "#0072B2", "vermillion": "#D55E00",
                             "reddish purple": "#CC79A7"}

#: The colour-table entry of the nodata index (255): fully transparent. No class colour is transparent.
NODATA_COLOUR: Rgba = (0, 0, 0, 0)
#: Tol's grey for missing data; class colours are kept away from it (and from white and black).
MISSING_GREY: Rgba = (221, 221, 221, 255)
#: The tree mask: 0 not tree (light grey), 1 tree (Tol's muted green).
TREE_MASK_NAMES: tuple[str, str] = ("not tree", "tree")
TREE_MASK_COLOURS: tuple[Rgba, Rgba] = ((221, 221, 221, 255), (17, 119, 51, 255))

#: Published colour-map values at nine equally spaced positions (0, 1/8, ..., 1) of the 256-entry tables of
#: matplotlib's viridis, magma, inferno (van der Walt & Smith, 2015) and cividis (Nuñez, Anderton & Renslow, 2018).
RAMPS: dict[str, tuple[str, ...]] = {
    "viridis": ("#440154", "#472d7b", "#3b528b", "#2c728e", "#21918c", "#27ad81", "#5cc863", "#aadc32", "#fde725"),
    "cividis": ("#00224e", "#1a386f", "#434e6c", "#61656f", "#7d7c78", "#9a9376", "#bbad6d", "#ddc858", "#fee838"),
    "magma": ("#000004", "#1d1147", "#51127c", "#832681", "#b73779", "#e55064", "#fb8761", "#fec287", "#fcfdbf"),
    "inferno": ("#000004", "#210c4a", "#57106e", "#8a226a", "#bc3754", "#e35933", "#f98c0a", "#f9c932", "#fcffa4"),
}



# -- colour science (sRGB, CIELAB, OKLab, CIEDE2000, colour-vision deficiency) ----------------------------------------
#: Machado, Oliveira & Fernandes (2009), severity 1.0, applied to linear sRGB.
MACHADO_2009: dict[str, np.ndarray] = {
    "protanopia": np.array([[0.152286, 1.052583, -0.204868], [0.114503, 0.786281, 0.099216],
                            [-0.003882, -0.048116, 1.051998]]),
    "deuteranopia": np.array([[0.367322, 0.860646, -0.227968], [0.280085, 0.672501, 0.047413],
                              [-0.011820, 0.042940, 0.968881]]),
    "tritanopia": np.array([[1.255528, -0.076749, -0.178779], [-0.078411, 0.930809, 0.147602],
                            [0.004733, 0.691367, 0.303900]]),
}
#: The visions every class colour is kept apart under.
VISIONS: tuple[str, ...] = ("normal", "protanopia", "deuteranopia", "tritanopia")

_SRGB_TO_XYZ = np.array([[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750],
                         [0.0193339, 0.1191920, 0.9503041]])
_D65 = np.array([0.95047, 1.0, 1.08883])
_LMS = np.array([[0.4122214708, 0.5363325363, 0.0514459929], [0.2119034982, 0.6806995451, 0.1073969566],
                 [0.0883024619, 0.2817188376, 0.6299787005]])
_OKLAB = np.array([[0.2104542553, 0.7936177850, -0.0040720468], [1.9779984951, -2.4285922050, 0.4505937099],
                   [0.0259040371, 0.7827717662, -0.8086757660]])
_OKLAB_INV = np.array([[1.0, 0.3963377774, 0.2158037573], [1.0, -0.1055613458, -0.0638541728],
                       [1.0, -0.0894841775, -1.2914855480]])
_LMS_INV = np.array([[4.0767416621, -3.3077115913, 0.2309699292], [-1.2684380046, 2.6097574011, -0.3413193965],
                     [-0.0041960863, -0.7034186147, 1.7076147010]])


def hex_colour(colour: Sequence[int] | str) -> str:
    """``#rrggbb`` (lower case) of an RGB(A) tuple or a hex string; alpha is dropped."""
    return "#{:02x}{:02x}{:02x}".format(*rgb_of(colour))


def rgb_of(colour: Sequence[int] | str) -> tuple[int, int, int]:
    """The (r, g, b) integers of an RGB(A) tuple or a ``#rrggbb`` string."""
    if isinstance(colour, str):
        text = colour.lstrip("#")
        if not re.fullmatch(r"[0-9a-fA-F]{6}", text):
            raise ValueError(f"not a #rrggbb colour: {colour!r}")
        return int(text[0:2], 16), int(text[2:4], 16), int(text[4:6], 16)
    r, g, b = (int(c) for c in tuple(colour)[:3])
    if not all(0 <= c <= 255 for c in (r, g, b)):
        raise ValueError(f"colour channels must be 0..255: {tuple(colour)!r}")
    return r, g, b


def linear_rgb(rgb) -> np.ndarray:
    """8-bit sRGB (..., 3) -> linear sRGB in 0..1 (IEC 61966-2-1)."""
    c = np.asarray(rgb, dtype=np.float64) / 255.0
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def srgb8(linear) -> np.ndarray:
    """Linear sRGB (..., 3), clipped to 0..1 -> 8-bit sRGB as float (not yet rounded)."""
    c = np.clip(np.asarray(linear, dtype=np.float64), 0.0, 1.0)
    return 255.0 * np.where(c <= 0.0031308, 12.92 * c, 1.055 * c ** (1 / 2.4) - 0.055)


def simulate(linear, vision: str) -> np.ndarray:
    """Linear sRGB (..., 3) as seen with ``vision`` (one of :data:`VISIONS`), Machado et al. 2009, clipped."""
    if vision == "normal":
        return np.asarray(linear, dtype=np.float64)
    return np.clip(np.asarray(linear, dtype=np.float64) @ MACHADO_2009[vision].T, 0.0, 1.0)


def cielab(linear) -> np.ndarray:
    """Linear sRGB (..., 3) -> CIELAB (D65)."""
    xyz = np.asarray(linear, dtype=np.float64) @ _SRGB_TO_XYZ.T / _D65
    eps = (6 / 29) ** 3
    f = np.where(xyz > eps, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)


def delta_e2000(lab1, lab2) -> np.ndarray:
    """CIEDE2000 colour difference (Sharma, Wu & Dalal 2005) between CIELAB arrays (broadcast over ``...``)."""
    lab1, lab2 = np.broadcast_arrays(np.asarray(lab1, dtype=np.float64), np.asarray(lab2, dtype=np.float64))
    l1, a1, b1 = np.moveaxis(lab1, -1, 0)
    l2, a2, b2 = np.moveaxis(lab2, -1, 0)
    c_mean7 = ((np.hypot(a1, b1) + np.hypot(a2, b2)) / 2) ** 7
    g = 0.5 * (1 - np.sqrt(c_mean7 / (c_mean7 + 25.0 ** 7)))
    a1p, a2p = (1 + g) * a1, (1 + g) * a2
    c1p, c2p = np.hypot(a1p, b1), np.hypot(a2p, b2)
    h1p = np.degrees(np.arctan2(b1, a1p)) % 360
    h2p = np.degrees(np.arctan2(b2, a2p)) % 360
    chroma0 = c1p * c2p == 0
    dh = h2p - h1p
    dh = np.where(dh > 180, dh - 360, np.where(dh < -180, dh + 360, dh))
    dh = np.where(chroma0, 0.0, dh)
    d_l, d_c = l2 - l1, c2p - c1p
    d_h = 2 * np.sqrt(c1p * c2p) * np.sin(np.radians(dh / 2))
    l_mean, c_mean = (l1 + l2) / 2, (c1p + c2p) / 2
    h_sum = h1p + h2p
    h_mean = np.where(chroma0, h_sum,
                      np.where(np.abs(h1p - h2p) <= 180, h_sum / 2,
                               np.where(h_sum < 360, (h_sum + 360) / 2, (h_sum - 360) / 2)))
    t = (1 - 0.17 * np.cos(np.radians(h_mean - 30)) + 0.24 * np.cos(np.radians(2 * h_mean))
         + 0.32 * np.cos(np.radians(3 * h_mean + 6)) - 0.20 * np.cos(np.radians(4 * h_mean - 63)))
    d_theta = 30 * np.exp(-(((h_mean - 275) / 25) ** 2))
    r_c = 2 * np.sqrt(c_mean ** 7 / (c_mean ** 7 + 25.0 ** 7))
    s_l = 1 + 0.015 * (l_mean - 50) ** 2 / np.sqrt(20 + (l_mean - 50) ** 2)
    s_c = 1 + 0.045 * c_mean
    s_h = 1 + 0.015 * c_mean * t
    r_t = -np.sin(np.radians(2 * d_theta)) * r_c
    return np.sqrt((d_l / s_l) ** 2 + (d_c / s_c) ** 2 + (d_h / s_h) ** 2 + r_t * (d_c / s_c) * (d_h / s_h))


def _oklab(linear) -> np.ndarray:
    return np.cbrt(np.asarray(linear, dtype=np.float64) @ _LMS.T) @ _OKLAB.T


def _oklab_to_linear(lab) -> np.ndarray:
    return (np.asarray(lab, dtype=np.float64) @ _OKLAB_INV.T) ** 3 @ _LMS_INV.T


def vision_labs(rgb) -> np.ndarray:
    """CIELAB of 8-bit colours (N, 3) under each of :data:`VISIONS`: shape (N, len(VISIONS), 3)."""
    lin = linear_rgb(np.asarray(rgb).reshape(-1, 3))
    return np.stack([cielab(simulate(lin, v)) for v in VISIONS], axis=1)


# -- the candidate shades ------------------------------------------------------------------------------------------
#: OKLab lightness of the shades (0.36 .. 0.90) and their chroma relative to the hue's muted colour.
_SHADE_LIGHTNESS = tuple(k / 100 for k in range(36, 91, 2))
_SHADE_CHROMA = (1.0, 0.75, 0.5)
#: Colours every class colour keeps away from: nodata/missing grey, white, black.
_AVOID = ((221, 221, 221), (255, 255, 255), (0, 0, 0))
#: A shade's distance to the colour of the row just before counts divided by this (see the module doc).
_NEIGHBOUR_WEIGHT = 2.0


def _in_gamut(lab: np.ndarray) -> np.ndarray:
    lin = _oklab_to_linear(lab)
    return np.all((lin >= -1e-9) & (lin <= 1 + 1e-9), axis=-1)


def _shade_grid() -> list[tuple[int, np.ndarray]]:
    """Per muted hue: its candidate shades as unrounded 8-bit sRGB (N, 3), nearest the muted colour first.

    A shade keeps the OKLab hue angle of its muted colour, takes a lightness of :data:`_SHADE_LIGHTNESS` and the
    muted colour's chroma times :data:`_SHADE_CHROMA`, reduced (bisection) until it is inside the sRGB gamut."""
    out = []
    for hue, colour in enumerate(TOL_MUTED):
        lab = _oklab(linear_rgb(rgb_of(colour)))
        chroma, angle = float(np.hypot(lab[1], lab[2])), float(np.arctan2(lab[2], lab[1]))
        grid = [(abs(light - lab[0]), j, light, factor) for light in _SHADE_LIGHTNESS
                for j, factor in enumerate(_SHADE_CHROMA)]
        grid.sort(key=lambda g: (round(g[0], 6), g[1], g[2]))
        light = np.array([g[2] for g in grid])
        hi = np.array([chroma * g[3] for g in grid])
        lo = np.zeros_like(hi)

        def at(c):
            return np.stack([light, c * np.cos(angle), c * np.sin(angle)], axis=-1)

        fits = _in_gamut(at(hi))
        for _ in range(48):
            mid = (lo + hi) / 2
            ok = _in_gamut(at(mid))
            lo, hi = np.where(ok, mid, lo), np.where(ok, hi, mid)
        out.append((hue, srgb8(_oklab_to_linear(at(np.where(fits, hi, lo))))))
    return out


@functools.cache
def _shade_table() -> tuple[tuple[int, tuple[int, int, int]], ...]:
    """(hue index, rgb) of every candidate shade: :func:`_shade_grid` rounded, without repeats, the muted colours
    and the greys to avoid."""
    seen = {rgb_of(c) for c in TOL_MUTED} | set(_AVOID)
    table = []
    for hue, shades in _shade_grid():
        for rgb in map(tuple, np.rint(shades).astype(int).tolist()):
            if rgb not in seen:
                seen.add(rgb)
                table.append((hue, rgb))
    return tuple(table)


def shade_table_hex() -> tuple[str, ...]:
    """Every candidate shade as ``#rrggbb``, in table order (pinned by the tests: colours must not drift)."""
    return tuple(hex_colour(rgb) for _, rgb in _shade_table())


# -- species colours -----------------------------------------------------------------------------------------------
def _genus_of(item) -> str:
    """The genus of a Taxon, or of a species name (its first word)."""
    if isinstance(item, str):
        words = item.split()
        return words[0] if words else ""
    return item.genus


@functools.lru_cache(maxsize=64)
def _colours_for_genera(genera: tuple[str, ...]) -> tuple[tuple[int, int, int], ...]:
    bases = [rgb_of(h) for h in TOL_MUTED]
    table = _shade_table()
    hues = np.array([hue for hue, _ in table])
    labs = vision_labs([rgb for _, rgb in table])  # (C, V, 3)
    nearest = np.full(len(table), np.inf)  # each candidate's distance to the nearest colour in use, any vision
    free = np.ones(len(table), dtype=bool)

    def use(rgb) -> None:
        nonlocal nearest
        d = delta_e2000(labs, vision_labs([rgb])).min(axis=1)
        # rounded to 0.1 unit: platform differences in the last bits of a float cannot change a choice
        nearest = np.minimum(nearest, np.round(d, 1))

    for rgb in bases + list(_AVOID):
        use(rgb)
    genus_hue: dict[str, int] = {}
    taken: set[tuple[int, int, int]] = set()
    out = []
    for genus in genera:
        if genus not in genus_hue and len(genus_hue) < len(bases):
            genus_hue[genus] = len(genus_hue)
            rgb = bases[genus_hue[genus]]
        else:
            pick = free & (hues == genus_hue[genus]) if genus in genus_hue else free
            if not pick.any():
                pick = free
            if pick.any():
                score = nearest
                if out:  # the row before counts at half its distance: neighbours end up about twice as far apart
                    previous = np.round(delta_e2000(labs, vision_labs([out[-1]])).min(axis=1), 1)
                    score = np.minimum(nearest, previous / _NEIGHBOUR_WEIGHT)
                i = int(np.argmax(np.where(pick, score, -1.0)))
                free[i] = False
                genus_hue.setdefault(genus, int(hues[i]))
                rgb = table[i][1]
                use(rgb)
            else:
                rgb = _spare_colour(taken)
        taken.add(rgb)
        out.append(rgb)
    return tuple(out)


def _spare_colour(taken: set) -> tuple[int, int, int]:
    """A colour not in ``taken`` nor grey, once every shade is used: the 24-bit colours in a fixed scrambled order
    (an odd multiplier makes k -> k * M mod 2**24 a permutation)."""
    k = len(taken)
    while True:
        k += 1
        v = (k * 0x9E3779B1) % (1 << 24)
        rgb = (v >> 16, (v >> 8) & 255, v & 255)
        if rgb not in taken and max(rgb) - min(rgb) >= 48:
            return rgb


def species_colours(species_list) -> list[Rgba]:
    """One opaque RGBA colour per species of ``species_list`` (a SpeciesList, Taxa, or species names whose first
    word is the genus), in list order: Tol's muted colours for the first nine genera, shades of the genus' hue
    for further species (see the module doc). Deterministic; never :data:`NODATA_COLOUR` nor a grey."""
    taxa = getattr(species_list, "taxa", species_list)
    genera = tuple(_genus_of(t) for t in taxa)
    return [(r, g, b, 255) for r, g, b in _colours_for_genera(genera)]


def leaf_type_colours(names: Iterable[str]) -> list[Rgba]:
    """Colours for leaf types (``level0``), from Okabe & Ito: needleleaf in blues (evergreen dark blue, deciduous
    sky blue), broadleaf in oranges (evergreen vermillion, deciduous orange); a name without evergreen/deciduous
    takes the usual case (needleleaf: evergreen, broadleaf: deciduous). Other names, and a second name wanting a
    colour already given, take bluish green, reddish purple, yellow, then unique spare colours."""
    names = list(names)
    spares = [OKABE_ITO[k] for k in ("bluish green", "reddish purple", "yellow")]
    wanted: list[tuple[int, str] | None] = []  # (0: evergreen/deciduous said, 1: implied; the colour)
    for name in names:
        low = name.lower()
        said = int(not ("evergreen" in low or "deciduous" in low))
        if "needle" in low or "conifer" in low:
            wanted.append((said, OKABE_ITO["sky blue" if "deciduous" in low else "blue"]))
        elif "broad" in low:
            wanted.append((said, OKABE_ITO["vermillion" if "evergreen" in low else "orange"]))
        else:
            wanted.append(None)
    out: list[tuple[int, int, int] | None] = [None] * len(names)
    taken: set = set()
    for i in sorted((i for i, w in enumerate(wanted) if w is not None), key=lambda i: wanted[i][0]):
        if rgb_of(wanted[i][1]) not in taken:  # a name that says its kind outright keeps its colour
            out[i] = rgb_of(wanted[i][1])
            taken.add(out[i])
    for i in range(len(names)):
        if out[i] is None:
            spare = next((rgb_of(s) for s in spares if rgb_of(s) not in taken), None)
            out[i] = spare if spare is not None else _spare_colour(taken)
            taken.add(out[i])
    return [(r, g, b, 255) for r, g, b in out]


# -- the `treemap species` report -------------------------------------------------------------------------------------
_LEVEL_TITLES = (("level0", "leaf type"), ("family", "family"), ("genus", "genus"), ("species", "species"))


def species_legend(species_list) -> dict:
    """A species list's taxonomy and map colours as one JSON-able object: ``species`` (index, level0, family, genus,
    species, colour) and ``groups`` (genus, family, level0: each group's name and member indices; leaf types with
    their colour), plus the list's ``name`` and the ``nodata`` index."""
    colours = species_colours(species_list)
    rows = [{"index": i, "level0": t.level0, "family": t.family, "genus": t.genus, "species": t.species,
             "colour": hex_colour(c)} for i, (t, c) in enumerate(zip(species_list.taxa, colours))]
    groups = {}
    for level in ("genus", "family", "level0"):
        names, index = species_list.groups(level)
        groups[level] = [{"name": name, "members": [int(i) for i in np.flatnonzero(index == k)]}
                         for k, name in enumerate(names)]
    for group, colour in zip(groups["level0"], leaf_type_colours(g["name"] for g in groups["level0"])):
        group["colour"] = hex_colour(colour)
    return {"name": species_list.name, "count": len(rows), "nodata": 255, "species": rows, "groups": groups}


def species_table(species_list) -> str:
    """The taxonomy and colours of a species list as an aligned text table (index, leaf type, family, genus,
    species, colour), one species per line under a header."""
    legend = species_legend(species_list)
    header = ["index"] + [title for _, title in _LEVEL_TITLES] + ["colour"]
    lines = [[str(r["index"])] + [r[key] for key, _ in _LEVEL_TITLES] + [r["colour"]] for r in legend["species"]]
    widths = [max(len(row[j]) for row in [header] + lines) for j in range(len(header))]
    fmt = [(str.rjust if j == 0 else str.ljust) for j in range(len(header))]
    return "\n".join("  ".join(f(cell, w) for f, cell, w in zip(fmt, row, widths)).rstrip()
                     for row in [header] + lines)
