"""Preprocess: ingested images -> model-ready images with splits and the few-shot subset.

For every ingested image: optional ROI crop and 1:1 tiling (IV-A),
colour conversion (params preprocess.color), resize to image_size (Lanczos; masks by
area so thin defects stay connected, core.images.resize_mask; boxes scaled, each at
least one output pixel wide and high). Then a stable,
seeded split keyed by the ingested image's id (all tiles of one image share a
split, so no image leaks across splits) and the few-shot subset of train.

Writes under `out_dir`:
    manifest.parquet          one row per output image; raw_id = the ingested id
    images/<class>/<id16>.png
    masks/<class>/<id16>.png  when the dataset has masks
    split_counts.json         images per class and split
    preprocess_report.json    what the resize did to the labels: per class the masks'
                              defect regions and areas before and after; the masks it
                              would have emptied (masks_lost: kept at one pixel or the
                              image skipped, preprocess.empty_mask), by file; the images
                              whose aspect the square
                              resize changed (count, worst ratio); boxes widened to one
                              pixel; images of a defect class left without a box
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
from tqdm import tqdm

from defectgen import manifest
from defectgen.artifacts import PREPROCESS_REPORT_JSON, SPLIT_COUNTS_JSON
from defectgen.atomic import atomic_dir, atomic_write_json, write_file
from defectgen.config import Params, PreprocessConfig
from defectgen.core import roi as roi_core
from defectgen.core.images import (
    ImageProblem,
    decode_image,
    encode_png,
    mask_shape,
    pixel_id,
    resize,
    resize_mask,
    to_color,
)
from defectgen.core.split import SPLITS, assign_split, select_subset
from defectgen.errors import DataError


def _views(pixels: np.ndarray, cfg: PreprocessConfig) -> list[roi_core.Box]:
    """The regions of one image that become output images: the whole image, its square
    tiles (resize crop), or the ROI's tiles."""
    h, w = pixels.shape[:2]
    if not cfg.roi.enabled:
        whole = roi_core.Box(0, 0, w, h)
        return roi_core.square_tiles(whole, cover=True) if cfg.resize == "crop" else [whole]
    gray = to_color(pixels, "grayscale")
    box = roi_core.roi_box(gray, foreground=cfg.roi.foreground, min_fill=cfg.roi.min_fill)
    return roi_core.square_tiles(box) if cfg.roi.tile else [box]


# An image whose aspect the square resize changes by more than this factor is counted
# (and named) in the preprocess report: its defects are stretched in one direction.
ASPECT_WARN = 1.25


def min_box(box: dict, size: int) -> tuple[dict, bool]:
    """A scaled box at least one output pixel wide and high (centred where it was,
    inside the image), and whether it had to grow: a defect smaller than a pixel after
    the resize is still a defect to find."""
    out, grew = dict(box), False
    for lo, hi in (("x0", "x1"), ("y0", "y1")):
        if out[hi] - out[lo] < 1:
            centre = min(max((out[lo] + out[hi]) / 2, 0.5), size - 0.5)
            out[lo], out[hi], grew = centre - 0.5, centre + 0.5, True
    return out, grew


def pad_square(pixels: np.ndarray) -> tuple[np.ndarray, int, int]:
    """The image centred on a black square of its long side, and its (x, y) offset."""
    h, w = pixels.shape[:2]
    side = max(h, w)
    x, y = (side - w) // 2, (side - h) // 2
    out = np.zeros((side, side, *pixels.shape[2:]), pixels.dtype)
    out[y : y + h, x : x + w] = pixels
    return out, x, y


