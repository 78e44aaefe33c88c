"""Colours and QGIS styles (treemap.styles): species colours are deterministic, distinct and stay apart for
colour-blind readers; the .qml styles are well-formed and carry every class, colour and ramp stop.

How far apart is far enough. Colour differences are CIEDE2000 (Sharma, Wu & Dalal 2005) between colours as seen
with normal vision and with full protanopia, deuteranopia and tritanopia, simulated twice: with the Machado,
Oliveira & Fernandes (2009) matrices treemap itself uses, and independently here with the Viénot, Brettel & Mollon
(1999) LMS projection. A difference of 1 is about the smallest one sees between two large patches side by side;
telling classes apart on a map needs several times that, because patches are small, scattered and read against a
legend. The published colour-blind-safe sets set the bar: Tol's muted set keeps 11.5 and Okabe-Ito 10.9 under the
harshest simulation. So:

* up to ten genera (the nine muted colours plus one shade) -- the common case, and the demo list: >= 11, the
  published sets' own separation;
* up to twenty genera, or up to four species of one genus: >= 8, still apart at a glance;
* the 46 species of the Central European starter list: >= 4, twice the difference readers reliably notice between
  neighbouring patches; with that many classes the legend has to be read, by anyone.
"""

import hashlib
import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from treemap import styles
from treemap.qml import categorical_qml, probability_qml, qml_path, ramp_qml, species_qml, write_qml
from treemap.styles import (NODATA_COLOUR, RAMPS, TOL_MUTED, TREE_MASK_COLOURS, TREE_MASK_NAMES, cielab,
                            delta_e2000, hex_colour, leaf_type_colours, linear_rgb, rgb_of, simulate, species_colours,
                            species_legend, species_table)
from treemap.taxonomy import SpeciesList, Taxon, demo_species_list, load_species_list

REPO = Path(__file__).resolve().parents[1]
CENTRAL_EUROPE = REPO / "examples" / "species" / "central-europe.csv"
GLOBALGEOTREE = Path("/work/shared/data/real/globalgeotree-10keval")

#: The demo list's colours: pinned, so that a change of scheme is a decision, not an accident.
DEMO_COLOURS = ["#cc6677", "#332288", "#ddcc77", "#117733", "#88ccee", "#882255", "#44aa99", "#999933", "#aa4499",
                "#004b1b"]
#: SHA-256 of the candidate shade table (``" ".join(shade_table_hex())``): pinned for the same reason, and so that
#: a platform whose floating point made a shade differ shows up here.
SHADE_TABLE_SHA256 = "968f9832f87e03d4baa1a6ed8c0b5efa814268826fecd4082a008a4214dbbf38"


# -- an independent colour-vision simulation: Viénot, Brettel & Mollon (1999) --------------------------------------
_RGB_TO_LMS = np.array([[17.8824, 43.5161, 4.11935], [3.45565, 27.1554, 3.86714], [0.0299566, 0.184309, 1.46709]])
_DICHROMAT = {  # the missing cone's response rebuilt from the other two (Viénot et al. 1999, eq. 4 and 5)
    "protanopia": np.array([[0, 2.02344, -2.52581], [0, 1, 0], [0, 0, 1]]),
    "deuteranopia": np.array([[1, 0, 0], [0.494207, 0, 1.24827], [0, 0, 1]]),
}


def vienot(rgb, vision: str) -> np.ndarray:
    """Linear sRGB of 8-bit colours as a protanope or deuteranope sees them (Viénot et al. 1999)."""
    lin = linear_rgb(np.asarray(rgb)[..., :3])
    if vision == "normal":
        return lin
    project = np.linalg.inv(_RGB_TO_LMS) @ _DICHROMAT[vision] @ _RGB_TO_LMS
    return np.clip(lin @ project.T, 0, 1)


def closest_pair(colours, simulations=None) -> float:
    """The smallest CIEDE2000 difference between two of ``colours`` under any of the simulations."""
    rgb = np.array([c[:3] for c in colours])
    simulations = simulations or all_simulations()
    worst = np.inf
    for sim in simulations:
        lab = cielab(sim(rgb))
        d = delta_e2000(lab[:, None], lab[None])
        np.fill_diagonal(d, np.inf)
        worst = min(worst, float(d.min()))
    return worst


