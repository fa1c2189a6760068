"""Utility by cross-fitting on train: do a class's synthetic images help a classifier
more than as many classical augmentations of its real images? The gate's evidence.

Every real train image (the images the generator learned from) is evidence once, held
out: the train set is split per class into `folds` folds (stratified), `repeats` times
with fresh splits. For one class c and one held-out fold, two models train on the other
folds' real images plus

    synthetic   c's synthetic images whose parent is not in the held-out fold (an
                image generated from a held-out image would carry its content into the
                score; parentless text-to-image samples are kept in every fold: their
                generator saw the whole class, which the gate.json note states)
    classical   as many classical copies of c's training-fold images (core.augment,
                the value protocol's control; drawn from a pool made once)

and give every held-out image a loss (negative log-likelihood of its true class). The
model is a linear head on frozen pretrained features: a multinomial logistic regression
on the gate's extractor features, projected on the leading principal components of the
training fold's real features (fast and convex, so it converges at any size). Per image
the losses are averaged over repeats; the utility is the mean over images of
`classical - synthetic` (> 0: the synthetic images help more), with a 95 % t interval
over images and the minimum detectable effect (80 % power) that its spread and count
allow. The verdict it leads to is core.gate.decide's.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold

from defectgen.config import GateConfig
from defectgen.core import stats

NO_PARENT = -1  # a synthetic image generated without a parent train image


def describe(cfg: GateConfig) -> str:
    """The estimate's model and design in words (gate.json, the report)."""
    return (
        f"a logistic regression on {cfg.proxy_components} PCA dimensions of the gate's "
        f"extractor features (a linear head on frozen pretrained features), cross-fitted: "
        f"{cfg.utility_folds}-fold stratified over the real train images, "
        f"{cfg.utility_repeats} fresh splits; held-out images score both arms; synthetic "
        "images whose parent is held out are left out of that fold (parentless ones are "
        "kept: their generator saw every train image of the class)"
    )


def pool_size(n_synthetic: int, n_class: int, folds: int) -> int:
    """Classical copies per source image so that any training fold's sources (at least
    n_class - ceil(n_class / folds) images) can match all n_synthetic images."""
    sources = max(1, n_class - math.ceil(n_class / folds))
    return max(1, math.ceil(n_synthetic / sources))


def folds_for(y: np.ndarray, folds: int) -> int:
    """The fold count the smallest class allows (StratifiedKFold needs as many images
    per class as folds); 0 when some class has fewer than 2."""
    smallest = int(np.bincount(y).min()) if len(y) else 0
    k = min(folds, smallest)
    return k if k >= 2 else 0


def _losses(model: LogisticRegression, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    proba = model.predict_proba(x)
    cols = np.searchsorted(model.classes_, y)
    return -np.log(np.clip(proba[np.arange(len(y)), cols], 1e-12, 1.0))


def _project(fit_on: np.ndarray, components: int, *others: np.ndarray) -> list[np.ndarray]:
    """`fit_on` and `others` on the leading principal components of `fit_on`, each
    dimension scaled to unit variance over `fit_on`."""
    dims = max(1, min(components, len(fit_on) - 1, fit_on.shape[1]))
    pca = PCA(n_components=dims, random_state=0).fit(fit_on)
    base = pca.transform(fit_on)
    scale = base.std(0) + 1e-9
    return [base / scale] + [
        pca.transform(a) / scale if len(a) else np.zeros((0, dims)) for a in others
    ]


def _fit(x: np.ndarray, y: np.ndarray) -> LogisticRegression:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return LogisticRegression(C=1.0, max_iter=300, class_weight="balanced").fit(x, y)


def crossfit(
    real_x: np.ndarray,
    real_y: np.ndarray,
    synthetic_x: np.ndarray,
    synthetic_parent: np.ndarray,
    classical_x: np.ndarray,
    classical_source: np.ndarray,
    label: int,
    *,
    folds: int,
    repeats: int,
    components: int,
    seed: int,
) -> dict:
    """The utility of class `label`'s synthetic features over its classical ones.

    Args:
        real_x, real_y: (N, D) features and class indices of every real train image.
        synthetic_x, synthetic_parent: (S, D) the class's synthetic features and each
            one's parent as a row index of real_x (NO_PARENT: none).
        classical_x, classical_source: (C, D) the pool of classical copies of the
            class's real images and each one's source row in real_x.
        folds, repeats: k of the stratified k-fold split and how many fresh splits.
        components: PCA dimensions of the model's input.

    Returns:
        delta (mean per-image loss reduction, classical minus synthetic), ci, p_value,
        sd, mde (the smallest |delta| the interval would resolve with 80 % power),
        n_needed (the image count at which |delta| itself would: the power analysis of
        an inconclusive estimate, assuming the per-image spread holds), n_images,
        n_folds, n_repeats, the arms' mean losses and the mean number of synthetic
        images added per fold; with fewer than 2 folds possible, delta None.
    """
    n = len(real_y)
    k = folds_for(real_y, folds)
    base = {"n_images": n, "n_folds": k, "n_repeats": repeats, "components": components}
    if k == 0 or len(synthetic_x) == 0:
        none = dict.fromkeys(("delta", "ci", "p_value", "sd", "mde", "n_needed"))
        return {**base, **none}
    rng = np.random.default_rng(seed)
    loss = {"synthetic": np.zeros(n), "classical": np.zeros(n)}
    added = []
    for _ in range(repeats):
        split = StratifiedKFold(k, shuffle=True, random_state=int(rng.integers(2**31)))
        for train_idx, held in split.split(np.zeros(n), real_y):
            out = np.zeros(n, dtype=bool)
            out[held] = True
            syn = synthetic_x[(synthetic_parent == NO_PARENT) | ~out[synthetic_parent]]
            pool = np.flatnonzero(~out[classical_source])
            copies = classical_x[rng.choice(pool, len(syn), replace=len(syn) > len(pool))]
            r, v, s, c = _project(real_x[train_idx], components, real_x[held], syn, copies)
            for arm, extra in (("synthetic", s), ("classical", c)):
                x = np.concatenate([r, extra])
                y = np.concatenate([real_y[train_idx], np.full(len(extra), label)])
                loss[arm][held] += _losses(_fit(x, y), v, real_y[held]) / repeats
            added.append(len(syn))
    result = stats.paired(loss["classical"], loss["synthetic"])
    sd = float(np.std(loss["classical"] - loss["synthetic"], ddof=1))
    return {
        **base,
        "delta": result["delta"],
        "ci": result["ci"],
        "p_value": result["p_value"],
        "sd": sd,
        "mde": stats.mde(sd, n),
        # images (all classes, this spread) at which an effect of delta's size resolves
        "n_needed": stats.n_to_resolve(result["delta"], sd),
        "loss_synthetic": float(loss["synthetic"].mean()),
        "loss_classical": float(loss["classical"].mean()),
        "synthetic_per_fold": float(np.mean(added)),
    }
