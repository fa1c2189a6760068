import numpy as np

from defectgen.core.roi import Box, clip_boxes, otsu_threshold, roi_box, scale_boxes, square_tiles


def _billet(h=100, w=300, y=(20, 70), x=(10, 290)) -> np.ndarray:
    img = np.full((h, w), 30, np.uint8)
    img[y[0] : y[1], x[0] : x[1]] = 200
    img[5, 5] = 255  # a speck of noise outside the object
    return img


def test_otsu_separates_two_levels():
    t = otsu_threshold(_billet())
    assert 30 <= t < 200


def test_roi_box_finds_object_and_ignores_specks():
    assert roi_box(_billet()) == Box(10, 20, 290, 70)
    dark = 255 - _billet()
    assert roi_box(dark, foreground="dark") == Box(10, 20, 290, 70)
    flat = np.full((10, 10), 7, np.uint8)
    assert roi_box(flat) == Box(0, 0, 10, 10)  # nothing to find: the whole image


def test_square_tiles_cover_the_box_with_square_tiles():
    box = Box(10, 20, 290, 70)  # 280 x 50 -> round(5.6) = 6 tiles of 50 x 50
    tiles = square_tiles(box)
    assert len(tiles) == 6
    assert all(t.width == t.height == 50 for t in tiles)
    assert tiles[0].x0 == 10 and tiles[-1].x1 == 290
    tall = square_tiles(Box(0, 0, 30, 95))
    assert len(tall) == 3 and tall[-1].y1 == 95
    assert square_tiles(Box(0, 0, 40, 50)) == [Box(0, 5, 40, 45)]


def test_boxes_follow_the_tile_and_the_resize():
    boxes = [
        {"label": "s", "x0": 60, "y0": 25, "x1": 80, "y1": 45},  # inside tile 1
        {"label": "s", "x0": 0, "y0": 0, "x1": 12, "y1": 12},  # mostly outside
    ]
    tile = Box(50, 20, 100, 70)
    moved = clip_boxes(boxes, tile)
    assert moved == [{"label": "s", "x0": 10.0, "y0": 5.0, "x1": 30.0, "y1": 25.0}]
    assert scale_boxes(moved, 2.0, 0.5)[0] == {
        "label": "s",
        "x0": 20.0,
        "y0": 2.5,
        "x1": 60.0,
        "y1": 12.5,
    }