def all_simulations():
    sims = [lambda rgb, v=v: simulate(linear_rgb(rgb), v) for v in styles.VISIONS]
    sims += [lambda rgb, v=v: vienot(rgb, v) for v in _DICHROMAT]
    return sims


def names(genera: int, per_genus: int = 1) -> list[str]:
    """Species names of ``genera`` genera, ``per_genus`` species each, genus by genus."""
    return [f"Genus{g} species{s}" for g in range(genera) for s in range(per_genus)]


def ggt_list(n: int) -> SpeciesList:
    path = GLOBALGEOTREE / f"GlobalGeoTree-10kEval-{n}.csv"
    if not path.is_file():
        pytest.skip(f"GlobalGeoTree-10kEval lists not at {GLOBALGEOTREE}")
    return load_species_list(path)


# -- the colour science itself ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("lab1, lab2, expected", [  # Sharma, Wu & Dalal (2005), table 1: pairs 1, 2, 7, 17, 25
    ((50.0, 2.6772, -79.7751), (50.0, 0.0, -82.7485), 2.0425),
    ((50.0, 3.1571, -77.2803), (50.0, 0.0, -82.7485), 2.8615),
    ((50.0, 0.0, 0.0), (50.0, -1.0, 2.0), 2.3669),
    ((50.0, 2.5, 0.0), (73.0, 25.0, -18.0), 27.1492),
    ((60.2574, -34.0099, 36.2677), (60.4626, -34.1751, 39.4387), 1.2644),
])
def test_ciede2000_matches_the_published_test_data(lab1, lab2, expected):
    assert float(delta_e2000(np.array(lab1), np.array(lab2))) == pytest.approx(expected, abs=1e-4)
    assert float(delta_e2000(np.array(lab2), np.array(lab1))) == pytest.approx(expected, abs=1e-4)


def test_cielab_of_known_colours():
    lab = cielab(linear_rgb(np.array([[255, 255, 255], [0, 0, 0], [255, 0, 0]])))
    assert lab[0] == pytest.approx([100, 0, 0], abs=0.01)
    assert lab[1] == pytest.approx([0, 0, 0], abs=0.01)
    assert lab[2] == pytest.approx([53.24, 80.09, 67.20], abs=0.02)  # sRGB red, the usual reference value


def test_the_two_simulations_agree_on_what_dichromats_confuse():
    """Red and green, the classic confusion pair, collapse under both simulations; blue and yellow stay apart."""
    red_green = [(204, 102, 119), (17, 119, 51)]  # muted rose and green: apart for normal vision
    for vision in ("protanopia", "deuteranopia"):
        for sim in (lambda rgb: simulate(linear_rgb(rgb), vision), lambda rgb: vienot(rgb, vision)):
            lab = cielab(sim(np.array([(230, 0, 0), (0, 160, 0)])))
            normal = cielab(linear_rgb(np.array([(230, 0, 0), (0, 160, 0)])))
            assert delta_e2000(lab[0], lab[1]) < 0.5 * delta_e2000(normal[0], normal[1])
            lab = cielab(sim(np.array([(0, 0, 200), (240, 230, 60)])))
            assert delta_e2000(lab[0], lab[1]) > 40
    assert closest_pair(red_green) > 10


# -- the published palettes ----------------------------------------------------------------------------------------
def test_tol_muted_is_the_published_set_and_is_colour_blind_safe():
    assert TOL_MUTED == ("#CC6677", "#332288", "#DDCC77", "#117733", "#88CCEE", "#882255", "#44AA99", "#999933",
                         "#AA4499")
    assert closest_pair([rgb_of(c) for c in TOL_MUTED]) >= 11


def test_ramps_are_matplotlibs_published_tables():
    import matplotlib

    for name, stops in RAMPS.items():
        table = matplotlib.colormaps[name].colors
        assert len(stops) == 9
        for k, colour in enumerate(stops):
            expected = np.rint(np.asarray(table[round(k * 255 / 8)][:3]) * 255).astype(int)
            assert rgb_of(colour) == tuple(expected), (name, k)


