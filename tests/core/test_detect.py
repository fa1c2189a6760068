"""Detectors (defectgen.core.detect): the CPU stand-ins for torchvision's compiled ops,
exact box/mask geometry, COCOeval scoring, and a small detector that learns."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from defectgen.core import detect


def test_nms_keeps_the_best_of_overlapping_boxes():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 5]],
                         dtype=torch.float32)  # fmt: skip
    scores = torch.tensor([0.8, 0.9, 0.7, 0.95])
    # box 3 (0.95) overlaps box 0 by 50 / 100 = 0.5 and box 1 by 36 / 114 = 0.32; box 1
    # (0.9) overlaps box 0 by 81 / 119 = 0.68: at 0.5, box 1 suppresses box 0 ...
    assert detect.nms(boxes, scores, 0.5).tolist() == [3, 1, 2]
    # ... at 0.25, box 3 suppresses both
    assert detect.nms(boxes, scores, 0.25).tolist() == [3, 2]
    assert detect.nms(boxes[:0], scores[:0], 0.5).tolist() == []


def test_grid_roi_align_samples_each_bin_at_its_centre():
    # a feature map that is linear in x: bilinear sampling is exact, so each bin's average
    # is the value at the bin's centre. Stride 8 (64 px image, 8 x 8 map); map column j
    # holds j, and image x lies at map coordinate x / 8 - 0.5.
    fmap = torch.arange(8, dtype=torch.float32).repeat(1, 2, 8, 1)  # (1, 2, 8, 8)
    box = torch.tensor([[12.0, 20.0, 40.0, 48.0]])
    out = detect.GridRoIAlign(7)({"0": fmap}, [box], [(64, 64)])
    assert out.shape == (1, 2, 7, 7)
    centres = 12.0 + (np.arange(7) + 0.5) / 7 * 28.0
    for row in out[0, 0].numpy():
        assert row == pytest.approx(centres / 8 - 0.5, abs=1e-5)
    empty = detect.GridRoIAlign(7)({"0": fmap}, [box[:0]], [(64, 64)])
    assert empty.shape == (0, 2, 7, 7)


@pytest.mark.parametrize("hflip", [False, True])
@pytest.mark.parametrize("vflip", [False, True])
@pytest.mark.parametrize("turns", [0, 1, 3])
def test_boxes_follow_their_masks_through_flips_and_turns(hflip, vflip, turns):
    mask = np.zeros((24, 40), np.uint8)
    mask[3:9, 5:17] = 255
    mask[15:22, 30:34] = 255
    target = detect.Target.from_mask(mask, label=2)
    assert target.boxes.tolist() == [[5, 3, 17, 9], [30, 15, 34, 22]]
    image = mask.copy()
    out_img, out = detect.transform(image, target, hflip=hflip, vflip=vflip, quarter_turns=turns)
    for box, m in zip(out.boxes, out.masks, strict=True):
        ys, xs = np.nonzero(m)
        assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    assert np.array_equal(out_img > 127, out.masks.any(0))  # the image moved with them


def _truth() -> tuple[list[detect.Target], list[tuple[int, int]]]:
    targets = [
        detect.Target.from_boxes([[10, 10, 30, 30]], 1),
        detect.Target.from_boxes([[5, 20, 25, 50], [40, 40, 60, 60]], 2),
    ]
    return targets, [(64, 64), (64, 64)]


def _pred(boxes, labels, scores=None) -> dict:
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    return {"boxes": boxes, "labels": np.asarray(labels),
            "scores": np.asarray(scores or [0.9] * len(boxes), dtype=np.float32)}  # fmt: skip


def test_coco_scores_perfect_shifted_and_missing_detections():
    targets, shapes = _truth()
    perfect = [_pred(t.boxes, t.labels) for t in targets]
    s = detect.score(perfect, targets, shapes, ["crack", "dent"])
    assert s["map"] == pytest.approx(1.0) and s["map50"] == pytest.approx(1.0)
    # shifted by 2 px: IoU 0.68 (20 x 20 boxes) and 0.72 (20 x 30): found at .5, missed
    # from .7 / .75 up, so mAP@.5 stays 1 and mAP@[.5:.95] is about 0.43
    shifted = [_pred(t.boxes + 2, t.labels) for t in targets]
    s = detect.score(shifted, targets, shapes, ["crack", "dent"])
    assert s["map50"] == pytest.approx(1.0) and 0.35 < s["map"] < 0.5
    # the dent boxes predicted as crack: dent's AP 0, crack's hurt by false positives
    wrong = [perfect[0], _pred(targets[1].boxes, [1, 1])]
    s = detect.score(wrong, targets, shapes, ["crack", "dent"])
    assert s["ap_per_class"]["dent"] == 0.0 and s["ap_per_class"]["crack"] < 1.0
    none = [_pred([], []), _pred([], [])]
    assert detect.score(none, targets, shapes, ["crack", "dent"])["map"] == 0.0


def _blobs(n: int, rng: np.random.Generator, size: int = 48):
    """Class 1 bright squares, class 2 dark wide bars, one per image, on noise."""
    images, targets = [], []
    for i in range(n):
        img = rng.integers(90, 140, (size, size), dtype=np.uint8)
        label = 1 + i % 2
        w, h = (14, 14) if label == 1 else (24, 8)
        x, y = int(rng.integers(2, size - w - 2)), int(rng.integers(2, size - h - 2))
        img[y : y + h, x : x + w] = 240 if label == 1 else 10
        images.append(img)
        targets.append(detect.Target.from_boxes([[x, y, x + w, y + h]], label))
    return images, targets


@pytest.mark.slow
def test_a_small_detector_learns_to_find_and_name_blobs():
    rng = np.random.default_rng(0)
    train, val, test = _blobs(48, rng), _blobs(8, rng), _blobs(16, rng)
    labels = ["square", "bar"]
    torch.manual_seed(0)
    model = detect.build("fasterrcnn_resnet18", 2, 48)
    before = detect.evaluate(model, *test, labels)["map50"]
    fit = detect.fit(model, train, val, labels, steps=60, evals=2, batch_size=8, lr=0.02,
                     seed=0)  # fmt: skip
    after = detect.evaluate(fit.model, *test, labels)
    assert fit.eval_steps == [30, 60] and fit.best_step in (30, 60)
    assert after["map50"] > max(0.5, before + 0.3), (before, after)


def test_mask_rcnn_trains_a_step_and_scores_masks():
    mask = np.zeros((48, 48), np.uint8)
    mask[10:20, 8:30] = 255
    image = np.where(mask > 0, 230, 100).astype(np.uint8)
    target = detect.Target.from_mask(mask, 1)
    model = detect.build("maskrcnn_resnet18", 1, 48)
    fit = detect.fit(model, ([image] * 4, [target] * 4), ([image], [target]), ["crack"],
                     steps=2, evals=1, batch_size=2, lr=0.01, seed=0)  # fmt: skip
    s = detect.evaluate(fit.model, [image], [target], ["crack"], segm=True)
    assert set(s) == {"map", "map50", "ap_per_class", "segm_map", "segm_map50",
                      "segm_ap_per_class"}  # fmt: skip
    assert all(0.0 <= s[k] <= 1.0 for k in ("map", "segm_map"))
