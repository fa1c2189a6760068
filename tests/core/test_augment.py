"""The classical control (defectgen.core.augment): what a practitioner's recipe must not
do (fill corners, leave the source's range) and what it must do (move masks and boxes
with the image), on constructed images."""

from __future__ import annotations

import numpy as np
import pytest

from defectgen.config import ClassicalConfig
from defectgen.core import augment, detect, segment

GEOMETRIC = ClassicalConfig(brightness=0.0, contrast=0.0, blur_p=0.0, noise_p=0.0)


def _texture(seed: int, size: int = 48) -> np.ndarray:
    """A grey texture in [60, 190]: no black or white pixel anywhere."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 1, size)[None, :] * np.linspace(0.5, 1, size)[:, None]
    img = 60 + 100 * ramp + rng.uniform(0, 30, (size, size))
    return img.clip(60, 190).astype(np.uint8)


def _blob(seed: int, size: int = 48) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """A dark textured image with one bright rectangle; its mask and its box."""
    rng = np.random.default_rng(seed)
    img = rng.normal(70, 8, (size, size)).clip(0, 255)
    y0, x0 = rng.integers(10, 22, 2)
    h, w = rng.integers(8, 14, 2)
    mask = np.zeros((size, size), np.uint8)
    mask[y0 : y0 + h, x0 : x0 + w] = 255
    img[mask > 0] = 220
    return img.astype(np.uint8), mask, [int(x0), int(y0), int(x0 + w), int(y0 + h)]


def _border(img: np.ndarray) -> list[np.ndarray]:
    return [img[0], img[-1], img[:, 0], img[:, -1]]


def test_geometric_copies_stay_in_the_source_range_with_no_filled_corners():
    rng = np.random.default_rng(0)
    for seed in range(20):
        src = _texture(seed)
        out = augment.classical_copy(GEOMETRIC, src, rng).image
        assert out.shape == src.shape and out.dtype == np.uint8
        # reflection and bilinear interpolation only mix the source's own values
        assert src.min() <= out.min() and out.max() <= src.max()


def test_a_constant_filled_rotation_would_fail_the_range_check():
    # the check above can fail: a rotation that fills its corners (the old recipe) does
    import albumentations as A
    import cv2

    src = _texture(1)
    fill = A.Compose([A.Affine(rotate=(20, 20), border_mode=cv2.BORDER_CONSTANT, p=1)], seed=0)
    assert fill(image=src)["image"].min() < src.min()


def test_the_mask_moves_with_the_image_and_stays_binary():
    rng = np.random.default_rng(2)
    for seed in range(12):
        image, mask, _ = _blob(seed)
        copy = augment.classical_copy(ClassicalConfig(rotate=20.0), image, rng, mask=mask)
        assert set(np.unique(copy.mask)) <= {0, 255} and copy.mask.shape == mask.shape
        inside, outside = copy.image[copy.mask > 0], copy.image[copy.mask == 0]
        assert inside.mean() > outside.mean() + 80  # the defect is still under its mask
        # the segmentation control's copy is this one
        pair = segment.classical_pair(GEOMETRIC, image, mask, np.random.default_rng(seed))
        same = augment.classical_copy(GEOMETRIC, image, np.random.default_rng(seed), mask=mask)
        assert np.array_equal(pair[0], same.image) and np.array_equal(pair[1], same.mask)


def test_boxes_follow_the_image_exactly_without_a_free_rotation():
    rng = np.random.default_rng(3)
    for seed in range(12):
        image, _, box = _blob(seed)
        cfg = GEOMETRIC.model_copy(update={"rotate": 20.0})
        copy = augment.classical_copy(cfg, image, rng, boxes=np.array([box]), labels=[3])
        assert copy.labels == [3]
        ys, xs = np.nonzero(copy.image > 145)
        seen = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        assert copy.boxes[0] == pytest.approx(seen, abs=1.5)  # resize: one pixel of blur


def _bright_box(image: np.ndarray) -> list[int]:
    ys, xs = np.nonzero(image > 145)
    return [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def test_detection_copies_box_what_the_image_shows():
    rng = np.random.default_rng(4)
    cfg = GEOMETRIC.model_copy(update={"rotate": 20.0})
    for seed in range(8):
        image, mask, _ = _blob(seed)
        target = detect.Target.from_mask(mask, label=2)
        out_img, out = detect.classical(cfg, image, target, rng)
        assert len(out.boxes) == len(out.labels) == len(out.masks) == 1 and out.labels[0] == 2
        # nearest-neighbour mask vs bilinear image: their edges may differ by 2 px at a
        # rotated corner; a box rotated with the image would be several pixels loose
        assert out.boxes[0] == pytest.approx(_bright_box(out_img), abs=2.5)


def test_a_defect_mirrored_by_the_reflected_border_becomes_its_own_instance():
    # a bright bar 3 px from the left edge: a rotation reflects it into the border, and
    # the copy then shows two separate blobs; each is boxed on its own, never one loose box
    image = np.full((48, 48), 70, np.uint8)
    mask = np.zeros((48, 48), np.uint8)
    mask[20:28, 3:9] = 255
    image[mask > 0] = 220
    target = detect.Target.from_mask(mask, label=1)
    cfg = GEOMETRIC.model_copy(update={"rotate": 45.0, "flips": False, "crop_scale": (1.0, 1.0)})
    split = 0
    for seed in range(20):
        out_img, out = detect.classical(cfg, image, target, np.random.default_rng(seed))
        for box, m in zip(out.boxes, out.masks, strict=True):
            ys, xs = np.nonzero(m)
            assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
            x0, y0, x1, y1 = (int(v) for v in box)
            assert m[y0:y1, x0:x1].mean() > 0.3  # tight: the box is mostly its instance
        split += len(out.boxes) > 1
    assert split > 0  # the case the rule is for did occur


def test_copies_are_reproducible_from_the_rng_and_differ_between_draws():
    src = _texture(5)
    a = augment.classical_copy(ClassicalConfig(), src, np.random.default_rng(7)).image
    b = augment.classical_copy(ClassicalConfig(), src, np.random.default_rng(7)).image
    rng = np.random.default_rng(8)
    c, d = (augment.classical_copy(ClassicalConfig(), src, rng).image for _ in range(2))
    assert np.array_equal(a, b) and not np.array_equal(c, d)


def test_the_description_is_written_from_the_parameters():
    text = augment.describe(ClassicalConfig(rotate=12.5, noise_p=0.0))
    assert "+-12.5 degrees with a reflected border" in text and "noise" not in text
    assert "rotation within" not in augment.describe(ClassicalConfig(), boxes_only=True)
    assert "flips" not in augment.describe(ClassicalConfig(flips=False))