# -- species colours ------------------------------------------------------------------------------------------------
def test_demo_colours_are_pinned():
    assert [hex_colour(c) for c in species_colours(demo_species_list())] == DEMO_COLOURS


def test_the_shade_table_is_pinned_and_rounds_far_from_ties():
    table = styles.shade_table_hex()
    assert hashlib.sha256(" ".join(table).encode()).hexdigest() == SHADE_TABLE_SHA256
    # every channel lies at least 1e-6 of a DN away from a rounding tie: a last-bit difference in a platform's
    # pow/cbrt/cos cannot move a shade
    margins = [np.abs(shades % 1 - 0.5).min() for _, shades in styles._shade_grid()]
    assert min(margins) > 1e-6


def test_colours_are_the_same_in_a_fresh_process():
    code = ("import json, sys; from treemap.styles import species_colours; from treemap.taxonomy import "
            "load_species_list; print(json.dumps(species_colours(load_species_list(sys.argv[1]))))")
    runs = [subprocess.run([sys.executable, "-c", code, str(CENTRAL_EUROPE)], capture_output=True, text=True,
                           check=True, timeout=120).stdout for _ in range(2)]
    here = species_colours(load_species_list(CENTRAL_EUROPE))
    assert [tuple(c) for c in json.loads(runs[0])] == here
    assert runs[0] == runs[1]


@pytest.mark.parametrize("species", [
    names(1), names(9), names(10), names(20), names(1, 12), names(9, 3), names(60, 4),
    [f"G{i} sp" for i in range(254)],  # the most a dominant-species map holds
    [f"G{i % 7} sp{i}" for i in range(1200)],  # past every shade: unique spares
], ids=["1", "9 genera", "10 genera", "20 genera", "12 of one genus", "9x3", "60x4", "254 genera", "1200"])
def test_colours_are_distinct_opaque_and_never_nodata_or_grey(species):
    colours = species_colours(species)
    assert len(colours) == len(species) == len(set(colours))
    for r, g, b, a in colours:
        assert a == 255 and (r, g, b, a) != NODATA_COLOUR
        assert (r, g, b) not in {(221, 221, 221), (0, 0, 0), (255, 255, 255)}
        assert max(r, g, b) - min(r, g, b) >= 20, (r, g, b)  # no grey: greys are for nodata and "not tree"


def test_real_lists_get_distinct_colours():
    for species in (demo_species_list(), load_species_list(CENTRAL_EUROPE)):
        colours = species_colours(species)
        assert len(set(colours)) == len(species)


@pytest.mark.parametrize("n", [300, 900])
def test_globalgeotree_lists_get_distinct_colours(n):
    species = ggt_list(n)
    assert len(set(species_colours(species))) == len(species) == n


def test_nine_genera_get_tols_muted_colours_in_order():
    assert [hex_colour(c).upper() for c in species_colours(names(9))] == list(TOL_MUTED)
    # the genus decides, not the row: a second species of the first genus is a shade, the next genus still sand
    colours = species_colours(["Genus0 a", "Genus0 b", "Genus1 a", "Genus2 a"])
    assert [hex_colour(c).upper() for c in (colours[0], colours[2], colours[3])] == list(TOL_MUTED[:3])


def test_colour_depends_on_genus_not_on_the_name():
    assert species_colours(["Pinus sylvestris", "Picea abies"]) == species_colours(["Pinus nigra", "Picea omorika"])
    taxa = [Taxon("Evergreen Needleleaf", "Pinaceae", "Pinus", "Pinus sylvestris"),
            Taxon("Evergreen Needleleaf", "Pinaceae", "Picea", "Picea abies")]
    assert species_colours(SpeciesList(tuple(taxa))) == species_colours(taxa) == species_colours(
        ["Pinus sylvestris", "Picea abies"])


def test_appending_species_repaints_none_of_the_others():
    taxa = load_species_list(CENTRAL_EUROPE).taxa
    full = species_colours(taxa)
    for k in (1, 5, 9, 10, 17, 30, 45):
        assert species_colours(taxa[:k]) == full[:k]


def oklab_hue(colour) -> float:
    lab = styles._oklab(linear_rgb(colour[:3]))
    return float(np.degrees(np.arctan2(lab[2], lab[1])))


