"""Do a class's synthetic images do no harm? The gate's question, answered on val.

Two arms train the same small judge, paired by seed:

    synthetic   every real train image (the images the generator learned from) plus
                the class's synthetic images that passed the fidelity floors
    classical   every real train image plus as many classical copies of the class's
                own train images (core.augment: the value protocol's control), drawn
                per seed from a pool made once

Each model predicts every val image (the gate's half of each class's val images: the
sweep chose its cell on the other half; the test split is never read), and
core.stats.seed_image_bootstrap gives the paired difference in the run's primary metric
(synthetic - classical) with an interval over the seeds and the val images, never
narrower than the rule of three's resolution (3 / n per class, `no_discordance_bound`)
on either side of the estimate: a handful of val images cannot show more. That is
the harness of the value protocol (core.harness) at the gate's scale: the judge is a
multinomial logistic regression on the gate's extractor features (EfficientNet-Lite0
unless Inception is configured), projected on the leading principal components of the
real train features, class-balanced (fast and convex: it converges at any size, so
seeds vary only the classical draw). The run's own verdict judge (train.model) is
another network (EfficientNet-Lite2 by default), so the test verdict is never read by
the network that scored the gate.

`answer` turns the interval into the gate's three words (non-inferiority):

    fail          the upper bound is below 0 (gate.harm "any": a significant loss) or
                  below -margin (gate.harm "beyond_margin")
    pass          the lower bound is above -margin: whatever the images cost, it is less
                  than the margin the user accepts
    inconclusive  neither

and superiority (the lower bound above 0) beside it, which promotes an adapter.
`check` answers one set of added classes at once: one class (its own verdict) or every
class whose images passed the floors (the pooled, dataset-level verdict).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

from defectgen.config import GateConfig
from defectgen.core import stats

VERDICTS = ("pass", "fail", "inconclusive")  # the gate's one vocabulary


@dataclass(frozen=True)
class Added:
    """What the two arms add for one class: its synthetic features (S, D) and a pool of
    classical copies of its real train images (P, D), P >= S."""

    synthetic: np.ndarray
    classical: np.ndarray


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


def _predict(x: np.ndarray, y: np.ndarray, val_x: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = LogisticRegression(C=1.0, max_iter=300, class_weight="balanced").fit(x, y)
    return model.predict(val_x)


def check(
    real_x: np.ndarray,
    real_y: np.ndarray,
    val_x: np.ndarray,
    val_y: np.ndarray,
    added: dict[int, Added],
    *,
    metric: str,
    n_classes: int,
    seeds: int,
    components: int,
    seed: int,
) -> dict:
    """Real plus `added`'s synthetic images against real plus as many classical copies.

    Args:
        real_x, real_y: (N, D) features and class indices of every real train image.
        val_x, val_y: (V, D) features and classes of the val images the arms are scored on.
        added: per class index, what each arm adds (every class at once: pooled).
        metric: a core.stats.CLASSIFIER_METRICS name.
        seeds: paired seeds (each draws the classical copies afresh).

    Returns:
        core.stats.seed_image_bootstrap's {delta, ci, p_value, n_seeds, n_images} of
        synthetic - classical, plus n_added (images per arm) and the metric's name.
    """
    rng = np.random.default_rng(seed)
    syn = np.concatenate([a.synthetic for a in added.values()])
    syn_y = np.concatenate([np.full(len(a.synthetic), c) for c, a in added.items()])
    # one projection of everything (the PCA of the real train features), reused per seed
    real_p, val_p, syn_p, *pools = _project(
        real_x, components, val_x, syn, *(a.classical for a in added.values())
    )
    x_syn = np.concatenate([real_p, syn_p])
    y_extra = np.concatenate([real_y, syn_y])
    synthetic_arm = _predict(x_syn, y_extra, val_p)  # deterministic: one fit serves every seed
    arm, control = [], []
    for _ in range(seeds):
        copies = [
            pool[rng.choice(len(pool), len(a.synthetic), replace=False)]
            for pool, a in zip(pools, added.values(), strict=True)
        ]
        control.append(_predict(np.concatenate([real_p, *copies]), y_extra, val_p))
        arm.append(synthetic_arm)
    result = stats.seed_image_bootstrap(
        np.array(arm), np.array(control), val_y, metric, n_classes, seed=seed % 2**31
    )
    result = {**result, "metric": metric, "n_added": int(len(syn)), "interval": "bootstrap"}
    bound = no_discordance_bound(val_y, metric)
    if result["ci"] is None:  # no val image told the arms apart: the bootstrap has no spread
        result.update(ci=[-bound, bound], interval="rule of three")
    elif result["ci"][0] > result["delta"] - bound or result["ci"][1] < result["delta"] + bound:
        # A few discordant val images make the bootstrap too narrow as well: on SD-Saliency-
        # 900's 17 gate-half val images it read +4.1 pp [+0.0, +14.1] for a class whose
        # images cost -1.3 pp [-2.6, -0.2] on test. The interval is never narrower than the
        # rule of three's resolution on either side of the estimate.
        lo, hi = result["ci"]
        result.update(
            ci=[min(lo, result["delta"] - bound), max(hi, result["delta"] + bound)],
            interval="bootstrap, widened to the rule of three",
        )
    return result


def no_discordance_bound(val_y: np.ndarray, metric: str) -> float:
    """The largest difference in `metric` still consistent (95 %) with no val image on
    which the arms disagreed: by the rule of three, the rate of such images in a class of
    n can be up to 3 / n. Accuracy weighs the classes by their counts (3 / V over all V
    images); balanced accuracy and macro F1 average the classes (the mean of 3 / n_c).
    The bootstrap cannot say this: with no disagreement every draw is 0."""
    counts = np.bincount(np.asarray(val_y))
    counts = counts[counts > 0]
    if metric == "accuracy":
        return float(min(1.0, 3.0 / counts.sum()))
    return float(np.mean(np.minimum(1.0, 3.0 / counts)))


def judge_words(cfg: GateConfig, metric: str) -> str:
    """The check's design in words (gate.json, the report)."""
    return (
        f"real + the class's images vs real + as many classical copies of its train images: "
        f"a class-balanced logistic regression on {cfg.judge_components} PCA dimensions of "
        f"the gate's extractor features, {cfg.seeds} paired seeds (each draws the classical "
        f"copies afresh), val {metric.replace('_', ' ')} on the gate's half of val, 95 % "
        f"interval over seeds and val images; pass: lower bound above -{pp(cfg.margin)}"
    )


