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
    # the class-matched oracle is the reference where it trained
    assert result["reference"] == "real+oracle"
    assert result["reference_minus_real"] == result["oracle_minus_real"]["real+oracle"]
    assert result["statement"].startswith("The class-matched oracle (as many extra real")
    alone = _check(_values({"real": 0.80, "all-train": 0.90}))
    assert alone["reference"] == "all-train" and alone["verdicts_allowed"]
    assert alone["statement"].startswith("The whole train split helps at this budget")


def test_the_class_matched_oracle_decides_where_all_train_changes_the_class_mix():
    # an imbalanced line: all-train adds mostly defect-free images and does not move
    # balanced accuracy, but as many extra real defect images as the arm adds do
    values = _values({"real": 0.70, "all-train": 0.705, "real+oracle-ungated": 0.76},
                     spread=0.01)  # fmt: skip
    result = _check(values)
    assert result["reference"] == "real+oracle-ungated" and result["verdicts_allowed"]
    assert result["all_train_minus_real"]["ci"][0] <= 0  # kept in the record, not the rule
    flipped = _check(_values({"real": 0.70, "all-train": 0.80, "real+oracle-ungated": 0.701},
                             spread=0.01))  # fmt: skip
    assert not flipped["verdicts_allowed"]
    assert flipped["reasons"][0].startswith("the class-matched oracle (as many extra real")
    assert "does not beat the few-shot set" in flipped["reasons"][0]
    assert "real+oracle-ungated minus real" in flipped["reasons"][0]
    # the gate-passed arm's oracle first, where both trained
    both = {"real", "real+oracle", "real+oracle-ungated", "all-train"}
    assert validity.reference_arm(both) == "real+oracle"
    assert validity.reference_arm({"real", "real+synthetic"}) is None


def test_an_upper_bound_that_does_not_beat_real_withholds_every_verdict():
    result = _check(_values({"real": 0.80, "all-train": 0.801}, spread=0.01))
    assert not result["verdicts_allowed"]
    assert "does not beat the few-shot set" in result["reasons"][0]
    assert result["statement"].startswith("This budget cannot measure the value of data here")
    missing = _check(_values({"real": 0.80, "real+synthetic": 0.9}))
    assert not missing["verdicts_allowed"]
    assert "neither a class-matched oracle nor all-train was trained" in missing["reasons"][0]


def test_a_budget_bound_condition_withholds_every_verdict():
    values = _values({"real": 0.80, "all-train": 0.90})
    result = _check(values, bound={"real": False, "all-train": True})
    assert not result["verdicts_allowed"] and result["budget_bound"] == ["all-train"]


# val curves over eight checks (the selection metric at each)
RISING = [0.50, 0.60, 0.70, 0.75, 0.80, 0.84, 0.87, 0.90]  # still improving at the end
TIE_AT_THE_END = [0.50, 0.60, 0.70, 0.75, 0.80, 0.84, 0.88, 0.88]  # best-val keeps check 7
NEAR_TIE = [0.50, 0.60, 0.70, 0.75, 0.80, 0.84, 0.885, 0.88]  # last within 0.5 pp of best
PLATEAU = [0.50, 0.80, 0.88, 0.88, 0.88, 0.88, 0.88, 0.88]  # reached early, then held
EARLY_PEAK = [0.50, 0.90, 0.85, 0.84, 0.83, 0.82, 0.80, 0.80]  # overfits after check 2


def test_a_curve_still_rising_into_a_tie_with_its_best_is_budget_bound():
    # the old rule (best check == last check) missed both: best-val keeps the first of
    # tied checks, so the kept step is 7 of 8 although the curve had not levelled off
    assert validity.still_rising(RISING)
    assert validity.still_rising(TIE_AT_THE_END)
    assert validity.still_rising(NEAR_TIE)


def test_a_plateau_or_an_early_peak_is_not_budget_bound():
    # the plateau's last check ties its best too, but it got there before the last quarter
    assert not validity.still_rising(PLATEAU)
    assert not validity.still_rising(EARLY_PEAK)
    # a rise within the tolerance at the end is noise on a plateau, not a rising curve
    assert not validity.still_rising([0.5, 0.8, 0.88, 0.88, 0.88, 0.88, 0.88, 0.885])


def test_a_condition_is_budget_bound_when_most_seeds_are_still_rising():
    assert validity.budget_bound([RISING, TIE_AT_THE_END, PLATEAU])
    assert not validity.budget_bound([RISING, PLATEAU])  # half the seeds is not most
    assert not validity.budget_bound([PLATEAU, EARLY_PEAK, TIE_AT_THE_END])
    assert validity.budget_bound([[0.7]])  # one check: convergence cannot be judged
    assert validity.budget_bound([[]])


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


def test_on_a_small_val_split_one_images_rise_at_the_end_is_not_still_rising():
    # 36 val images: accuracy moves in steps of 1/36; a plateau at 34/36 whose last check
    # got one more image right is within the split's resolution
    curve = [k / 36 for k in (20, 30, 33, 34, 34, 34, 34, 34, 34, 35)]
    assert validity.still_rising(curve)  # at the 1-point default it looks like a rise
    assert validity.val_tolerance(36) == 1 / 36
    assert not validity.still_rising(curve, validity.val_tolerance(36))
    # a large split keeps the 1-point default, and a real late rise still counts
    assert validity.val_tolerance(400) == validity.PLATEAU_TOLERANCE
    rising = [k / 36 for k in (10, 14, 18, 22, 25, 28, 30, 32, 34, 35)]
    assert validity.still_rising(rising, validity.val_tolerance(36))