def test_species_of_a_genus_are_shades_of_one_hue():
    species = load_species_list(CENTRAL_EUROPE)
    first: dict[str, tuple] = {}
    shared = 0
    for taxon, colour in zip(species.taxa, species_colours(species)):
        if taxon.genus in first:
            shared += 1
            turn = (oklab_hue(colour) - oklab_hue(first[taxon.genus]) + 180) % 360 - 180
            assert abs(turn) < 2.5, (taxon.species, hex_colour(colour), hex_colour(first[taxon.genus]))
        else:
            first[taxon.genus] = colour
    assert shared >= 10  # the list does have genera with several species


@pytest.mark.parametrize("species, threshold", [
    *[(names(n), 11.0) for n in range(2, 11)],
    (demo_species_list(), 11.0),
    (names(15), 8.0), (names(20), 8.0),
    (names(1, 2), 8.0), (names(1, 3), 8.0), (names(1, 4), 8.0),
    (load_species_list(CENTRAL_EUROPE), 4.0),
], ids=[*(f"{n} genera" for n in range(2, 11)), "demo", "15 genera", "20 genera", "2 of a genus", "3 of a genus",
        "4 of a genus", "central-europe"])
def test_colours_stay_apart_for_colour_blind_readers(species, threshold):
    """See the module doc for the thresholds."""
    assert closest_pair(species_colours(species)) >= threshold


def test_neighbouring_rows_stay_apart():
    """Consecutive species (often relatives, shown side by side in a legend) differ at a glance for everyone."""
    colours = species_colours(load_species_list(CENTRAL_EUROPE))
    assert min(closest_pair(colours[i:i + 2]) for i in range(len(colours) - 1)) >= 10


# -- leaf types and the tree mask -----------------------------------------------------------------------------------
def test_leaf_type_colours():
    kinds = ["Evergreen Needleleaf", "Deciduous Needleleaf", "Evergreen Broadleaf", "Deciduous Broadleaf"]
    colours = leaf_type_colours(kinds)
    assert [hex_colour(c) for c in colours] == ["#0072b2", "#56b4e9", "#d55e00", "#e69f00"]
    for (r, g, b, a), kind in zip(colours, kinds):
        assert a == 255 and ((b > r) if "Needle" in kind else (r > b)), kind  # needleleaf blue, broadleaf orange
    assert closest_pair(colours) >= 11
    # evergreen reads darker than deciduous
    lightness = cielab(linear_rgb(np.array([c[:3] for c in colours])))[:, 0]
    assert lightness[0] < lightness[1] and lightness[2] < lightness[3]
    # the order of the list does not matter, and GlobalGeoTree's spelling is not required
    assert leaf_type_colours(list(reversed(kinds))) == list(reversed(colours))
    assert leaf_type_colours(["needleleaf", "BROADLEAF"]) == [colours[0], colours[3]]


def test_leaf_type_colours_stay_unique_for_odd_names():
    colours = leaf_type_colours(["Needleleaf", "Evergreen Needleleaf", "Mixed", "Palm", "Bamboo", "Cactus", ""])
    assert len(set(colours)) == 7
    assert colours[1] == leaf_type_colours(["Evergreen Needleleaf"])[0]  # the named kind keeps its colour


def test_tree_mask_colours():
    assert TREE_MASK_NAMES == ("not tree", "tree")
    (r0, g0, b0, a0), (r1, g1, b1, a1) = TREE_MASK_COLOURS
    assert r0 == g0 == b0 >= 200 and a0 == a1 == 255  # light grey
    assert g1 > r1 and g1 > b1  # green
    assert closest_pair(TREE_MASK_COLOURS) > 30


# -- QGIS styles ----------------------------------------------------------------------------------------------------
def parse_qml(text: str) -> ET.Element:
    assert text.startswith("<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n")
    root = ET.fromstring(text)
    assert root.tag == "qgis" and root.get("version").startswith("3.28.") and root.get("styleCategories")
    return root


