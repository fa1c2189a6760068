"""The classical control: one augmentation recipe, the one every value comparison's
`real+classical` arm and the gate's no-harm check add. No paths.

The recipe is what a practitioner would apply to a small defect dataset: flips (and,
where the data allows, quarter turns), a small rotation whose border is the image's own
reflection, a random resized crop, brightness/contrast, sometimes blur and noise. It is
built on albumentations, which moves masks (nearest neighbour, so they stay binary) and
boxes with the image and reflects borders instead of filling them; a copy never holds
constant-filled corners that no test image has.

Boxes stay exact: a free rotation makes an axis-aligned box loose (its corners move
outside the object), so a recipe applied with boxes and no mask drops the free rotation
(flips, quarter turns and crops move boxes exactly); with a mask, boxes are the caller's
to recompute from the moved mask. `describe` writes the recipe's text for reports from
the same parameters that build it, so the two cannot disagree.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

# albumentations asks PyPI for a newer version at import unless told not to: nothing here
# may reach the network at run time.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A  # noqa: E402
import cv2  # noqa: E402

from defectgen.config import ClassicalConfig  # noqa: E402


@dataclass
class Copy:
    """One classical copy: the image (uint8, the source's shape), its mask (uint8 {0, 255}),
    instance masks, and boxes (N, 4) pascal-VOC x0, y0, x1, y1 with their labels, when
    given."""

    image: np.ndarray
    mask: np.ndarray | None = None
    masks: list[np.ndarray] | None = None
    boxes: np.ndarray | None = None
    labels: list[int] | None = None


MIN_VISIBLE = 0.3  # a box the crop leaves less of than this is dropped with its label


def _transforms(cfg: ClassicalConfig, size: tuple[int, int], *, rotate: bool) -> list:
    h, w = size
    if cfg.quarter_turns and h != w:
        raise ValueError(
            f"classical.quarter_turns needs square images, got {w}x{h}: set it to false "
            "or make preprocess.image_size square"
        )
    ops: list = []
    if cfg.flips:
        ops += [A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)]
    if cfg.quarter_turns:
        ops.append(A.RandomRotate90(p=1.0))
    if rotate and cfg.rotate > 0:
        ops.append(
            A.Affine(rotate=(-cfg.rotate, cfg.rotate), border_mode=cv2.BORDER_REFLECT_101, p=1.0)
        )
    if cfg.crop_scale[0] < 1.0:
        ops.append(A.RandomResizedCrop(size=(h, w), scale=tuple(cfg.crop_scale), p=1.0))
    if cfg.brightness > 0 or cfg.contrast > 0:
        ops.append(A.RandomBrightnessContrast(cfg.brightness, cfg.contrast, p=1.0))
    if cfg.blur_p > 0:
        ops.append(A.GaussianBlur(sigma_limit=tuple(cfg.blur_sigma), p=cfg.blur_p))
    if cfg.noise_p > 0:  # albumentations' noise std is a fraction of the value range
        std = tuple(s / 255.0 for s in cfg.noise_sigma)
        ops.append(A.GaussNoise(std_range=std, p=cfg.noise_p))
    return ops


def classical_copy(
    cfg: ClassicalConfig,
    image: np.ndarray,
    rng: np.random.Generator,
    *,
    mask: np.ndarray | None = None,
    masks: list[np.ndarray] | None = None,
    boxes: np.ndarray | None = None,
    labels: list[int] | None = None,
) -> Copy:
    """One classically augmented copy of a uint8 image (H, W) or (H, W, 3), with its mask,
    instance masks and boxes moved the same way. The draw is seeded from `rng`, so a run
    is reproducible. Boxes that the crop leaves less than MIN_VISIBLE of are dropped with
    their labels; given boxes and no mask, the free rotation is left out (module doc)."""
    with_boxes = boxes is not None
    exact = with_boxes and mask is None and masks is None
    ops = _transforms(cfg, image.shape[:2], rotate=not exact)
    bbox = A.BboxParams(
        "pascal_voc", label_fields=["labels"], min_visibility=MIN_VISIBLE, clip=True
    )
    pipeline = A.Compose(
        ops, bbox_params=bbox if with_boxes else None, seed=int(rng.integers(2**31))
    )
    data: dict = {"image": image}
    if mask is not None:
        data["mask"] = mask
    if masks is not None:
        data["masks"] = list(masks)
    if with_boxes:
        data["bboxes"] = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        data["labels"] = list(labels or [])
    out = pipeline(**data)
    return Copy(
        image=np.ascontiguousarray(out["image"]),
        mask=None if mask is None else np.ascontiguousarray(out["mask"]),
        masks=None if masks is None else [np.ascontiguousarray(m) for m in out["masks"]],
        boxes=np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4) if with_boxes else None,
        labels=[int(v) for v in out["labels"]] if with_boxes else None,
    )


def describe(cfg: ClassicalConfig, *, boxes_only: bool = False) -> str:
    """The recipe in words, from its parameters (boxes_only: as applied to data with boxes
    and no masks, i.e. without the free rotation)."""
    parts = []
    if cfg.flips:
        parts.append("horizontal and vertical flips (p 0.5 each)")
    if cfg.quarter_turns:
        parts.append("a rotation by a multiple of 90 degrees")
    if cfg.rotate > 0 and not boxes_only:
        parts.append(f"rotation within +-{cfg.rotate:g} degrees with a reflected border")
    if cfg.crop_scale[0] < 1.0:
        lo, hi = cfg.crop_scale
        parts.append(f"a random resized crop keeping {lo:g}-{hi:g} of the area")
    if cfg.brightness > 0 or cfg.contrast > 0:
        parts.append(f"brightness +-{cfg.brightness:g} and contrast +-{cfg.contrast:g}")
    if cfg.blur_p > 0:
        lo, hi = cfg.blur_sigma
        parts.append(f"Gaussian blur (p {cfg.blur_p:g}, sigma {lo:g}-{hi:g} px)")
    if cfg.noise_p > 0:
        lo, hi = cfg.noise_sigma
        parts.append(f"Gaussian noise (p {cfg.noise_p:g}, sigma {lo:g}-{hi:g} grey levels)")
    text = ", ".join(parts) if parts else "no change (every transform off)"
    return f"albumentations {A.__version__}: {text}; masks and boxes move with the image"
