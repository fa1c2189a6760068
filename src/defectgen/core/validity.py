"""Can this comparison see the value of data at all? The check in front of every verdict.

A protocol in which more real data does not help cannot say whether synthetic data
helps. So before any synthetic-vs-control verdict is read, three things must hold:

1. the upper bound beats the few-shot set: all-train minus real on the primary metric,
   paired over seeds, with its 95 % interval above 0;
2. nothing is budget-bound: no condition's best val check is the last one in most seeds
   (its model was still improving when the budget ran out), and there were at least two
   val checks (with one, convergence cannot be judged);
3. no compared arm is degenerate: each beats the constant predictor (the train split's
   most frequent class) on the primary metric and predicts more than one class in every
   seed.

`check` is the rule; stages record its result and reports quote its statement.
"""

from __future__ import annotations

from defectgen.core import arms, stats

NOT_ALLOWED = "no verdict: this budget cannot measure the value of data here"


def budget_bound(best_steps: list[int], eval_steps: list[int]) -> bool:
    """A condition is budget-bound when its best val check is the last one in most seeds,
    or when it had fewer than two checks (then nothing shows it had levelled off)."""
    if len(eval_steps) < 2:
        return True
    return sum(step == eval_steps[-1] for step in best_steps) > len(best_steps) / 2


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
) -> dict:
    """The validity record of one model's comparison table.

    Args:
        values: per trained condition, per seed, the primary metric on test.
        metric: the primary metric's name.
        constant: the constant predictor's score on that metric.
        bound: per condition, whether it is budget-bound (`budget_bound`).
        classes_predicted: per condition, per seed, how many classes its model predicted
            (classifiers; None where the output has no classes to collapse onto).

    Returns:
        {metric, all_train_minus_real, oracle_minus_real, budget_bound, degenerate,
        verdicts_allowed, reasons, statement}; the differences as {delta, ci, p}.
    """

    def diff(arm: str) -> dict | None:
        if arm not in values or arms.REAL not in values:
            return None
        seeds = sorted(set(values[arm]) & set(values[arms.REAL]))
        r = stats.paired([values[arm][s] for s in seeds], [values[arms.REAL][s] for s in seeds])
        return {"delta": r["delta"], "ci": r["ci"], "p": r["p_value"], "n_seeds": r["n_seeds"]}

    upper = diff(arms.ALL_TRAIN)
    oracles = [arms.oracle_of(a) for a in arms.ADDITIVE]
    oracle = {o: d for o in oracles if (d := diff(o)) is not None}
    stuck = sorted(c for c, b in bound.items() if b)
    broken = {}
    for c, per_seed in values.items():
        mean = sum(per_seed.values()) / len(per_seed)
        predicted = (classes_predicted or {}).get(c, [])
        why = degenerate(mean, predicted, constant)
        if why:
            broken[c] = why
    reasons = []
    if upper is None:
        reasons.append("all-train was not trained, so nothing shows that more data helps")
    elif upper["ci"] is None or upper["ci"][0] <= 0:
        reasons.append(
            f"the whole train split does not beat the few-shot set ({metric} "
            f"{stats.describe({**upper, 'p_value': upper['p']})})"
        )
    if stuck:
        reasons.append(
            f"budget-bound (best val check the last in most seeds, or under two checks): "
            f"{', '.join(stuck)}"
        )
    if broken:
        reasons.append(
            "degenerate: " + "; ".join(f"{c} {why}" for c, why in sorted(broken.items()))
        )
    allowed = not reasons
    if allowed:
        statement = (
            f"More real data helps at this budget (all-train minus real, {metric} "
            f"{stats.describe({**upper, 'p_value': upper['p']})}), nothing is budget-bound "
            "and every arm beats the constant predictor: the comparisons can be read."
        )
    else:
        statement = "This budget cannot measure the value of data here: " + "; ".join(reasons)
    return {
        "metric": metric,
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