def process_image(
    pixels: np.ndarray,
    mask: np.ndarray | None,
    boxes: list[dict] | None,
    cfg: PreprocessConfig,
) -> tuple[list[tuple[np.ndarray, np.ndarray | None, list[dict] | None]], int, list[dict]]:
    """One ingested image -> its output images (pixels, mask, boxes), the tiles dropped,
    and per output image what the resize did to its labels ({aspect, mask_before,
    mask_after: (regions, area), boxes_grown, boxes_left}).

    Tiles without any defect pixel are dropped when the image has a mask: the
    class label says "defect here", which an empty tile would contradict.
    """
    size = cfg.image_size
    out, notes = [], []
    dropped = 0
    views = _views(pixels, cfg)
    tiled = cfg.roi.enabled or len(views) > 1
    for view in views:
        img = to_color(roi_core.crop(pixels, view), cfg.color)
        m = roi_core.crop(mask, view) if mask is not None else None
        b = None
        if boxes is not None:
            b = roi_core.clip_boxes(boxes, view) if tiled else boxes
        # a tile of a defect image without any of its defect says "defect here" wrongly
        if tiled and ((m is not None and not m.any()) or (boxes and not b)):
            dropped += 1
            continue
        aspect = max(view.width, view.height) / max(1, min(view.width, view.height))
        note = {"aspect": 1.0 if cfg.resize == "pad" else aspect, "boxes_grown": 0}
        side_w, side_h = view.width, view.height
        if cfg.resize == "pad" and view.width != view.height:
            img, dx, dy = pad_square(img)
            m = pad_square(m)[0] if m is not None else None
            if b is not None:  # moved with the image onto the square
                b = roi_core.clip_boxes(
                    b, roi_core.Box(-dx, -dy, img.shape[1] - dx, img.shape[0] - dy)
                )
            k = size / img.shape[0]
            edges = (dx, dy, dx + view.width, dy + view.height)
            note["content_box"] = {
                "label": "content",
                **dict(zip(("x0", "y0", "x1", "y1"), (e * k for e in edges), strict=True)),
            }
            side_w = side_h = img.shape[0]
        if b is not None:
            b = roi_core.scale_boxes(b, size / side_w, size / side_h)
            grown = [min_box(x, size) for x in b]
            b, note["boxes_grown"] = [x for x, _ in grown], sum(g for _, g in grown)
            note["boxes_left"] = len(b)
        small = None
        if m is not None:
            small = resize_mask(m, size, keep_lost=False)
            # a defect under half an output pixel: kept at one pixel, or the image skipped
            note["mask_lost"] = bool((m > 127).any()) and not small.any()
            if note["mask_lost"] and cfg.empty_mask == "skip":
                out.append(None)
                notes.append(note)
                continue
            if note["mask_lost"]:
                small = resize_mask(m, size)
            note["mask_before"], note["mask_after"] = mask_shape(m), mask_shape(small)
        out.append((resize(img, size), small, b))
        notes.append(note)
    return out, dropped, notes


def _report(notes: list[tuple[dict, dict]], normal: set[str]) -> dict:
    """preprocess_report.json from each output image's (row, note)."""
    squashed = [(r, n) for r, n in notes if n["aspect"] > ASPECT_WARN]
    masks: dict[str, dict] = {}
    for label in sorted({r["label"] for r, n in notes if "mask_before" in n}):
        mine = [n for r, n in notes if r["label"] == label and "mask_before" in n]
        defect = [n for n in mine if n["mask_before"][0] > 0]
        masks[label] = {
            "masks": len(mine),
            "with_defect": len(defect),
            "regions_median_before": float(np.median([n["mask_before"][0] for n in defect]))
            if defect
            else 0.0,
            "regions_median_after": float(np.median([n["mask_after"][0] for n in defect]))
            if defect
            else 0.0,
            "area_mean_before": float(np.mean([n["mask_before"][1] for n in defect]))
            if defect
            else 0.0,
            "area_mean_after": float(np.mean([n["mask_after"][1] for n in defect]))
            if defect
            else 0.0,
            # a defect under half an output pixel, kept at its strongest pixel
            # (preprocess.empty_mask keep; skipped images are in masks_lost only)
            "kept_at_one_pixel": sum(1 for n in defect if n.get("mask_lost")),
        }
    return {
        "aspect_warn_above": ASPECT_WARN,
        "aspect_changed": {
            "count": len(squashed),
            "worst_ratio": max((n["aspect"] for _, n in squashed), default=1.0),
            "files": [r["original_path"] for r, _ in squashed][:50],
        },
        "masks": masks,
        "boxes_grown_to_one_pixel": sum(n["boxes_grown"] for _, n in notes),
        # a defect image whose boxes all fell away (ingest dropped degenerate ones, or an
        # ROI tile clipped them): a detector would learn "nothing to find" from it
        "defect_images_without_boxes": [
            r["original_path"]
            for r, n in notes
            if n.get("boxes_left") == 0 and r["label"] not in normal
        ],
    }


