"""Can this comparison see the value of data at all? The check in front of every verdict.

A protocol in which more real data does not help cannot say whether synthetic data
helps. So before any synthetic-vs-control verdict is read, three things must hold:

1. the upper bound beats the few-shot set: the reference arm (`reference_arm`: the
   class-matched oracle, as many real images per class as the synthetic arm adds, else
   all-train) minus real on the primary metric, paired, with its 95 % interval above 0;
2. nothing is budget-bound: in most seeds no condition's val curve was still rising at
   its last check (the last check within tolerance of the best, and above what the curve
   had reached before its final quarter), and there were at least two val checks (with
   one, convergence cannot be judged);
3. no compared arm is degenerate: each beats the constant predictor (the train split's
   most frequent class) on the primary metric and predicts more than one class in every
   seed.

`check` is the rule; stages record its result and reports quote its statement.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from defectgen.core import arms, stats

NOT_ALLOWED = "no verdict: this budget cannot measure the value of data here"


# How close to a seed's best val score its last check must be to count as "at the best":
# best-val selection keeps the first of tied checks, so a curve still rising into a tie
# keeps an earlier step, and a cosine schedule ends at lr 0, so the last check is rarely
# strictly best. One point of the val metric (1 pp of accuracy, 0.01 Dice or mAP).
PLATEAU_TOLERANCE = 0.01


def val_tolerance(n_val: int) -> float:
    """The tolerance for a val score that counts images (accuracy, balanced accuracy):
    one val image's worth (1 / n_val), at least PLATEAU_TOLERANCE. On 36 val images one
    image moves accuracy by 2.8 pp, so a last check one image above the curve's earlier
    best is within the val split's resolution, not evidence that training still rose."""
    return max(PLATEAU_TOLERANCE, 1 / n_val) if n_val else PLATEAU_TOLERANCE


# The final stretch of checks a curve may still rise in: a seed whose score before it is
# already within tolerance of its best had levelled off before the budget ran out.
TAIL = 0.25


def still_rising(curve: list[float], tolerance: float = PLATEAU_TOLERANCE) -> bool:
    """Whether one seed's val curve was still improving when the budget ran out: its last
    check is within `tolerance` of its best (a tie counts), and the best before the final
    quarter of checks is more than `tolerance` below that last score. A plateau (the
    score reached before the tail and held) is not rising; with under two checks nothing
    shows it had levelled off, so it counts as rising."""
    if len(curve) < 2:
        return True
    last, best = curve[-1], max(curve)
    head = curve[: len(curve) - max(1, math.ceil(TAIL * len(curve)))]
    return last >= best - tolerance and last > max(head) + tolerance


def budget_bound(curves: list[list[float]], tolerance: float = PLATEAU_TOLERANCE) -> bool:
    """A condition is budget-bound when its val curve (the selection metric at each val
    check, one list per seed) was still rising at the last check in most seeds
    (`still_rising`): its model had not levelled off when the budget ran out."""
    return sum(still_rising(c, tolerance) for c in curves) > len(curves) / 2


# what the reference arm's gain shows, by whether it is all-train (True) or an oracle
REFERENCE_SAYS = {
    False: "the class-matched oracle (as many extra real images per class as the arm adds)",
    True: "the whole train split",
}


def reference_arm(trained: set[str]) -> str | None:
    """The upper bound validity reads: does more real data *of the composition the arms
    add* help? The class-matched oracle (as many real images per class as the synthetic
    arm adds, core.arms) where one was trained (the gate-passed arm's first), else
    all-train, else None. all-train alone changes the class mix as well as the amount of
    data: on an imbalanced line it adds mostly defect-free images, which a learner scored
    on balanced accuracy need not gain from although more defect images would help."""
    for arm in arms.ADDITIVE:
        if arms.oracle_of(arm) in trained:
            return arms.oracle_of(arm)
    return arms.ALL_TRAIN if arms.ALL_TRAIN in trained else None


def degenerate(mean_score: float, classes_predicted: list[int], constant: float) -> str | None:
    """Why an arm is degenerate, or None: it does not beat the constant predictor on the
    primary metric, or some seed predicts a single class."""
    if mean_score <= constant:
        return f"scores {mean_score:.3f}, not above the constant predictor's {constant:.3f}"
    if min(classes_predicted, default=2) < 2:
        return "predicts a single class in at least one seed"
    return None


