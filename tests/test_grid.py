import numpy as np
import pytest
from shapely.geometry import box

from treemap.aoi import AOI
from treemap.grid import lonlat_bbox, pixel_centres_lonlat, plan_tiles, snap_bounds, to_crs, utm_epsg


def _aoi_from_utm(x0, y0, x1, y1, epsg=32632) -> AOI:
    return AOI(to_crs(box(x0, y0, x1, y1), 4326, src_epsg=epsg))


@pytest.mark.parametrize("lon, lat, epsg", [
    (9.0, 50.0, 32632), (-3.7, 40.4, 32630), (151.2, -33.9, 32756), (5.5, 60.0, 32632), (15.0, 78.0, 32633),
    (-179.9, 10.0, 32601), (179.9, -10.0, 32760),
])
def test_utm_zone(lon, lat, epsg):
    assert utm_epsg(lon, lat) == epsg


def test_snap_is_outward_and_aligned():
    assert snap_bounds((497503.2, 5541001.0, 500499.9, 5542990.1), 10) == (497500, 5541000, 500500, 5543000)


def test_plan_covers_aoi_aligned_with_halo():
    aoi = _aoi_from_utm(497503, 5541007, 500496, 5542993)
    plan = plan_tiles(aoi, tile_size=128, halo=2)
    assert plan.epsg == 32632
    local = to_crs(aoi.geometry, plan.epsg)
    x0, y0, x1, y1 = plan.bounds
    lx0, ly0, lx1, ly1 = local.bounds
    assert x0 <= lx0 and y0 <= ly0 and x1 >= lx1 and y1 >= ly1
    assert all(v % 10 == 0 for v in plan.bounds)
    # tiles tile the grid exactly: windows do not overlap and cover every pixel of the plan
    cover = np.zeros((plan.height, plan.width), dtype=int)
    for t in plan.tiles:
        col, row, w, h = t.window
        cover[row:row + h, col:col + w] += 1
        assert t.core_bounds[0] == x0 + col * 10 and t.core_bounds[3] == y1 - row * 10
        rb = t.read_bounds
        assert rb == (t.core_bounds[0] - 20, t.core_bounds[1] - 20, t.core_bounds[2] + 20, t.core_bounds[3] + 20)
        assert t.read_shape == (h + 4, w + 4)
    assert cover.max() == 1 and cover.min() == 1
    assert len(plan.tiles) == int(np.ceil(plan.width / 128) * np.ceil(plan.height / 128))
    assert len({t.id for t in plan.tiles}) == len(plan.tiles)


def test_tiles_outside_a_concave_aoi_are_dropped():
    # an L shape: the top-right quadrant of its bounding box is empty
    from shapely.geometry import Polygon

    poly = Polygon([(497000, 5541000), (499000, 5541000), (499000, 5542000), (498000, 5542000),
                    (498000, 5543000), (497000, 5543000)])
    plan = plan_tiles(AOI(to_crs(poly, 4326, src_epsg=32632)), tile_size=90)
    assert 0 < len(plan.tiles) < int(np.ceil(plan.width / 90) * np.ceil(plan.height / 90))


def test_pixel_centres_and_lonlat_bbox():
    plan = plan_tiles(_aoi_from_utm(497500, 5541000, 497800, 5541200), tile_size=64)
    tile = plan.tiles[0]
    ll = pixel_centres_lonlat(tile)
    assert ll.shape == (2, tile.height, tile.width)
    w, s, e, n = lonlat_bbox(tile.core_bounds, tile.epsg)
    assert w <= ll[0].min() and ll[0].max() <= e and s <= ll[1].min() and ll[1].max() <= n
    assert ll[1, 0, 0] > ll[1, -1, 0]  # north-up rows
