"""The validity check in front of every verdict (defectgen.core.validity), one branch at a
time on constructed numbers."""

from __future__ import annotations

import numpy as np

from defectgen.core import validity

SEEDS = range(5)


def _values(means: dict[str, float], spread: float = 0.005) -> dict[str, dict[int, float]]:
    """Per condition and seed: the mean plus a seed effect shared by every condition and
    a little noise of the condition's own (`spread`)."""
    rng = np.random.default_rng(0)
    shared = rng.normal(0, 0.02, len(SEEDS))
    return {
        name: {s: mean + shared[s] + rng.normal(0, spread) for s in SEEDS}
        for name, mean in means.items()
    }


def _check(values, bound=None, classes=None, constant=0.5):
    return validity.check(
        values,
        metric="accuracy",
        constant=constant,
        classes_predicted=classes or {c: [3] * 5 for c in values},
        bound=bound or {c: False for c in values},
    )


def test_verdicts_are_allowed_when_more_real_data_clearly_helps():
    result = _check(_values({"real": 0.80, "all-train": 0.90, "real+oracle": 0.85}))
    assert result["verdicts_allowed"] and not result["reasons"]
    assert result["all_train_minus_real"]["delta"] > 0.09
    assert result["all_train_minus_real"]["ci"][0] > 0
    assert result["oracle_minus_real"]["real+oracle"]["delta"] > 0.04
    assert result["statement"].startswith("More real data helps at this budget")


def test_an_upper_bound_that_does_not_beat_real_withholds_every_verdict():
    result = _check(_values({"real": 0.80, "all-train": 0.801}, spread=0.01))
    assert not result["verdicts_allowed"]
    assert "does not beat the few-shot set" in result["reasons"][0]
    assert result["statement"].startswith("This budget cannot measure the value of data here")
    missing = _check(_values({"real": 0.80, "real+synthetic": 0.9}))
    assert not missing["verdicts_allowed"] and "all-train was not trained" in missing["reasons"][0]


def test_a_budget_bound_condition_withholds_every_verdict():
    values = _values({"real": 0.80, "all-train": 0.90})
    result = _check(values, bound={"real": False, "all-train": True})
    assert not result["verdicts_allowed"] and result["budget_bound"] == ["all-train"]
    checks = [100, 200]
    assert validity.budget_bound([100, 200, 200], checks)
    assert not validity.budget_bound([100, 200, 150], checks)
    assert not validity.budget_bound([200, 100], checks)  # half the seeds is not most
    assert validity.budget_bound([100], [100])  # one check: convergence cannot be judged
    assert validity.budget_bound([0], [])


def test_an_arm_at_or_below_the_constant_predictor_or_predicting_one_class_is_degenerate():
    values = _values({"real": 0.80, "all-train": 0.90, "real+classical": 0.05})
    result = _check(values)
    assert not result["verdicts_allowed"]
    assert "real+classical" in result["degenerate"]
    assert "constant predictor" in result["degenerate"]["real+classical"]
    one_class = {"real": [3] * 5, "all-train": [3, 3, 1, 3, 3]}
    result = _check(_values({"real": 0.80, "all-train": 0.90}), classes=one_class)
    assert result["degenerate"] == {"all-train": "predicts a single class in at least one seed"}
    assert not result["verdicts_allowed"]


def test_one_seed_gives_no_interval_and_so_no_verdict():
    one = {c: {0: v} for c, v in {"real": 0.80, "all-train": 0.95}.items()}
    result = _check(one)
    assert result["all_train_minus_real"]["ci"] is None and not result["verdicts_allowed"]


def test_arms_without_classes_to_collapse_onto_are_judged_by_score_alone():
    values = _values({"real": 0.40, "all-train": 0.50})
    result = validity.check(
        values, metric="s_measure", constant=0.3, bound={c: False for c in values}
    )
    assert result["verdicts_allowed"] and result["degenerate"] == {}
