"""Copy-paste: the model-free synthesis control of the mask branch (CutPaste, DRAEM's
real-defect variant; DefectSynth section II). A real defect region, cut from a train
image by its own mask, is pasted onto another real train image (a defect-free one, or
one of the same class away from its own defect) and blended; the annotation is exact.

    paste        one pasted image: (image, annotation, pasted region, offset), or None
                 when no placement keeps `margin` px from the background's own defect
    draw         per class `counts[label]` (source, background) row pairs: sources in
                 whole shuffled passes over the class, backgrounds from the defect-free
                 rows when there are any, else the class's other rows
    make         the pasted pairs of a draw, with their provenance; a source no
                 background has room for goes over part of one's defect
    record       one training set's pastes as JSON (each paste's source, background and
                 offset; make's counts), what segment and detect keep per seed
    summarise    an arm's records over seeds: per seed short and overlapping counts,
                 and every row id used as a source or background
    describe     the recipe in words, for reports

Blending: a feathered edge, an alpha from the mask blurred by `feather` px and 1 on the
defect, so the defect keeps its own pixels and only its surround up to 3 sigma changes.
Not Poisson: OpenCV 5.0's seamlessClone (NORMAL_CLONE, the region dilated 3 px) kept
about 10 of a 100-grey-level defect's contrast on a textured background here
(tests/core/test_copypaste.py's scene), and moved the region 1 px for even widths.
Our own code because albumentations 2.0.8's OverlayElements pastes without blending
and places without regard to the background's defects.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from defectgen.config import CopyPasteConfig
from defectgen.core import arms


@dataclass(frozen=True)
class Pasted:
    image: np.ndarray  # uint8, the background's shape
    mask: np.ndarray  # uint8 {0, 255}: the background's own defect and the pasted one
    region: np.ndarray  # bool: the pasted defect alone
    source: str  # row ids
    background: str
    offset: tuple[int, int]  # the region's bounding box moved by (dy, dx)


def reach(cfg: CopyPasteConfig) -> int:
    """How far outside the region the feathered edge may change pixels (px): the alpha
    falls to 0 by 3 sigma."""
    return int(np.ceil(3 * cfg.feather)) + 1


def paste(
    cfg: CopyPasteConfig,
    source: np.ndarray,
    source_mask: np.ndarray,
    background: np.ndarray,
    background_mask: np.ndarray | None,
    rng: np.random.Generator,
    tries: int = 50,
    overlap: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, int]] | None:
    """(image, annotation, pasted region, offset) or None (no free placement). With
    `overlap` any placement will do: the pasted defect may cover part of the
    background's own (the annotation, their union, stays exact)."""
    height, width = background.shape[:2]
    own = np.zeros((height, width), bool) if background_mask is None else background_mask > 127
    placed = place(source_mask > 127, own, cfg.margin, rng, tries=tries, overlap=overlap)
    if placed is None:
        return None
    region, offset = placed
    image = _blend(cfg, source, background, region, own, offset)
    mask = np.where(own | region, 255, 0).astype(np.uint8)
    return image, mask, region, offset


def place(
    on: np.ndarray,
    own: np.ndarray,
    margin: int,
    rng: np.random.Generator,
    tries: int = 50,
    overlap: bool = False,
) -> tuple[np.ndarray, tuple[int, int]] | None:
    """The region `on` (bool) moved to a random place in an image whose own defect is
    `own` (bool, same shape), at least `margin` px from it unless `overlap`: (region,
    offset (dy, dx)) or None (empty, too large, or no free place in `tries`). Also the
    pairs stage's placement of a new mask on a real background."""
    if not on.any():
        return None
    ys, xs = np.nonzero(on)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    h, w = y1 - y0, x1 - x0
    height, width = own.shape
    if h > height or w > width:
        return None
    busy = ndimage.binary_dilation(own, iterations=margin) if own.any() and margin else own
    for _ in range(tries):
        top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
        region = np.zeros((height, width), bool)
        region[top : top + h, left : left + w] = on[y0:y1, x0:x1]
        if overlap or not (region & busy).any():
            return region, (int(top - y0), int(left - x0))
    return None


