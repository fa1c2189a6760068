"""COCO instances export of images with defect masks or boxes (real and synthetic), one
file per split.

Each 8-connected region of a defect mask is one instance (`iscrowd` 0) with its
segmentation as compressed RLE (pycocotools), its area and bbox from the same RLE, so
pycocotools' COCO API, Detectron2 and MMDetection load it as is. An image with boxes and
no mask (a VOC-style dataset such as NEU-DET) gets one box-only instance per box. Images keep
defectgen's provenance as extra keys (`defectgen_id`, `origin`, `parent_id`, `split`).
Synthetic images are train-only: one in another split is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from pycocotools import mask as rle
from scipy import ndimage

_EIGHT = np.ones((3, 3), dtype=bool)


@dataclass
class Sample:
    """One image and its defect mask (uint8, >127 is defect) or boxes as the export sees
    it; an all-zero mask (or an empty box list) is an image without defect."""

    file_name: str  # relative to the images root the JSON is used with
    label: str
    split: str
    origin: str  # real | synthetic
    mask: np.ndarray | None
    defectgen_id: str = ""
    parent_id: str | None = None
    extra: dict = field(default_factory=dict)
    # without a mask: (x0, y0, x1, y1) pixel extents, and the image size (height, width)
    boxes: list[tuple[float, float, float, float]] | None = None
    size: tuple[int, int] | None = None

    def shape(self) -> tuple[int, int]:
        if self.mask is not None:
            return self.mask.shape[:2]
        if self.size is None or self.boxes is None:
            raise ValueError(f"{self.file_name}: a sample needs a mask, or boxes and a size")
        return self.size


def boxes_xywh(sample: Sample) -> list[list[float]]:
    """The sample's instances as [x, y, w, h] boxes in pixels (from the mask's regions,
    or its boxes)."""
    if sample.mask is None:
        return [[x0, y0, x1 - x0, y1 - y0] for x0, y0, x1, y1 in sample.boxes or []]
    out = []
    for region in instances(sample.mask):
        code = rle.encode(np.asfortranarray(region.astype(np.uint8)))
        out.append([float(v) for v in rle.toBbox(code)])
    return out


def encode(on: np.ndarray) -> dict:
    """Compressed RLE of a bool (H, W) mask, JSON-ready (counts as str)."""
    code = rle.encode(np.asfortranarray(on.astype(np.uint8)))
    return {"size": [int(s) for s in code["size"]], "counts": code["counts"].decode("ascii")}


def instances(mask: np.ndarray) -> list[np.ndarray]:
    """The mask's 8-connected regions, each a bool mask, in label order."""
    labelled, n = ndimage.label(np.asarray(mask) > 127, structure=_EIGHT)
    return [labelled == k for k in range(1, n + 1)]


def build(samples: list[Sample], categories: list[str], split: str) -> dict:
    """The COCO instances dict of `split`'s samples.

    Args:
        categories: every class, in a stable order (ids are 1-based positions), so the
            files of all splits share one category table.
    """
    cat_id = {name: i + 1 for i, name in enumerate(categories)}
    images, annotations = [], []
    for sample in samples:
        if sample.split != split:
            continue
        if sample.origin != "real" and split != "train":
            raise ValueError(
                f"{sample.file_name}: a {sample.origin} image in split {split!r}; synthetic "
                "images belong to train only"
            )
        if sample.label not in cat_id:
            raise ValueError(f"{sample.file_name}: class {sample.label!r} not in {categories}")
        height, width = sample.shape()
        image_id = len(images) + 1
        images.append(
            {
                "id": image_id,
                "file_name": sample.file_name,
                "height": int(height),
                "width": int(width),
                "split": split,
                "origin": sample.origin,
                "defectgen_id": sample.defectgen_id,
                "parent_id": sample.parent_id,
                **sample.extra,
            }
        )
        for x, y, w, h in [] if sample.mask is not None else boxes_xywh(sample):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": cat_id[sample.label],
                    "area": float(w * h),
                    "bbox": [float(x), float(y), float(w), float(h)],
                    "iscrowd": 0,
                }
            )
        for region in [] if sample.mask is None else instances(sample.mask):
            seg = encode(region)
            code = {"size": seg["size"], "counts": seg["counts"].encode("ascii")}
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": cat_id[sample.label],
                    "segmentation": seg,
                    "area": float(rle.area(code)),
                    "bbox": [float(v) for v in rle.toBbox(code)],
                    "iscrowd": 0,
                }
            )
    return {
        "info": {"description": f"defectgen export, split {split}"},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i, "name": n, "supercategory": "defect"} for n, i in cat_id.items()],
    }
