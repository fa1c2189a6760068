"""Preprocess: ingested images -> model-ready images with splits and the few-shot subset.

For every ingested image: optional ROI crop and 1:1 tiling (IV-A),
colour conversion (params preprocess.color), resize to image_size (Lanczos;
masks nearest-neighbour so they stay binary; boxes scaled). Then a stable,
seeded split keyed by the ingested image's id (all tiles of one image share a
split, so no image leaks across splits) and the few-shot subset of train.

Writes under `out_dir`:
    manifest.parquet          one row per output image; raw_id = the ingested id
    images/<class>/<id16>.png
    masks/<class>/<id16>.png  when the dataset has masks
    split_counts.json         images per class and split
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
from tqdm import tqdm

from defectgen import manifest
from defectgen.artifacts import SPLIT_COUNTS_JSON
from defectgen.atomic import atomic_dir, atomic_write_json, write_file
from defectgen.config import Params, PreprocessConfig
from defectgen.core import roi as roi_core
from defectgen.core.images import ImageProblem, decode_image, encode_png, pixel_id, resize, to_color
from defectgen.core.split import SPLITS, assign_split, select_subset
from defectgen.errors import DataError


def _views(pixels: np.ndarray, cfg: PreprocessConfig) -> list[roi_core.Box]:
    """The regions of one image that become output images (the whole image without ROI)."""
    h, w = pixels.shape[:2]
    if not cfg.roi.enabled:
        return [roi_core.Box(0, 0, w, h)]
    gray = to_color(pixels, "grayscale")
    box = roi_core.roi_box(gray, foreground=cfg.roi.foreground, min_fill=cfg.roi.min_fill)
    return roi_core.square_tiles(box) if cfg.roi.tile else [box]


def process_image(
    pixels: np.ndarray,
    mask: np.ndarray | None,
    boxes: list[dict] | None,
    cfg: PreprocessConfig,
) -> tuple[list[tuple[np.ndarray, np.ndarray | None, list[dict] | None]], int]:
    """One ingested image -> its output images (pixels, mask, boxes) and the tiles dropped.

    Tiles without any defect pixel are dropped when the image has a mask: the
    class label says "defect here", which an empty tile would contradict.
    """
    size = cfg.image_size
    out = []
    dropped = 0
    for view in _views(pixels, cfg):
        img = to_color(roi_core.crop(pixels, view), cfg.color)
        m = roi_core.crop(mask, view) if mask is not None else None
        if m is not None and cfg.roi.enabled and not m.any():
            dropped += 1
            continue
        b = None
        if boxes is not None:
            b = roi_core.clip_boxes(boxes, view) if cfg.roi.enabled else boxes
            b = roi_core.scale_boxes(b, size / view.width, size / view.height)
        out.append((resize(img, size), resize(m, size, nearest=True) if m is not None else None, b))
    return out, dropped


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
    seen: set[str] = set()
    dropped_tiles = collisions = 0
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
            outputs, dropped = process_image(pixels, mask, src["boxes"], cfg)
            dropped_tiles += dropped
            for img, m, boxes in outputs:
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

    metrics: dict[str, float] = {
        "n_images": len(rows),
        "n_subset": sum(subset_counts.values()),
        "n_dropped_tiles": dropped_tiles,
        "n_collisions": collisions,
    }
    for s in SPLITS:
        metrics[f"n_{s}"] = sum(counts.get((s, label), 0) for label in labels)
        for label in labels:
            metrics[f"count/{s}/{label}"] = counts.get((s, label), 0)
    return metrics