def test_categorical_qml_carries_every_class():
    species = load_species_list(CENTRAL_EUROPE)
    colours = species_colours(species)
    root = parse_qml(categorical_qml(species.species, colours))
    renderer = root.find("pipe/rasterrenderer")
    assert renderer.get("type") == "paletted" and renderer.get("band") == "1"
    entries = renderer.findall("colorPalette/paletteEntry")
    assert [(e.get("value"), e.get("color"), e.get("alpha"), e.get("label")) for e in entries] == [
        (str(i), hex_colour(c), "255", name) for i, (c, name) in enumerate(zip(colours, species.species))]
    assert all(len(e.get("color")) == 7 and e.get("color").startswith("#") for e in entries)
    # nodata: not a class, and transparent
    assert "255" not in {e.get("value") for e in entries}
    pixel = renderer.find("rasterTransparency/singleValuePixelList/pixelListEntry")
    assert (pixel.get("min"), pixel.get("max"), pixel.get("percentTransparent")) == ("255", "255", "100")
    assert renderer.find("minMaxOrigin/limits").text == "None"


def test_species_qml_is_the_categorical_style_of_the_species_colours():
    species = demo_species_list()
    assert species_qml(species) == categorical_qml(species.species, species_colours(species))


def test_categorical_qml_escapes_labels():
    labels = ['Quercus "robur" & <friends>', "Populus × canescens", "Sorbus d'Aria", "Tilia\ncordata", "bad\x01char",
              "Ærøskøbing ü 漢字"]
    root = parse_qml(categorical_qml(labels, ["#112233", (1, 2, 3), (4, 5, 6, 128), "#aabbcc", "#000001",
                                              (9, 9, 9)]))
    entries = root.findall("pipe/rasterrenderer/colorPalette/paletteEntry")
    assert [e.get("label") for e in entries] == [labels[0], labels[1], labels[2], "Tilia cordata", "bad\ufffdchar",
                                                labels[5]]
    assert [e.get("color") for e in entries][:3] == ["#112233", "#010203", "#040506"]
    assert entries[2].get("alpha") == "128"


def test_categorical_qml_with_values_and_without_nodata():
    root = parse_qml(categorical_qml(TREE_MASK_NAMES, TREE_MASK_COLOURS, nodata=None, values=[0, 1], band=2))
    renderer = root.find("pipe/rasterrenderer")
    assert renderer.get("band") == "2" and renderer.find("rasterTransparency/singleValuePixelList") is None
    assert [e.get("label") for e in renderer.iter("paletteEntry")] == ["not tree", "tree"]


@pytest.mark.parametrize("kwargs, message", [
    (dict(names=["a", "b"], colours=[(1, 2, 3)]), "need as many colours"),
    (dict(names=["a", "b"], colours=[(1, 2, 3)] * 2, values=[3, 3]), "distinct"),
    (dict(names=["a"], colours=[(1, 2, 3)], values=[255]), "nodata value 255 cannot also be a class"),
    (dict(names=["a"], colours=["#12345"]), "not a #rrggbb colour"),
    (dict(names=["a"], colours=[(1, 2, 300)]), "0..255"),
])
def test_categorical_qml_refuses_inconsistent_classes(kwargs, message):
    with pytest.raises(ValueError, match=message):
        categorical_qml(**kwargs)


def ramp_items(text: str):
    root = parse_qml(text)
    renderer = root.find("pipe/rasterrenderer")
    assert renderer.get("type") == "singlebandpseudocolor"
    shader = renderer.find("rastershader/colorrampshader")
    assert shader.get("colorRampType") == "INTERPOLATED"
    items = [(float(i.get("value")), i.get("color"), i.get("label")) for i in shader.findall("item")]
    return renderer, shader, items


