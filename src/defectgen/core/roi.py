"""Region-of-interest crop and 1:1 tiling (StableSDG, section IV-A).

The CCBSD recipe: convert to grayscale, binarise, keep the region where the
object (the steel billet) lies, cut that region into square sub-images, and
resize each one. Here the region is the bounding box of the rows and columns
whose foreground fraction reaches `min_fill`, which ignores specks of noise that
a plain bounding box of all foreground pixels would include.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np


@dataclass(frozen=True)
class Box:
    """Half-open pixel box: rows y0..y1-1, columns x0..x1-1."""

    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0


def otsu_threshold(gray: np.ndarray) -> int:
    """Otsu's threshold of a uint8 image: the level maximising between-class variance.

    Written out because none of our dependencies ships it for plain arrays
    (PIL has no Otsu; scikit-image is not in the stack for one function).
    """
    hist = np.bincount(gray.ravel(), minlength=256).astype(np.float64)
    total = hist.sum()
    levels = np.arange(256, dtype=np.float64)
    w0 = np.cumsum(hist)  # pixels at or below each level
    w1 = total - w0
    m0 = np.cumsum(hist * levels)
    mean_all = m0[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        mu0 = m0 / w0
        mu1 = (mean_all - m0) / w1
        between = w0 * w1 * (mu0 - mu1) ** 2
    between = np.nan_to_num(between, nan=-1.0)
    return int(np.argmax(between))


def roi_box(
    gray: np.ndarray, *, foreground: Literal["bright", "dark"] = "bright", min_fill: float = 0.5
) -> Box:
    """The object's bounding box in a (H, W) uint8 image; the whole image if none is found."""
    h, w = gray.shape
    t = otsu_threshold(gray)
    fg = gray > t if foreground == "bright" else gray <= t
    rows = np.flatnonzero(fg.mean(axis=1) >= min_fill)
    cols = np.flatnonzero(fg.mean(axis=0) >= min_fill)
    if rows.size == 0 or cols.size == 0:
        return Box(0, 0, w, h)
    return Box(int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)


def square_tiles(box: Box, *, cover: bool = False) -> list[Box]:
    """Cut a box into round(long / short) squares of side `short` along its long axis
    (`cover`: ceil(long / short), so no pixel of the box is left out).

    Tiles are spread evenly so that together they cover the box (they overlap
    slightly when the long side is not a multiple of the short one).
    """
    side = min(box.width, box.height)
    long_side = max(box.width, box.height)
    n = max(1, math.ceil(long_side / side) if cover else round(long_side / side))
    if n == 1:
        # One square from the centre of the box.
        if box.width >= box.height:
            x0 = box.x0 + (box.width - side) // 2
            return [Box(x0, box.y0, x0 + side, box.y0 + side)]
        y0 = box.y0 + (box.height - side) // 2
        return [Box(box.x0, y0, box.x0 + side, y0 + side)]
    starts = np.linspace(0, long_side - side, n).round().astype(int)
    if box.width >= box.height:
        return [Box(box.x0 + s, box.y0, box.x0 + s + side, box.y0 + side) for s in starts]
    return [Box(box.x0, box.y0 + s, box.x0 + side, box.y0 + s + side) for s in starts]


def crop(pixels: np.ndarray, box: Box) -> np.ndarray:
    """(H, W[, C]) -> (box.height, box.width[, C])."""
    return pixels[box.y0 : box.y1, box.x0 : box.x1]


def clip_boxes(boxes: list[dict], tile: Box, *, min_visible: float = 0.25) -> list[dict]:
    """Boxes ({label, x0, y0, x1, y1}, pixel coordinates) moved into a tile's frame.

    A box keeps its place when at least `min_visible` of its area lies inside the
    tile; it is clipped to the tile.
    """
    out = []
    for b in boxes:
        x0, y0 = max(b["x0"], tile.x0), max(b["y0"], tile.y0)
        x1, y1 = min(b["x1"], tile.x1), min(b["y1"], tile.y1)
        area = (b["x1"] - b["x0"]) * (b["y1"] - b["y0"])
        if x1 <= x0 or y1 <= y0 or area <= 0:
            continue
        if (x1 - x0) * (y1 - y0) / area < min_visible:
            continue
        out.append(
            {
                "label": b["label"],
                "x0": float(x0 - tile.x0),
                "y0": float(y0 - tile.y0),
                "x1": float(x1 - tile.x0),
                "y1": float(y1 - tile.y0),
            }
        )
    return out


def scale_boxes(boxes: list[dict], sx: float, sy: float) -> list[dict]:
    """Scale box coordinates (after a resize by sx horizontally and sy vertically)."""
    return [
        {
            "label": b["label"],
            "x0": b["x0"] * sx,
            "y0": b["y0"] * sy,
            "x1": b["x1"] * sx,
            "y1": b["y1"] * sy,
        }
        for b in boxes
    ]
