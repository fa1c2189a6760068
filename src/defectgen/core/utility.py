"""Utility on val: do a class's synthetic images help a classifier more than as many
classical augmentations of its real images? A fast proxy the gate can afford.

The proxy is a multinomial logistic regression on the gate's image features (projected
on the leading principal components of the real train features): cheap enough to fit
many times per class. For one class c and a training seed:

    real        every class's real train images (the ones the generator learned from),
                resampled with replacement by the seed (the same draw in both arms)
    synthetic   + c's synthetic images that passed the fidelity filters
    classical   + as many classical copies of c's real train images

Each arm's model gives every image of the held-out reference (the gate's half of val)
a loss (negative log-likelihood of its true class). Averaged over the seeds, the
per-image difference `classical - synthetic` is the utility of c's synthetic images
on that image; its mean over the reference images gets a 95 % t interval over images
(core.stats.paired): the images are the sample the conclusion generalises over, the
seeds only average out the training draw. Verdict: `pass` when the interval is above
0, `fail` when below, `inconclusive` otherwise.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

from defectgen.core import stats


def _losses(model: LogisticRegression, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    proba = model.predict_proba(x)
    cols = np.searchsorted(model.classes_, y)
    return -np.log(np.clip(proba[np.arange(len(y)), cols], 1e-12, 1.0))


def utility(
    real_x: np.ndarray,
    real_y: np.ndarray,
    synthetic_x: np.ndarray,
    classical_x: np.ndarray,
    label: int,
    val_x: np.ndarray,
    val_y: np.ndarray,
    *,
    seeds: int,
    components: int,
    seed: int,
) -> dict:
    """The utility of class `label`'s synthetic features over its classical ones.

    Returns:
        delta (mean per-image loss reduction, classical minus synthetic: > 0 means the
        synthetic images help more), ci, p_value, n_images (reference images), n_seeds,
        verdict (pass / fail / inconclusive), and the arms' mean losses.
    """
    if len(synthetic_x) != len(classical_x):
        raise ValueError("the arms must add as many images each")
    k = max(1, min(components, len(real_x) - 1, real_x.shape[1]))
    pca = PCA(n_components=k, random_state=0).fit(real_x)
    project = lambda a: pca.transform(a) if len(a) else np.zeros((0, k))  # noqa: E731
    r, s, c, v = project(real_x), project(synthetic_x), project(classical_x), project(val_x)
    scale = r.std(0) + 1e-9
    r, s, c, v = r / scale, s / scale, c / scale, v / scale
    rng = np.random.default_rng(seed)
    loss = {"synthetic": np.zeros(len(v)), "classical": np.zeros(len(v))}
    for _ in range(seeds):
        pick = rng.integers(0, len(r), len(r))
        extra = rng.integers(0, len(s), len(s))
        for arm, added in (("synthetic", s), ("classical", c)):
            x = np.concatenate([r[pick], added[extra]])
            y = np.concatenate([real_y[pick], np.full(len(extra), label)])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                model = LogisticRegression(C=1.0, max_iter=300).fit(x, y)
            loss[arm] += _losses(model, v, val_y) / seeds
    result = stats.paired(loss["classical"], loss["synthetic"])
    verdict = {"better": "pass", "worse": "fail"}.get(stats.verdict(result), "inconclusive")
    return {
        "delta": result["delta"],
        "ci": result["ci"],
        "p_value": result["p_value"],
        "n_images": len(v),
        "n_seeds": seeds,
        "verdict": verdict,
        "loss_synthetic": float(loss["synthetic"].mean()),
        "loss_classical": float(loss["classical"].mean()),
        "components": k,
    }
