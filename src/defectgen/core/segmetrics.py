"""Segmentation / saliency metrics, as DefFiller reports them (4.4.3).

Per image, a prediction `pred` is a float map in [0, 1] and the ground truth `gt` a
bool mask of the same shape:
- S-measure (Fan et al. 2017, alpha 0.5): structure similarity, object-aware plus
  region-aware; 1 for a perfect map.
- MAE: mean absolute error of the map.
- max E-measure (Fan et al. 2018): enhanced alignment of the binarised map, the maximum
  over 256 thresholds of the mean over images; the paper's mean over pixels (the
  MATLAB and PySODMetrics code divide by N - 1, which puts a perfect map at N/(N-1)).
- max F-measure (beta^2 = 0.3): the same over thresholds, precision and recall pooled
  per image.
- IoU and Dice of the map thresholded at 0.5; pixel AUROC and AP over all pixels.
The S-measure follows PySODMetrics' reference implementation (the centroid split, the
sample statistics), except that a one-pixel quadrant has zero variance instead of 0/0.
Checked by hand against PySODMetrics 1.6.2 on random 40x50 maps (same min-max-normalised
input): S-measure, MAE and max F-measure equal to 6 digits, max E-measure equal after
its N/(N-1) factor. (It is not a test dependency: it needs OpenCV and scikit-image.)
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

EPS = np.finfo(np.float64).eps
THRESHOLDS = np.linspace(0.0, 1.0, 256)
BETA2 = 0.3


def _check(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=bool)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and mask {gt.shape} differ in shape")
    if pred.size and (pred.min() < 0 or pred.max() > 1):
        raise ValueError("predictions must be probabilities in [0, 1]")
    return pred, gt


def mae(pred: np.ndarray, gt: np.ndarray) -> float:
    pred, gt = _check(pred, gt)
    return float(np.abs(pred - gt).mean())


def _s_object(x: np.ndarray, region: np.ndarray) -> float:
    values = x[region]
    mean = values.mean()
    sigma = values.std(ddof=1) if values.size > 1 else 0.0
    return float(2 * mean / (mean**2 + 1 + sigma + EPS))


def _ssim(x: np.ndarray, y: np.ndarray) -> float:
    n = x.size
    if n == 0:
        return 0.0
    mx, my = x.mean(), y.mean()
    dof = max(n - 1, 1)
    sx = ((x - mx) ** 2).sum() / dof
    sy = ((y - my) ** 2).sum() / dof
    sxy = ((x - mx) * (y - my)).sum() / dof
    alpha = 4 * mx * my * sxy
    beta = (mx**2 + my**2) * (sx + sy)
    if alpha != 0:
        return float(alpha / (beta + EPS))
    return 1.0 if beta == 0 else 0.0


def s_measure(pred: np.ndarray, gt: np.ndarray, alpha: float = 0.5) -> float:
    pred, gt = _check(pred, gt)
    y = gt.mean()
    if y == 0:
        return float(1 - pred.mean())
    if y == 1:
        return float(pred.mean())
    g = gt.astype(np.float64)
    s_object = y * _s_object(pred * g, gt) + (1 - y) * _s_object((1 - pred) * (1 - g), ~gt)
    h, w = gt.shape
    row, col = np.argwhere(gt).mean(axis=0).round()
    r, c = int(row) + 1, int(col) + 1  # the split: rows [0, r) / [r, h), cols [0, c) / [c, w)
    s_region = 0.0
    for rows, cols in (
        (slice(0, r), slice(0, c)),
        (slice(0, r), slice(c, w)),
        (slice(r, h), slice(0, c)),
        (slice(r, h), slice(c, w)),
    ):
        part = pred[rows, cols]
        s_region += part.size / (h * w) * _ssim(part, g[rows, cols])
    return max(0.0, float(alpha * s_object + (1 - alpha) * s_region))


def _e_curve(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """E-measure of the map binarised at each of THRESHOLDS (pred >= t)."""
    n = gt.size
    fg = gt.sum()
    out = np.empty(len(THRESHOLDS))
    g = gt.astype(np.float64)
    dg = g - g.mean()
    for i, t in enumerate(THRESHOLDS):
        binar = pred >= t
        if fg == 0:
            total = np.count_nonzero(~binar)
        elif fg == n:
            total = np.count_nonzero(binar)
        else:
            dp = binar - binar.mean()
            align = 2 * dg * dp / (dg**2 + dp**2 + EPS)
            total = ((align + 1) ** 2 / 4).sum()
        out[i] = total / n
    return out


def _f_curve(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """F-measure (beta^2 0.3) of the map binarised at each of THRESHOLDS."""
    out = np.empty(len(THRESHOLDS))
    fg = gt.sum()
    for i, t in enumerate(THRESHOLDS):
        binar = pred >= t
        tp = np.count_nonzero(binar & gt)
        precision = tp / binar.sum() if binar.any() else 0.0
        recall = tp / fg if fg else 0.0
        denom = BETA2 * precision + recall
        out[i] = (1 + BETA2) * precision * recall / denom if denom else 0.0
    return out


def iou_dice(pred: np.ndarray, gt: np.ndarray, threshold: float = 0.5) -> tuple[float, float]:
    """IoU and Dice of pred >= threshold; both 1 when both masks are empty."""
    pred, gt = _check(pred, gt)
    binar = pred >= threshold
    inter = np.count_nonzero(binar & gt)
    union = np.count_nonzero(binar | gt)
    total = np.count_nonzero(binar) + np.count_nonzero(gt)
    return (inter / union if union else 1.0), (2 * inter / total if total else 1.0)


# the metrics that are a mean over images: their per-image scores let a comparison
# resample the test images (core.stats.seed_image_bootstrap)
PER_IMAGE = ("s_measure", "mae", "iou", "dice")


def per_image(preds: list[np.ndarray], gts: list[np.ndarray]) -> dict[str, list[float]]:
    """Per PER_IMAGE metric, each image's score (in the inputs' order)."""
    checked = [_check(p, g) for p, g in zip(preds, gts, strict=True)]
    ious, dices = zip(*(iou_dice(p, g) for p, g in checked), strict=True)
    return {
        "s_measure": [s_measure(p, g) for p, g in checked],
        "mae": [mae(p, g) for p, g in checked],
        "iou": [float(v) for v in ious],
        "dice": [float(v) for v in dices],
    }


def evaluate(preds: list[np.ndarray], gts: list[np.ndarray]) -> dict[str, float]:
    """Every metric over a set of images: per-image S, MAE, IoU, Dice averaged; max E and
    max F over thresholds of the per-threshold means; AUROC and AP over all pixels (nan
    when every pixel of the set is of one class)."""
    if len(preds) != len(gts) or not preds:
        raise ValueError(f"{len(preds)} predictions for {len(gts)} masks")
    checked = [_check(p, g) for p, g in zip(preds, gts, strict=True)]
    e = np.mean([_e_curve(p, g) for p, g in checked], axis=0)
    f = np.mean([_f_curve(p, g) for p, g in checked], axis=0)
    each = per_image(preds, gts)
    flat_p = np.concatenate([p.ravel() for p, _ in checked])
    flat_g = np.concatenate([g.ravel() for _, g in checked])
    both = flat_g.any() and not flat_g.all()
    return {
        "s_measure": float(np.mean(each["s_measure"])),
        "mae": float(np.mean(each["mae"])),
        "max_e_measure": float(e.max()),
        "max_f_measure": float(f.max()),
        "iou": float(np.mean(each["iou"])),
        "dice": float(np.mean(each["dice"])),
        "pixel_auroc": float(roc_auc_score(flat_g, flat_p)) if both else float("nan"),
        "pixel_ap": float(average_precision_score(flat_g, flat_p)) if both else float("nan"),
    }


# Below this mean defect area (a fraction of the image, over the test images that have a
# defect) the verdicts read Dice instead of S-measure: on an image that is nearly all
# background S-measure scores the all-background map near its maximum, so on a line with
# defects under 0.5 % of a 64 px image every U-Net scored below the empty prediction
# (issue 61), while Dice on defect pixels (1 where both masks are empty) is 0 for it on
# every defect image.
SMALL_DEFECTS = 0.01


def primary_metric(gts: list[np.ndarray]) -> tuple[str, str]:
    """The metric a segmentation comparison's validity and verdicts read for these test
    masks, and why: "dice" where the defects are small (mean area over the masks with a
    defect below SMALL_DEFECTS of the image), else "s_measure" (DefFiller's metric)."""
    areas = [float(np.asarray(g, dtype=bool).mean()) for g in gts]
    with_defect = [a for a in areas if a > 0]
    mean = float(np.mean(with_defect)) if with_defect else 0.0
    if mean < SMALL_DEFECTS:
        return "dice", (
            f"the defects are small (mean area {mean * 100:.2g} % of the image, under "
            f"{SMALL_DEFECTS * 100:g} %), where S-measure rates an empty prediction near "
            "its best: Dice on defect pixels (1 where prediction and mask are both empty)"
        )
    return "s_measure", (
        f"S-measure (DefFiller's metric): the defects cover {mean * 100:.2g} % of the "
        "image on average"
    )