def half_width(result: dict) -> float:
    """Half the interval's width: the loss this check can tell from none."""
    return (result["ci"][1] - result["ci"][0]) / 2


def answer(result: dict, *, margin: float, harm: str) -> str:
    """pass | fail | inconclusive from the interval (module docstring)."""
    lo, hi = result["ci"]
    if hi < (0.0 if harm == "any" else -margin):
        return "fail"
    if lo > -margin:
        return "pass"
    return "inconclusive"


def superior(result: dict) -> bool:
    """The synthetic images did better than the classical copies on val (lower bound > 0)."""
    return bool(result["ci"][0] > 0)


def pp(x: float) -> str:
    return f"{100 * x:.1f} pp"


def interval_text(result: dict | None) -> str:
    """'+1.2 pp [-3.0, +5.4]': a check's difference and interval in points ('-': none)."""
    if result is None:
        return "-"
    lo, hi = result["ci"]
    return f"{100 * result['delta']:+.1f} pp [{100 * lo:+.1f}, {100 * hi:+.1f}]"


def describe(result: dict, *, margin: float) -> str:
    """What the check found, signs said once in words, and what it can resolve."""
    delta = result["delta"]
    name = result["metric"].replace("_", " ")
    side = "higher" if delta > 0 else "lower" if delta < 0 else "no different"
    found = (
        f"val {name} {pp(abs(delta))} {side} with the synthetic images than with as many "
        "classical copies"
        if delta
        else f"val {name} no different with the synthetic images than with as many classical copies"
    )
    lo, hi = result["ci"]
    how = (
        "the two arms predicted every val image alike, so by the rule of three"
        if result["interval"] == "rule of three"
        else "95 % interval"
    )
    return (
        f"{found} ({how} {100 * lo:+.1f} to {100 * hi:+.1f} pp over {result['n_seeds']} "
        f"seeds and {result['n_images']} val images; with these it can tell a loss of "
        f"{pp(half_width(result))} or more, and the margin accepted is {pp(margin)})"
    )


def what_would_change(verdict: str, result: dict, *, margin: float) -> str:
    """The action that could move an undecided or failed verdict."""
    if verdict == "pass":
        return ""
    h = half_width(result)
    if verdict == "fail":
        return "better images would: a longer finetune, another sweep cell or another method"
    if h > margin:
        return (
            f"not resolvable at this dataset size: the interval is +-{pp(h)}, wider than the "
            f"{pp(margin)} margin; more val images (or a wider gate.margin, if that loss is "
            "acceptable) would decide it"
        )
    return "more generated images, or a longer finetune, would move the estimate"
