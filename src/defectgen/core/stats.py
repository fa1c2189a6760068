"""Paired comparisons: the statistics every condition table reports.

Conditions of one comparison share their seeds (same initialisation, shuffling and
augmentation draws per seed), so the unit of analysis is the per-seed difference
`arm - control`. Its mean gets a two-sided Student-t confidence interval and p-value
(H0: mean difference 0) (`paired`); where every model's prediction on every test image
is kept (the classifiers), `seed_image_bootstrap` widens it to cover the test images,
and `replicate_bootstrap` the replicates of the whole expansion. The claims one table
makes (the synthetic arms' comparisons) are one family: their p-values are
Holm-adjusted together and their verdicts read the adjusted ones; the controls' own
rows keep their intervals. How much of a perfect generator's gain a generator captures
is a ratio of two such means; its interval is a paired bootstrap over seeds.

Pairing: a seed fixes the initialisation and the augmentation and batch-order draws,
so conditions of equal size see the same batches; conditions of different sizes share
the initialisation and the RNG stream but not the batch composition.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from scipy import stats as _scipy

LEVEL = 0.95


def summary(values: Sequence[float]) -> dict:
    """Mean, sample standard deviation (ddof 1; 0.0 for one value) and count."""
    x = np.asarray(values, dtype=float)
    return {
        "mean": float(x.mean()),
        "std": float(x.std(ddof=1)) if len(x) > 1 else 0.0,
        "n": len(x),
    }


def paired(arm: Sequence[float], control: Sequence[float], level: float = LEVEL) -> dict:
    """Mean of `arm - control` over paired seeds, its t interval and two-sided p-value.

    With one seed (or identical differences) the interval is undefined or a point: `ci`
    is None for n < 2; a zero-variance difference gets the point as its interval and p
    0 (any nonzero difference) or 1 (none).
    """
    a, b = np.asarray(arm, dtype=float), np.asarray(control, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"paired needs two equal-length 1-d samples, got {a.shape}, {b.shape}")
    d = a - b
    n, mean = len(d), float(d.mean())
    out = {"delta": mean, "n_seeds": n, "ci": None, "p_value": None}
    if n < 2:
        return out
    sd = float(d.std(ddof=1))
    if sd == 0.0:
        return {**out, "ci": [mean, mean], "p_value": 0.0 if mean != 0.0 else 1.0}
    se = sd / np.sqrt(n)
    t = float(_scipy.t.ppf(0.5 + level / 2, n - 1))
    p = float(2 * _scipy.t.sf(abs(mean) / se, n - 1))
    return {**out, "ci": [float(mean - t * se), float(mean + t * se)], "p_value": p}


CLASSIFIER_METRICS = ("accuracy", "balanced_accuracy", "macro_f1")


def classifier_metric(
    metric: str, predicted: np.ndarray, y: np.ndarray, n_classes: int, weights: np.ndarray
) -> np.ndarray:
    """A classifier metric for every (weight draw, seed): `predicted` (S, N) class ids of
    S models on N test images with true classes `y` (N,), the images counted with
    `weights` (B, N) (ones: the test split as it is; bootstrap counts: a resample).
    Returns (B, S). Per class from weighted counts, as scikit-learn's with
    zero_division=0 and every class in `labels`: accuracy, balanced accuracy (mean
    per-class recall) and macro-F1. (scikit-learn scores one prediction vector at a
    time; a bootstrap needs thousands of resamples of every seed at once.)"""
    truth = np.eye(n_classes)[y]  # (N, K)
    guess = np.eye(n_classes)[predicted]  # (S, N, K)
    w = np.asarray(weights, dtype=float)
    hit = np.einsum("bn,snk->bsk", w, guess * truth[None])  # (B, S, K) weighted true positives
    if metric == "accuracy":
        return hit.sum(-1) / w.sum(1, keepdims=True)
    actual = (w @ truth)[:, None, :]  # (B, 1, K) weighted images per true class
    if metric == "balanced_accuracy":
        recall = np.divide(hit, actual, out=np.zeros_like(hit), where=actual > 0)
        return recall.mean(-1)
    if metric == "macro_f1":
        said = np.einsum("bn,snk->bsk", w, guess)  # (B, S, K) weighted predictions per class
        denom = actual + said
        f1 = np.divide(2 * hit, denom, out=np.zeros_like(hit), where=denom > 0)
        return f1.mean(-1)
    raise ValueError(f"unknown classifier metric {metric!r}; choose from {CLASSIFIER_METRICS}")


def _per_seed(
    a: np.ndarray,
    c: np.ndarray,
    truth: np.ndarray,
    metric: str,
    n_classes: int | None,
    weights: np.ndarray,
) -> np.ndarray:
    """(B, S) metric(arm_s) - metric(control_s) with the test images counted by `weights`
    (B, N): a classifier metric of predicted classes, or else the weighted mean of
    per-image scores (S-measure, Dice, IoU, MAE: a set's score is its images' mean)."""
    if metric in CLASSIFIER_METRICS:
        k = int(n_classes or truth.max() + 1)
        return classifier_metric(metric, a, truth, k, weights) - classifier_metric(
            metric, c, truth, k, weights
        )
    return (weights @ (a - c).T) / weights.sum(1, keepdims=True)


def _seed_image_draws(
    a: np.ndarray,
    c: np.ndarray,
    truth: np.ndarray,
    metric: str,
    n_classes: int | None,
    rng: np.random.Generator,
    n_boot: int,
) -> np.ndarray:
    """(n_boot,) bootstrap draws of mean_s metric(a_s) - metric(c_s): the test images
    resampled within each stratum (`truth`: their true class; shared by every seed and
    both conditions), then the seeds resampled."""
    weights = np.zeros((n_boot, len(truth)))
    for label in np.unique(truth):
        members = np.flatnonzero(truth == label)
        picks = members[rng.integers(0, len(members), (n_boot, len(members)))]
        np.add.at(weights, (np.arange(n_boot)[:, None], picks), 1.0)
    diff = _per_seed(a, c, truth, metric, n_classes, weights)  # (B, S)
    seeds = rng.integers(0, a.shape[0], (n_boot, a.shape[0]))
    return np.take_along_axis(diff, seeds, 1).mean(1)


def _percentile(draws: np.ndarray, floor: dict, level: float, n_boot: int) -> tuple:
    """(interval, p) of bootstrap draws of a difference: the percentile interval and the
    two-sided p (twice the smaller tail's share on either side of 0, at least
    2 / (n_boot + 1)), never narrower than `floor`'s t interval nor below its p (a
    percentile bootstrap over a handful of seeds or replicates is too narrow where they
    disagree: no t quantile, the spread shrunk by (n - 1) / n)."""
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(draws, [tail, 100 - tail])
    below, above = np.sum(draws <= 0) + 1, np.sum(draws >= 0) + 1
    p = min(1.0, 2 * min(below, above) / (n_boot + 1))
    if floor["ci"] is not None:
        lo, hi = min(lo, floor["ci"][0]), max(hi, floor["ci"][1])
        p = max(p, floor["p_value"])
    return [float(lo), float(hi)], float(p)


def seed_image_bootstrap(
    arm: np.ndarray,
    control: np.ndarray,
    y: Sequence[int],
    metric: str,
    n_classes: int | None = None,
    *,
    level: float = LEVEL,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict:
    """The paired difference of two conditions' models on one test split, with an
    interval that covers both the training seeds and the test images.

    `arm`, `control`: (S, N), row s from seed s of each condition (the pairing), column n
    for test image n: for a classifier metric (CLASSIFIER_METRICS) the predicted classes,
    scored against the true classes `y`; for any other metric the per-image scores whose
    mean over the images is the metric (S-measure, Dice, IoU, MAE), with `y` each image's
    class. The difference is the mean over seeds of metric(arm_s) - metric(control_s)
    (the same number the seed-paired t test reports). Each bootstrap draw resamples the
    seeds with replacement and, shared by every seed and both conditions, the test images
    with replacement within each class (so every class keeps its count and balanced
    accuracy its meaning): a two-level bootstrap of seeds and images. The interval is the
    draws' percentile interval, never narrower than the seed-paired t interval (`paired`;
    in a simulated null with 5 seeds and a large seed effect the percentile interval
    alone called 11-15 % of differences significant), and p never below its p. The
    interval is conditional on the run's few-shot draw and generated images: a replicate
    of the whole expansion varies those.

    Returns:
        {delta, ci, p_value, n_seeds, n_images}; ci and p None when the two conditions
        score identically everywhere (nothing varies).
    """
    a, c = np.asarray(arm), np.asarray(control)
    truth = np.asarray(y)
    if a.shape != c.shape or a.ndim != 2 or a.shape[1] != len(truth) or not a.size:
        raise ValueError(
            f"seed_image_bootstrap needs two equal (seeds, images) arrays over "
            f"{len(truth)} test images, got {a.shape} and {c.shape}"
        )
    n_seeds, n_images = a.shape
    per_seed = _per_seed(a, c, truth, metric, n_classes, np.ones((1, n_images)))[0]
    out = {
        "delta": float(per_seed.mean()),
        "n_seeds": n_seeds,
        "n_images": n_images,
        "ci": None,
        "p_value": None,
    }
    if np.array_equal(a, c):
        return out
    draws = _seed_image_draws(a, c, truth, metric, n_classes, np.random.default_rng(seed), n_boot)
    floor = paired(per_seed, np.zeros_like(per_seed), level)
    ci, p = _percentile(draws, floor, level, n_boot)
    return {**out, "ci": ci, "p_value": p}


def replicate_bootstrap(
    replicates: list[tuple[np.ndarray, np.ndarray, Sequence[int]]],
    metric: str,
    n_classes: int | None = None,
    *,
    level: float = LEVEL,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict:
    """A research claim's difference over K replicates of the whole expansion (each with
    its own few-shot draw, generator run and split), with an interval that covers the
    replicates, the seeds and the test images: a three-level bootstrap that resamples the
    replicates, then within each drawn replicate its seeds and its test images (within
    each class), as `seed_image_bootstrap` does for one run; never narrower than the
    t interval over the replicates' own differences.

    `replicates`: per replicate (arm, control, y) as `seed_image_bootstrap` takes them:
    (S, N) arrays of its paired seeds on its N test images, and their classes. The
    difference is the mean over replicates of each replicate's seed-image difference.

    Returns:
        {delta, ci, p_value, n_replicates, per_replicate (each replicate's
        seed_image_bootstrap result), agree_in_sign (every replicate's delta on one side
        of 0)}. A verdict needs the interval to exclude 0 and the replicates to agree.
    """
    if not replicates:
        raise ValueError("replicate_bootstrap needs at least one replicate")
    rng = np.random.default_rng(seed)
    per = [
        seed_image_bootstrap(
            a, c, y, metric, n_classes, level=level, n_boot=n_boot, seed=int(rng.integers(2**31))
        )
        for a, c, y in replicates
    ]
    # (B, K): per bootstrap draw, each replicate's difference with its seeds and images
    # resampled; then the replicates themselves are resampled
    draws = np.stack(
        [
            _seed_image_draws(
                np.asarray(a), np.asarray(c), np.asarray(y), metric, n_classes, rng, n_boot
            )
            for a, c, y in replicates
        ],
        1,
    )
    k = len(replicates)
    chosen = rng.integers(0, k, (n_boot, k))  # the replicates resampled
    total = np.take_along_axis(draws, chosen, 1).mean(1)
    deltas = [r["delta"] for r in per]
    ci, p = _percentile(total, paired(deltas, [0.0] * k, level), level, n_boot)
    if k == 1:  # no spread between replicates to floor by: the one run's own interval,
        ci, p = per[0]["ci"], per[0]["p_value"]  # floored by its seeds' t interval
    return {
        "delta": float(np.mean(deltas)),
        "ci": ci,
        "p_value": p,
        "n_replicates": k,
        "per_replicate": per,
        "agree_in_sign": all(d > 0 for d in deltas) or all(d < 0 for d in deltas),
    }


def mde(sd: float, n: int, level: float = LEVEL, power: float = 0.8) -> float | None:
    """The minimum detectable effect of a one-sample t test on n differences with this
    standard deviation: the true mean whose interval excludes 0 with probability
    `power` (normal-approximation form with t quantiles: (t_{1-a/2} + t_power) sd / sqrt n).
    None for n < 2."""
    if n < 2:
        return None
    t_a = float(_scipy.t.ppf(0.5 + level / 2, n - 1))
    t_b = float(_scipy.t.ppf(power, n - 1))
    return (t_a + t_b) * sd / float(np.sqrt(n))


def n_to_resolve(effect: float, sd: float, level: float = LEVEL, power: float = 0.8) -> int | None:
    """The number of differences (spread `sd`) at which a true mean of `effect` is
    resolved with probability `power`: the smallest n with mde(sd, n) <= |effect| (the
    prospective power analysis behind an inconclusive interval). None when effect is 0."""
    if effect == 0 or not np.isfinite(effect):
        return None
    z = float(_scipy.norm.ppf(0.5 + level / 2) + _scipy.norm.ppf(power))
    n = max(2, math.ceil((z * sd / abs(effect)) ** 2))  # normal approximation: a lower bound
    while mde(sd, n) > abs(effect):  # t quantiles need a few more where n is small
        n += 1
    return n


def verdict(comparison: dict, higher_is_better: bool = True, alpha: float = 1 - LEVEL) -> str:
    """'better' / 'worse' when the comparison is significant, else 'not distinguishable':
    its Holm-adjusted p below `alpha` where it has one (a family), else its interval
    excluding 0. For a metric where lower is better (MAE) a negative difference is
    'better'."""
    ci = comparison["ci"]
    if ci is None:
        return "not distinguishable"
    adjusted = comparison.get("p_adjusted")
    if adjusted is not None and adjusted >= alpha:
        return "not distinguishable"
    if adjusted is None and ci[0] <= 0 <= ci[1]:
        return "not distinguishable"
    if comparison["delta"] == 0:
        return "not distinguishable"
    return "better" if (comparison["delta"] > 0) == higher_is_better else "worse"


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values (family-wise error), in the input's order; None
    (no test) stays None and does not count towards the family. (scipy has only the
    false-discovery-rate adjustment; Holm is six lines.)"""
    tested = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    m = len(tested)
    out: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out