def run(params: Params, *, ingested: Path, out_dir: Path) -> dict[str, float]:
    """Preprocess the ingest output at `ingested` into `out_dir`.

    Args:
        params: validated parameters (sections preprocess and seed are used).
        ingested: the ingest stage's output directory.
        out_dir: the stage output directory; replaced atomically.

    Returns:
        Metrics: n_images, n_<split>, n_subset, n_dropped_tiles, n_collisions,
        count/<split>/<class>.
    """
    cfg = params.preprocess
    ingested = Path(ingested)
    rows_in = manifest.read_rows(ingested)
    if not rows_in:
        raise DataError(f"{ingested}: the manifest has no images; run ingest on a real dataset")
    labels = sorted({r["label"] for r in rows_in})
    unknown = sorted(set(params.data.normal_classes) - set(labels))
    if unknown:
        raise DataError(
            f"data.normal_classes lists {unknown}, which the dataset at {ingested} does not "
            f"have; its classes are {labels}"
        )

    rows: list[dict] = []
    notes: list[tuple[dict, dict]] = []  # (ingested row, what the resize did), per output
    seen: set[str] = set()
    dropped_tiles = collisions = 0
    lost: list[str] = []  # images skipped because the resize would empty their mask
    with atomic_dir(out_dir) as tmp:
        for src in tqdm(rows_in, desc="preprocess", unit="img", disable=None):
            path = ingested / src["path"]
            try:
                pixels, _ = decode_image(path.read_bytes())
            except (OSError, ImageProblem) as exc:  # ingest checked it: it changed since
                raise DataError(
                    f"{path}: cannot decode an ingested image ({exc}); re-run ingest"
                ) from None
            mask = None
            if src["mask_path"]:
                mask, _ = decode_image((ingested / src["mask_path"]).read_bytes())
            split = assign_split(
                src["id"], seed=params.seed, train=cfg.split.train, val=cfg.split.val
            )
            outputs, dropped, made = process_image(pixels, mask, src["boxes"], cfg)
            dropped_tiles += dropped
            for output, note in zip(outputs, made, strict=True):
                if output is None:  # its defect would vanish (preprocess.empty_mask skip)
                    lost.append(src["original_path"])
                    continue
                img, m, boxes = output
                oid = pixel_id(img)
                if oid in seen:  # two ingested images became identical after resizing
                    collisions += 1
                    continue
                seen.add(oid)
                short = oid[:16]
                rel_img = f"images/{src['label']}/{short}.png"
                write_file(tmp / rel_img, encode_png(img))
                rel_mask = None
                if m is not None:
                    rel_mask = f"masks/{src['label']}/{short}.png"
                    write_file(tmp / rel_mask, encode_png(m))
                notes.append((src, note))
                rows.append(
                    manifest.make_row(
                        id=oid,
                        path=rel_img,
                        label=src["label"],
                        split=split,
                        width=cfg.image_size,
                        height=cfg.image_size,
                        channels=1 if img.ndim == 2 else 3,
                        mask_path=rel_mask,
                        boxes=boxes,
                        source=src["source"],
                        raw_id=src["id"],
                        original_path=src["original_path"],
                        content_box=note.get("content_box"),
                    )
                )

        train = [r for r in rows if r["split"] == "train"]
        chosen = select_subset(
            [r["raw_id"] for r in train],
            [r["label"] for r in train],
            seed=params.seed,
            alpha=cfg.subset.alpha,
            per_class=cfg.subset.per_class,
        )
        for r, keep in zip(train, chosen, strict=True):
            r["in_subset"] = keep

        rows.sort(key=lambda r: (r["label"], r["split"], r["id"]))
        manifest.write_manifest(rows, tmp / manifest.MANIFEST_NAME)
        counts = Counter((r["split"], r["label"]) for r in rows)
        subset_counts = Counter(r["label"] for r in rows if r["in_subset"])
        labels = sorted({r["label"] for r in rows})
        table = {
            label: {
                **{s: counts.get((s, label), 0) for s in SPLITS},
                "subset": subset_counts.get(label, 0),
            }
            for label in labels
        }
        atomic_write_json(tmp / SPLIT_COUNTS_JSON, table)
        report = _report(notes, set(params.data.normal_classes))
        report["masks_lost"] = {
            "handled": cfg.empty_mask,
            "files": lost + [r["original_path"] for r, n in notes if n.get("mask_lost")],
        }
        atomic_write_json(tmp / PREPROCESS_REPORT_JSON, report)

    metrics: dict[str, float] = {
        "n_images": len(rows),
        "n_subset": sum(subset_counts.values()),
        "n_dropped_tiles": dropped_tiles,
        "n_collisions": collisions,
        "n_aspect_changed": report["aspect_changed"]["count"],
        "n_boxes_grown": report["boxes_grown_to_one_pixel"],
        "n_masks_lost": len(report["masks_lost"]["files"]),
        "n_defect_images_without_boxes": len(report["defect_images_without_boxes"]),
    }
    for s in SPLITS:
        metrics[f"n_{s}"] = sum(counts.get((s, label), 0) for label in labels)
        for label in labels:
            metrics[f"count/{s}/{label}"] = counts.get((s, label), 0)
    return metrics