@pytest.mark.parametrize("ramp", sorted(RAMPS))
def test_probability_qml_ramps_from_0_to_1(ramp):
    renderer, shader, items = ramp_items(probability_qml(band=3, ramp=ramp))
    assert renderer.get("band") == "3"
    values = [v for v, _, _ in items]
    assert values == sorted(values) and len(set(values)) == len(values) == 9
    assert values[0] == 0.0 and values[-1] == 1.0 and all(0 <= v <= 1 for v in values)
    assert (float(shader.get("minimumValue")), float(shader.get("maximumValue"))) == (0.0, 1.0)
    assert (float(renderer.get("classificationMin")), float(renderer.get("classificationMax"))) == (0.0, 1.0)
    assert [c for _, c, _ in items] == list(RAMPS[ramp])
    assert items[4][2] == "0.5 probability"
    # the source ramp QGIS shows in its editor: the same colours, stops strictly inside 0..1 and ascending
    props = {p.get("k"): p.get("v") for p in shader.findall("colorramp/prop")}
    assert props["color1"] == ",".join(map(str, rgb_of(RAMPS[ramp][0]))) + ",255"
    assert props["color2"] == ",".join(map(str, rgb_of(RAMPS[ramp][-1]))) + ",255"
    positions = [float(stop.split(";")[0]) for stop in props["stops"].split(":")]
    assert positions == sorted(positions) and 0 < positions[0] and positions[-1] < 1 and len(positions) == 7
    # nodata (DN 255) is transparent at its data value: QGIS applies the band scale 0.005 before it renders
    pixel = renderer.find("rasterTransparency/singleValuePixelList/pixelListEntry")
    assert float(pixel.get("min")) == float(pixel.get("max")) == pytest.approx(255 * 0.005)


def test_ramp_qml_takes_dn_or_data_units():
    as_dn = ramp_qml(1, 0, 200, "cividis", "probability", 255, raw=True, scale=0.005)
    as_data = ramp_qml(1, 0.0, 1.0, "cividis", "probability", 255, raw=False, scale=0.005)
    assert as_dn == as_data
    _, shader, items = ramp_items(ramp_qml(2, 10, 60, "magma", "days", nodata=None, raw=True))  # no scale: DN
    assert [v for v, _, _ in items] == [10 + 50 * k / 8 for k in range(9)]
    assert items[0][2] == "10 days" and items[-1][2] == "60 days"
    with pytest.raises(TypeError):
        ramp_qml(1, 0.0, 1.0)  # raw must be said


@pytest.mark.parametrize("kwargs, message", [
    (dict(minimum=1.0, maximum=1.0), "minimum < maximum"),
    (dict(minimum=2.0, maximum=1.0), "minimum < maximum"),
    (dict(ramp="jet"), "unknown colour ramp 'jet'"),
    (dict(scale=0.0), "scale must not be 0"),
])
def test_ramp_qml_refuses_bad_ranges(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ramp_qml(raw=False, **kwargs)


def test_write_qml(tmp_path):
    target = qml_path(tmp_path / "dominant_species.tif")
    assert target == tmp_path / "dominant_species.qml"
    text = species_qml(demo_species_list())
    assert write_qml(target, text) == target
    assert target.read_text(encoding="utf-8") == text
    write_qml(target, probability_qml())  # replaces
    assert "singlebandpseudocolor" in target.read_text()
    with pytest.raises(ValueError, match="not a well-formed QGIS style"):
        write_qml(target, "<qgis><pipe></qgis>")
    assert "singlebandpseudocolor" in target.read_text()  # the old style stays
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dominant_species.qml"]  # no temporary files left


# -- the `treemap species` report -------------------------------------------------------------------------------------
def test_species_legend_and_table():
    species = demo_species_list()
    legend = species_legend(species)
    json.dumps(legend)
    assert legend["name"] == "demo" and legend["count"] == 10 and legend["nodata"] == 255
    assert [s["colour"] for s in legend["species"]] == DEMO_COLOURS
    assert legend["species"][0] == {"index": 0, "level0": "Evergreen Needleleaf", "family": "Pinaceae",
                                    "genus": "Pinus", "species": "Pinus sylvestris", "colour": "#cc6677"}
    betulaceae = next(g for g in legend["groups"]["family"] if g["name"] == "Betulaceae")
    assert betulaceae["members"] == [3, 4]
    assert sorted(i for g in legend["groups"]["genus"] for i in g["members"]) == list(range(10))
    assert {g["name"]: g["colour"] for g in legend["groups"]["level0"]}["Deciduous Broadleaf"] == "#e69f00"
    lines = species_table(species).splitlines()
    assert lines[0].split() == ["index", "leaf", "type", "family", "genus", "species", "colour"]
    assert len(lines) == 11 and lines[1].split()[-1] == "#cc6677" and lines[1].split()[0] == "0"
    assert len({len(line) for line in lines[1:]}) == 1  # aligned columns