def compare(
    values: dict[str, dict[int, float]],
    questions: list[tuple[str, str]],
    metric: str,
    higher_is_better: bool = True,
    claims: tuple[str, ...] | None = None,
    difference: Callable[[str, str], dict] | None = None,
) -> list[dict]:
    """Paired comparisons of one metric: `values[condition][seed]`, per (arm, control)
    over the seeds both have (`paired`), or by `difference(arm, control)` where the caller
    has a test that sees more than the seeds' means (`seed_image_bootstrap`). Each row
    carries its raw `p_value`; the rows whose arm is in `claims` (every row when None)
    are one family: they carry the Holm-adjusted `p_adjusted` and the verdict read from
    it. The other rows (the controls' own
    diagnostics: classical vs real, all-train vs real) keep `p_adjusted` None and the
    verdict of their interval."""
    out = []
    for arm, control in questions:
        if difference is not None:
            result = difference(arm, control)
        else:
            seeds = sorted(set(values[arm]) & set(values[control]))
            result = paired([values[arm][k] for k in seeds], [values[control][k] for k in seeds])
        out.append({"arm": arm, "control": control, "metric": metric, **result})
    family = [r for r in out if claims is None or r["arm"] in claims]
    tested = sum(r["p_value"] is not None for r in family)
    for row, adjusted in zip(family, holm([r["p_value"] for r in family]), strict=True):
        row["p_adjusted"] = adjusted
        row["family_size"] = tested
    for row in out:
        row.setdefault("p_adjusted", None)
        row.setdefault("family_size", None)
        row["verdict"] = verdict(row, higher_is_better)
    return out