def _blend(cfg: CopyPasteConfig, source, background, region, own, offset) -> np.ndarray:
    """The source's region blended into the background with a feathered edge; the
    background's own defect (`own`) is changed only where the region covers it."""
    moved = np.roll(source, offset, axis=(0, 1))  # the source aligned with the region
    alpha = ndimage.gaussian_filter(region.astype(np.float32), cfg.feather)
    alpha = np.maximum(alpha / max(alpha.max(), 1e-6), region)  # 1 on the defect itself
    alpha[own & ~region] = 0.0
    if background.ndim == 3:
        alpha = alpha[..., None]
    out = alpha * moved.astype(np.float32) + (1 - alpha) * background.astype(np.float32)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def draw(
    rows: list[dict], counts: dict[str, int], normal: set[str], rng: np.random.Generator
) -> list[tuple[dict, list[dict]]]:
    """Per class `counts[label]` sources (whole shuffled passes over the class's rows),
    each with its background candidates in the order to try: the defect-free rows
    (labels in `normal`) when there are any, else the class's other rows, shuffled."""
    free = [r for r in rows if r["label"] in normal]
    out = []
    for label, k in counts.items():
        own = [r for r in rows if r["label"] == label]
        if not own or k <= 0:
            continue
        for i in arms.passes(len(own), k, rng):
            source = own[i]
            pool = free or [r for r in rows if r["label"] == label and r["id"] != source["id"]]
            out.append((source, [pool[j] for j in rng.permutation(len(pool))]))
    return out


def make(
    cfg: CopyPasteConfig,
    drawn: list[tuple[dict, list[dict]]],
    pixels: dict[str, tuple[np.ndarray, np.ndarray | None]],
    rng: np.random.Generator,
) -> tuple[list[Pasted], dict[str, int]]:
    """The pasted images of a draw (`pixels`: id -> (image, mask or None)). A source goes
    to the next background candidate when one has no free placement; when none has,
    it is pasted over part of the first one's defect (the arm keeps its size). Returns
    (pasted, counts: "overlapping" pastes and "short" sources, those with no defect to
    cut or larger than the image)."""
    out, counts = [], {"overlapping": 0, "short": 0}
    for source, backgrounds in drawn:
        image, mask = pixels[source["id"]]
        for bg, overlap in [(b, False) for b in backgrounds] + [(b, True) for b in backgrounds[:1]]:
            bg_image, bg_mask = pixels[bg["id"]]
            done = paste(cfg, image, mask, bg_image, bg_mask, rng, overlap=overlap)
            if done is not None:
                out.append(Pasted(*done[:3], source["id"], bg["id"], done[3]))
                counts["overlapping"] += overlap
                break
        else:
            counts["short"] += 1
    return out, counts


def record(pasted: list[Pasted], counts: dict[str, int]) -> dict:
    """One training set's pastes as JSON: each paste's source, background and offset,
    and make's counts."""
    return {
        "pasted": [
            {"source": p.source, "background": p.background, "offset": list(p.offset)}
            for p in pasted
        ],
        **counts,
    }


def summarise(records: list[dict]) -> dict:
    """An arm's `record`s over seeds: per seed how many sources found no place ("short")
    or went over a background's defect ("overlapping"), and every row id it used."""
    if missing := [i for i, r in enumerate(records) if "pasted" not in r]:
        raise ValueError(
            f"copy-paste records {missing} carry no provenance (resumed from before it was "
            "kept?): delete the stage's .resume folder and run it again"
        )
    used = {i for r in records for p in r["pasted"] for i in (p["source"], p["background"])}
    return {
        "short": [int(r["short"]) for r in records],
        "overlapping": [int(r["overlapping"]) for r in records],
        "pasted_from": sorted(used),
    }


def describe(cfg: CopyPasteConfig) -> str:
    return (
        "copy-paste: a real train defect cut by its mask, pasted onto a defect-free train "
        f"image (or one of its class, at least {cfg.margin} px from that image's own "
        f"defect) with a feathered edge (alpha: the mask blurred by sigma {cfg.feather:g} "
        "px); the annotation is the pasted mask (with the background's own)"
    )
