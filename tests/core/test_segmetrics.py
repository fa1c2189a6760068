"""Segmentation metrics (defectgen.core.segmetrics) against values worked out by hand."""

import numpy as np
import pytest

from defectgen.core import segmetrics as sm


def _block(shape, rows, cols) -> np.ndarray:
    out = np.zeros(shape, dtype=bool)
    out[rows, cols] = True
    return out


def test_a_perfect_map_scores_perfectly():
    gt = _block((6, 6), slice(1, 3), slice(2, 5))
    got = sm.evaluate([gt.astype(float)], [gt])
    assert got == {
        "s_measure": pytest.approx(1.0), "mae": 0.0, "max_e_measure": pytest.approx(1.0),
        "max_f_measure": pytest.approx(1.0), "iou": 1.0, "dice": 1.0, "pixel_auroc": 1.0,
        "pixel_ap": 1.0,
    }  # fmt: skip


def test_mae_iou_dice_by_hand():
    gt = _block((6, 6), slice(0, 3), slice(0, 3))  # 9 of 36
    assert sm.mae(np.full((6, 6), 0.25), gt) == pytest.approx((9 * 0.75 + 27 * 0.25) / 36)
    gt = _block((4, 4), slice(0, 2), slice(0, 2))  # 4 pixels
    pred = _block((4, 4), slice(0, 2), slice(1, 3)).astype(float)  # 4 pixels, 2 shared
    assert sm.iou_dice(pred, gt) == (pytest.approx(2 / 6), pytest.approx(4 / 8))
    assert sm.iou_dice(np.zeros((2, 2)), np.zeros((2, 2), bool)) == (1.0, 1.0)


def test_s_measure_by_hand():
    """4x4, ground truth the left half, a constant 0.5 map: object term 0.8 (mean 0.5,
    no spread in either region); the centroid (1.5, 0.5) rounds to (2, 0), so the split
    is at row 3, column 1: the constant quadrants score 1 (LT 3/16, LB 1/16), the mixed
    ones 0: region term 0.25; S = 0.5 * 0.8 + 0.5 * 0.25."""
    gt = _block((4, 4), slice(None), slice(0, 2))
    assert sm.s_measure(np.full((4, 4), 0.5), gt) == pytest.approx(0.525)
    # degenerate ground truths: the map's mean (or its complement)
    assert sm.s_measure(np.full((3, 3), 0.2), np.zeros((3, 3), bool)) == pytest.approx(0.8)
    assert sm.s_measure(np.full((3, 3), 0.7), np.ones((3, 3), bool)) == pytest.approx(0.7)


def test_e_f_auroc_ap_by_hand():
    """2x2, one defect pixel, the map marks it and its neighbour.
    E at t > 0: alignments 12/13, -0.8, 0.8, 0.8 -> (1 + xi)^2 / 4 = 625/676, 0.01, 0.81,
    0.81, mean 0.63864 (t = 0 marks all: 0.25). F at t > 0: precision 1/2, recall 1 ->
    1.3 * 0.5 / 1.15. AUROC: the positive beats two negatives and ties one: 2.5/3.
    AP: one threshold, precision 1/2 at recall 1."""
    gt = np.array([[1, 0], [0, 0]], bool)
    pred = np.array([[1.0, 1.0], [0.0, 0.0]])
    got = sm.evaluate([pred], [gt])
    assert got["max_e_measure"] == pytest.approx((625 / 676 + 0.01 + 0.81 + 0.81) / 4)
    assert got["max_f_measure"] == pytest.approx(1.3 * 0.5 / 1.15)
    assert got["pixel_auroc"] == pytest.approx(2.5 / 3)
    assert got["pixel_ap"] == pytest.approx(0.5)
    assert got["iou"] == pytest.approx(0.5) and got["dice"] == pytest.approx(2 / 3)


def test_averages_over_images_and_refuses_bad_input():
    gt = _block((4, 4), slice(0, 2), slice(0, 2))
    perfect, empty = gt.astype(float), np.zeros((4, 4))
    got = sm.evaluate([perfect, empty], [gt, gt])
    assert got["mae"] == pytest.approx((0 + 4 / 16) / 2)
    assert got["iou"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="differ in shape"):
        sm.mae(np.zeros((2, 2)), np.zeros((3, 3), bool))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        sm.mae(np.full((2, 2), 2.0), np.zeros((2, 2), bool))
    with pytest.raises(ValueError, match="2 predictions for 1 masks"):
        sm.evaluate([perfect, empty], [gt])
    assert np.isnan(sm.evaluate([empty], [np.zeros((4, 4), bool)])["pixel_auroc"])


def test_small_defects_are_judged_on_dice_where_s_measure_favours_an_empty_map():
    # 64 px images, each defect 3 x 3 px: 0.2 % of the image
    rng = np.random.default_rng(0)
    masks = []
    for _ in range(6):
        m = np.zeros((64, 64), bool)
        y, x = rng.integers(0, 61, 2)
        m[y : y + 3, x : x + 3] = True
        masks.append(m)
    masks.append(np.zeros((64, 64), bool))  # a defect-free image: empty on empty
    metric, why = sm.primary_metric(masks)
    assert metric == "dice" and "small" in why and "0.22 %" in why
    perfect = [m.astype(np.float32) for m in masks]
    empty = [np.zeros((64, 64), np.float32) for _ in masks]
    # a U-Net-like map: every defect at 0.7, faint noise (under 0.2) over the background
    found = [np.clip(0.7 * m + rng.uniform(0, 0.2, m.shape), 0, 1).astype(np.float32)
             for m in masks]  # fmt: skip
    scores = {name: sm.evaluate(p, masks) for name, p in
              (("perfect", perfect), ("empty", empty), ("found", found))}  # fmt: skip
    # on S-measure the empty map beats the one that finds every defect
    assert scores["empty"]["s_measure"] > scores["found"]["s_measure"]
    # the chosen metric ranks a perfect map and one that finds them above the empty one
    assert scores["perfect"][metric] == scores["found"][metric] == 1.0
    assert scores["empty"][metric] < 0.2
    assert scores["empty"][metric] == pytest.approx(1 / 7)  # only the empty-on-empty image


def test_defects_of_ordinary_size_keep_s_measure():
    m = np.zeros((64, 64), bool)
    m[10:30, 10:30] = True  # 10 % of the image
    metric, why = sm.primary_metric([m, m.copy()])
    assert metric == "s_measure" and "S-measure" in why