def captured_fraction(
    arm: Sequence[float],
    real: Sequence[float],
    oracle: Sequence[float],
    *,
    level: float = LEVEL,
    n_boot: int = 10_000,
    seed: int = 0,
) -> dict:
    """The generator's gain over the few-shot set as a fraction of the oracle's (as many
    extra *real* images): mean(arm - real) / mean(oracle - real), with a percentile
    bootstrap interval over seeds (resampled jointly, so the pairing is kept).

    The ratio means nothing unless more real data clearly helps: when the oracle's gain
    over real is not resolved above 0 the fraction is None and `why` says so (the
    oracle gain's interval is in the result).
    """
    a, r, o = (np.asarray(v, dtype=float) for v in (arm, real, oracle))
    gain = paired(o, r, level)
    out = {"fraction": None, "ci": None, "oracle_gain": gain, "why": None}
    if gain["ci"] is None or gain["ci"][0] <= 0:
        out["why"] = (
            "more real images (the oracle) do not beat the few-shot set here: no gain to capture"
        )
        return out
    out["fraction"] = float((a - r).mean() / (o - r).mean())
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), (n_boot, len(a)))
    num, den = (a - r)[idx].mean(1), (o - r)[idx].mean(1)
    ok = den > 0
    if ok.mean() < 1 - (1 - level) / 2:  # the denominator's sign is not settled
        out["why"] = "the oracle's gain is too uncertain for an interval on the fraction"
        return out
    ratios = num[ok] / den[ok]
    tail = 100 * (1 - level) / 2
    out["ci"] = [float(np.percentile(ratios, tail)), float(np.percentile(ratios, 100 - tail))]
    return out


def pct(x: float) -> str:
    """An accuracy difference in percentage points, signed: +1.3."""
    return f"{x * 100:+.1f}"


def describe(comparison: dict, *, points: bool = True) -> str:
    """'+1.0 pp [-0.2, +2.2], p 0.09 (Holm 0.3)' (points: the values are fractions, shown in
    pp; the Holm-adjusted p where the comparison belongs to a family)."""
    fmt = pct if points else (lambda v: f"{v:+.3f}")
    unit = " pp" if points else ""
    text = f"{fmt(comparison['delta'])}{unit}"
    if comparison["ci"] is not None:
        lo, hi = comparison["ci"]
        text += f" [{fmt(lo)}, {fmt(hi)}]"
    if comparison["p_value"] is not None:
        text += f", p {p_text(comparison)}"
    return text


def p_text(comparison: dict) -> str:
    """A table's p cell: '0.03 (Holm 0.12)', or '-' without a test."""
    if comparison["p_value"] is None:
        return "-"
    text = f"{comparison['p_value']:.2g}"
    if comparison.get("p_adjusted") is not None:
        text += f" (Holm {comparison['p_adjusted']:.2g})"
    return text