def check(
    values: dict[str, dict[int, float]],
    *,
    metric: str,
    constant: float,
    bound: dict[str, bool],
    classes_predicted: dict[str, list[int]] | None = None,
    difference: Callable[[str, str], dict] | None = None,
) -> dict:
    """The validity record of one model's comparison table.

    Args:
        values: per trained condition, per seed, the primary metric on test.
        metric: the primary metric's name.
        constant: the constant predictor's score on that metric.
        bound: per condition, whether it is budget-bound (`budget_bound`).
        classes_predicted: per condition, per seed, how many classes its model predicted
            (classifiers; None where the output has no classes to collapse onto).
        difference: the paired test of (arm, control) where the caller has one that sees
            more than the seeds' means (core.stats.seed_image_bootstrap); default the
            seed-paired t test on `values`.

    Returns:
        {metric, reference, reference_minus_real, all_train_minus_real, oracle_minus_real,
        constant_predictor, budget_bound, degenerate, verdicts_allowed, reasons,
        statement}; the differences as {delta, ci, p, n_seeds}.
    """

    def diff(arm: str) -> dict | None:
        if arm not in values or arms.REAL not in values:
            return None
        if difference is not None:
            r = difference(arm, arms.REAL)
        else:
            seeds = sorted(set(values[arm]) & set(values[arms.REAL]))
            r = stats.paired([values[arm][s] for s in seeds], [values[arms.REAL][s] for s in seeds])
        return {"delta": r["delta"], "ci": r["ci"], "p": r["p_value"], "n_seeds": r["n_seeds"]}

    upper = diff(arms.ALL_TRAIN)
    oracles = [arms.oracle_of(a) for a in arms.ADDITIVE]
    oracle = {o: d for o in oracles if (d := diff(o)) is not None}
    reference = reference_arm(set(values))
    gain = diff(reference) if reference else None
    stuck = sorted(c for c, b in bound.items() if b)
    broken = {}
    for c, per_seed in values.items():
        mean = sum(per_seed.values()) / len(per_seed)
        predicted = (classes_predicted or {}).get(c, [])
        why = degenerate(mean, predicted, constant)
        if why:
            broken[c] = why
    reasons = []
    words = metric.replace("_", " ")  # the statement is read by people: no metric keys
    if gain is None:
        reasons.append(
            "neither a class-matched oracle nor all-train was trained, so nothing shows that "
            "more data helps"
        )
    elif gain["ci"] is None or gain["ci"][0] <= 0:
        reasons.append(
            f"{REFERENCE_SAYS[reference == arms.ALL_TRAIN]} does not beat the few-shot set "
            f"({reference} minus real, {words} {stats.describe({**gain, 'p_value': gain['p']})})"
        )
    if stuck:
        reasons.append(
            f"budget-bound (val score still rising at the last check in most seeds, or "
            f"under two checks): "
            f"{', '.join(stuck)}"
        )
    if broken:
        reasons.append(
            "degenerate: " + "; ".join(f"{c} {why}" for c, why in sorted(broken.items()))
        )
    allowed = not reasons
    if allowed:
        statement = (
            f"{REFERENCE_SAYS[reference == arms.ALL_TRAIN].capitalize()} helps at this "
            f"budget ({reference} minus real, {words} "
            f"{stats.describe({**gain, 'p_value': gain['p']})}), nothing is budget-bound "
            "and every arm beats the constant predictor: the comparisons can be read."
        )
    else:
        statement = "This budget cannot measure the value of data here: " + "; ".join(reasons)
    return {
        "metric": metric,
        "reference": reference,
        "reference_minus_real": gain,
        "all_train_minus_real": upper,
        "oracle_minus_real": oracle,
        "constant_predictor": constant,
        "budget_bound": stuck,
        "degenerate": broken,
        "verdicts_allowed": allowed,
        "reasons": reasons,
        "statement": statement,
    }


def withhold(rows: list[dict], check: dict) -> list[dict]:
    """Comparison rows as they may be read: without a passed check each verdict becomes
    NOT_ALLOWED (the numbers stay)."""
    if check["verdicts_allowed"]:
        return rows
    return [{**r, "verdict": NOT_ALLOWED} for r in rows]


def answer(about: str, check: dict, finding: str) -> str:
    """A headline: "<about>: <finding>" when verdicts are allowed, else the check's
    statement in place of the finding."""
    return f"{about}: {finding if check['verdicts_allowed'] else check['statement']}"
