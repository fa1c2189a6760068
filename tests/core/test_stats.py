"""Paired statistics, the matched controls and the step budget, on hand-checkable cases."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from defectgen.core import arms, stats
from defectgen.core.train_budget import batches, eval_steps


def test_paired_t_interval_and_p_match_the_textbook_case():
    # differences 1..5: mean 3, sd sqrt(2.5), se 0.7071; t(0.975, 4) = 2.776 (tables),
    # t = 4.243 -> two-sided p = 0.0132
    arm, control = [11.0, 12.0, 13.0, 14.0, 15.0], [10.0] * 5
    result = stats.paired(arm, control)
    assert result["delta"] == pytest.approx(3.0) and result["n_seeds"] == 5
    assert result["ci"] == pytest.approx([3 - 2.776 * 0.7071, 3 + 2.776 * 0.7071], abs=2e-3)
    assert result["p_value"] == pytest.approx(0.0132, abs=5e-4)
    assert stats.verdict(result) == "better"
    assert stats.verdict(stats.paired(control, arm)) == "worse"
    # the same difference measured where lower is better (MAE) is a loss
    assert stats.verdict(result, higher_is_better=False) == "worse"


def test_paired_says_not_distinguishable_when_the_interval_spans_zero():
    result = stats.paired([0.70, 0.74, 0.71, 0.75], [0.72, 0.72, 0.73, 0.72])
    assert result["ci"][0] < 0 < result["ci"][1] and result["p_value"] > 0.5
    assert stats.verdict(result) == "not distinguishable"
    one = stats.paired([0.8], [0.7])  # one seed: a difference, no interval
    assert one["ci"] is None and one["p_value"] is None
    assert stats.verdict(one) == "not distinguishable"
    with pytest.raises(ValueError, match="equal-length"):
        stats.paired([1.0, 2.0], [1.0])


def test_pairing_removes_the_seed_effect_an_unpaired_test_would_keep():
    rng = np.random.default_rng(0)
    seed_effect = rng.normal(0, 0.05, 15)  # large run-to-run spread shared by both arms
    control = 0.70 + seed_effect
    arm = control + 0.01 + rng.normal(0, 0.002, 15)  # +1 pp, consistently
    result = stats.paired(arm, control)
    assert stats.verdict(result) == "better" and result["ci"][1] - result["ci"][0] < 0.01
    s = stats.summary(control)
    assert s["std"] == pytest.approx(np.std(control, ddof=1)) and s["n"] == 15


def test_captured_fraction_of_the_oracle_gain_over_real():
    rng = np.random.default_rng(1)
    real = 0.70 + rng.normal(0, 0.01, 12)
    oracle = real + 0.04 + rng.normal(0, 0.003, 12)
    perfect = stats.captured_fraction(oracle, real, oracle)
    assert perfect["fraction"] == pytest.approx(1.0) and perfect["ci"][0] <= 1.0 <= perfect["ci"][1]
    half = stats.captured_fraction(real + 0.02, real, oracle)
    assert half["fraction"] == pytest.approx(0.02 / np.mean(oracle - real))
    assert half["ci"][0] < half["fraction"] < half["ci"][1] < 1.0
    # an arm that merely matches real captures nothing (the old denominator, oracle minus
    # a damaged classical arm, would have credited it with the classical arm's deficit)
    assert stats.captured_fraction(real, real, oracle)["fraction"] == pytest.approx(0.0)
    # no gain to capture: more real images do not beat the few-shot set
    flat = stats.captured_fraction(real + 0.01, real, real + rng.normal(0, 0.01, 12))
    assert flat["fraction"] is None and "do not beat the few-shot set" in flat["why"]


def test_holm_adjusts_step_down_and_keeps_order():
    # sorted 0.01, 0.02, 0.03, 0.04 over m = 4: 0.04, 0.06, 0.06 (monotone), 0.06
    adjusted = stats.holm([0.03, None, 0.01, 0.04, 0.02])
    assert adjusted[1] is None
    assert adjusted[2] == pytest.approx(0.04) and adjusted[4] == pytest.approx(0.06)
    assert adjusted[0] == pytest.approx(0.06) and adjusted[3] == pytest.approx(0.06)
    assert stats.holm([0.9, 0.8]) == [pytest.approx(1.0), pytest.approx(1.0)]


def test_a_family_of_comparisons_reads_its_verdicts_from_holm_adjusted_p():
    rng = np.random.default_rng(3)
    base = 0.7 + rng.normal(0, 0.02, 6)
    values = {
        "real": dict(enumerate(base)),
        "strong": dict(enumerate(base + 0.05 + rng.normal(0, 0.005, 6))),
        # alone its interval excludes 0 (p about 0.03); among 8 questions it does not pass
        "weak": dict(enumerate(base + np.array([0.012, 0.004, 0.016, 0.002, 0.01, 0.006]))),
    }
    for i in range(6):
        values[f"null{i}"] = dict(enumerate(base + rng.normal(0, 0.01, 6)))
    questions = [(c, "real") for c in values if c != "real"]
    rows = {r["arm"]: r for r in stats.compare(values, questions, "accuracy")}
    weak = rows["weak"]
    assert weak["ci"][0] > 0 and weak["p_value"] < 0.05 <= weak["p_adjusted"]
    assert weak["verdict"] == "not distinguishable" and weak["family_size"] == 8
    assert rows["strong"]["verdict"] == "better" and rows["strong"]["p_adjusted"] < 0.05
    # only the claims are a family: here "weak" alone among 3, and the others keep their
    # intervals' verdicts
    claims = ("weak", "null0", "null1")
    rows = {r["arm"]: r for r in stats.compare(values, questions, "accuracy", claims=claims)}
    assert rows["weak"]["family_size"] == 3 and rows["strong"]["p_adjusted"] is None
    weak = rows["weak"]
    assert weak["p_value"] <= weak["p_adjusted"] <= 3 * weak["p_value"]  # Holm over 3
    assert rows["strong"]["verdict"] == "better"  # its interval excludes 0


def test_describe_writes_points_and_intervals():
    c = {"delta": 0.01, "ci": [-0.002, 0.022], "p_value": 0.09}
    assert stats.describe(c) == "+1.0 pp [-0.2, +2.2], p 0.09"
    assert stats.describe(c, points=False) == "+0.010 [-0.002, +0.022], p 0.09"
    assert stats.describe({**c, "p_adjusted": 0.27}) == "+1.0 pp [-0.2, +2.2], p 0.09 (Holm 0.27)"
    assert stats.p_text({**c, "p_adjusted": 0.27}) == "0.09 (Holm 0.27)"


def _rows(label: str, n: int, start: int = 0) -> list[dict]:
    return [{"id": f"{label}{i}", "label": label} for i in range(start, start + n)]


def test_classical_sources_are_used_evenly_and_matched_per_class():
    subset = _rows("a", 4) + _rows("b", 3)
    picked = arms.draw_classical(subset, {"a": 10, "b": 2}, np.random.default_rng(0))
    per_class = Counter(r["label"] for r in picked)
    assert per_class == {"a": 10, "b": 2}
    uses = Counter(r["id"] for r in picked if r["label"] == "a")
    assert set(uses) == {"a0", "a1", "a2", "a3"} and max(uses.values()) - min(uses.values()) <= 1
    assert len({r["id"] for r in picked if r["label"] == "b"}) == 2  # no repeat before all used


def test_oracle_draws_distinct_images_and_reports_what_it_lacks():
    outside = _rows("a", 5) + _rows("b", 2)
    picked, short = arms.draw_oracle(outside, {"a": 3, "b": 4}, np.random.default_rng(0))
    assert len({r["id"] for r in picked}) == len(picked) == 3 + 2
    assert short == {"b": 2}


def test_plan_pairs_every_arm_with_its_controls():
    plan = arms.plan(["real+synthetic", "real+ungated", "substitution"], oracle=True)
    assert list(plan) == [
        "real", "real+synthetic", "real+classical", "real+oracle", "real+ungated",
        "real+classical-ungated", "real+oracle-ungated", "substitution", "all-train", "majority",
    ]  # fmt: skip
    assert plan["real+classical-ungated"] == "real+ungated" and plan["real+synthetic"] is None
    assert "real+oracle" not in arms.plan(["real+synthetic"], oracle=False)
    trained = set(plan) - {"real+synthetic", "real+classical", "real+oracle"}
    asked = arms.questions(plan, trained)
    assert ("real+ungated", "real+classical-ungated") in asked
    assert ("real+oracle-ungated", "real+classical-ungated") in asked
    assert ("substitution", "all-train") in asked
    assert all(a in trained and c in trained for a, c in asked)


def test_step_budget_is_exact_whatever_the_set_size():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        small = list(batches(10, 4, 25))
        big = list(batches(1000, 4, 25))
    assert len(small) == len(big) == 25 and all(len(b) == 4 for b in small + big)
    # the small set cycles through whole permutations: after 10 steps (4 epochs of 10),
    # every index has been drawn exactly 4 times
    counts = Counter(torch.cat(small[:10]).tolist())
    assert set(counts) == set(range(10)) and set(counts.values()) == {4}
    assert eval_steps(240, 8) == [30, 60, 90, 120, 150, 180, 210, 240]
    assert eval_steps(3, 8) == [1, 2, 3] and eval_steps(1, 1) == [1]


def _predictions(rng, n_seeds: int, y: np.ndarray, right: float, n_classes: int) -> np.ndarray:
    """(seeds, images) predictions: the true class with probability `right`, else another."""
    wrong = (y + rng.integers(1, n_classes, (n_seeds, len(y)))) % n_classes
    return np.where(rng.random((n_seeds, len(y))) < right, y, wrong)


@pytest.mark.parametrize("metric", stats.CLASSIFIER_METRICS)
def test_classifier_metrics_on_the_whole_test_split_match_scikit_learn(metric):
    from defectgen.core import classify

    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 50)
    y[:3] = [0, 1, 2]
    pred = _predictions(rng, 4, y, 0.6, 3)
    pred[0, :] = 1  # a seed that predicts one class (zero-division cases)
    ours = stats.classifier_metric(metric, pred, y, 3, np.ones((1, len(y))))[0]
    labels = ["a", "b", "c"]
    theirs = [getattr(classify.evaluate(y.tolist(), p.tolist(), labels), metric) for p in pred]
    assert ours == pytest.approx(theirs)


def test_the_seed_image_interval_sees_test_image_noise_a_seed_t_interval_misses():
    # every seed's arm fixes the same 2 of 40 test images: the seed-paired t test sees a
    # zero-variance +5 pp and calls it significant; 2 images are no evidence
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 20)
    control = np.tile(np.where(rng.random(40) < 0.75, y, 1 - y), (5, 1))
    arm = control.copy()
    fixed = np.flatnonzero(control[0] != y)[:2]
    arm[:, fixed] = y[fixed]
    seeds_only = stats.paired(
        stats.classifier_metric("accuracy", arm, y, 2, np.ones((1, 40)))[0],
        stats.classifier_metric("accuracy", control, y, 2, np.ones((1, 40)))[0],
    )
    assert seeds_only["delta"] == pytest.approx(0.05) and stats.verdict(seeds_only) == "better"
    both = stats.seed_image_bootstrap(arm, control, y, "accuracy", 2)
    assert both["delta"] == pytest.approx(0.05) and both["n_images"] == 40
    assert both["ci"][0] <= 0 < 0.05 < both["ci"][1] and both["p_value"] > 0.05
    assert stats.verdict(both) == "not distinguishable"


def test_the_seed_image_interval_resolves_a_gain_spread_over_many_images_and_seeds():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 600)
    control = _predictions(rng, 5, y, 0.70, 2)
    arm = _predictions(rng, 5, y, 0.80, 2)
    result = stats.seed_image_bootstrap(arm, control, y, "balanced_accuracy", 2)
    assert 0 < result["ci"][0] < result["delta"] < result["ci"][1] and result["p_value"] < 0.01
    assert stats.verdict(result) == "better"
    same = stats.seed_image_bootstrap(control, control, y, "accuracy", 2)
    assert same["delta"] == 0 and same["ci"] is None
    assert stats.verdict(same) == "not distinguishable"
    with pytest.raises(ValueError, match="equal"):
        stats.seed_image_bootstrap(arm, control[:, :10], y, "accuracy", 2)


def test_the_seed_image_interval_widens_with_the_seed_spread():
    # the same per-image picture, but one condition's seeds disagree among themselves
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 400)
    control = _predictions(rng, 6, y, 0.7, 2)
    steady = _predictions(rng, 6, y, 0.75, 2)
    shaky = np.concatenate([_predictions(rng, 3, y, 0.6, 2), _predictions(rng, 3, y, 0.9, 2)])
    narrow = stats.seed_image_bootstrap(steady, control, y, "accuracy", 2)
    wide = stats.seed_image_bootstrap(shaky, control, y, "accuracy", 2)
    assert wide["ci"][1] - wide["ci"][0] > 2 * (narrow["ci"][1] - narrow["ci"][0])


def test_replicates_that_agree_give_a_claim_and_ones_that_disagree_do_not():
    rng = np.random.default_rng(4)

    def replicate(gain: float) -> tuple:
        y = rng.integers(0, 2, 300)
        return _predictions(rng, 5, y, 0.70 + gain, 2), _predictions(rng, 5, y, 0.70, 2), y

    agree = stats.replicate_bootstrap([replicate(0.12) for _ in range(3)], "accuracy", 2)
    assert agree["n_replicates"] == 3 and agree["agree_in_sign"]
    assert 0 < agree["ci"][0] < agree["delta"] < agree["ci"][1]
    assert agree["delta"] == pytest.approx(np.mean([r["delta"] for r in agree["per_replicate"]]))
    # each replicate resolves its own difference, but they point different ways: the
    # spread between replicates (generator runs, few-shot draws) enters the interval
    split = stats.replicate_bootstrap([replicate(g) for g in (0.12, -0.12, 0.02)], "accuracy", 2)
    assert not split["agree_in_sign"]
    assert all(r["ci"][0] > 0 or r["ci"][1] < 0 for r in split["per_replicate"][:2])
    assert split["ci"][0] < 0 < split["ci"][1]
    widest_single = max(r["ci"][1] - r["ci"][0] for r in split["per_replicate"])
    assert split["ci"][1] - split["ci"][0] > widest_single


def test_one_replicate_reads_as_its_own_run_with_the_seeds_t_floor():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 300)
    # 3 seeds that disagree: the seeds' t interval is wider than the bootstrap's
    arm = np.concatenate([_predictions(rng, 2, y, 0.9, 2), _predictions(rng, 1, y, 0.6, 2)])
    one = (arm, _predictions(rng, 3, y, 0.7, 2), y)
    alone = stats.seed_image_bootstrap(*one, "accuracy", 2)
    claim = stats.replicate_bootstrap([one], "accuracy", 2)
    assert (claim["ci"], claim["p_value"]) == (alone["ci"], alone["p_value"])


def test_the_seed_image_interval_is_never_narrower_than_the_seeds_own_t_interval():
    # five seeds that disagree a lot, on many images: the percentile bootstrap over five
    # values alone would be too narrow; the seeds' t interval bounds it
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 2000)
    control = _predictions(rng, 5, y, 0.7, 2)
    arm = np.stack([_predictions(rng, 1, y, r, 2)[0] for r in (0.62, 0.78, 0.66, 0.80, 0.69)])
    both = stats.seed_image_bootstrap(arm, control, y, "accuracy", 2)
    per_seed = [np.mean(arm[s] == y) - np.mean(control[s] == y) for s in range(5)]
    seeds = stats.paired(per_seed, [0.0] * 5)
    assert both["delta"] == pytest.approx(seeds["delta"])
    assert both["ci"][0] <= seeds["ci"][0] and both["ci"][1] >= seeds["ci"][1]
    assert both["p_value"] >= seeds["p_value"]


def test_per_image_scores_resample_the_images_too():
    # a segmenter's per-image Dice: better on half the images by 0.20, worse on the other
    # half by 0.18, alike in every seed: the seeds agree exactly, the images do not
    rng = np.random.default_rng(6)
    strata = np.repeat([0, 1], 30)
    control = np.tile(rng.uniform(0.3, 0.7, 60), (5, 1)) + rng.normal(0, 0.001, (5, 60))
    mixed = control + np.where(np.arange(60) % 2, 0.20, -0.18)
    result = stats.seed_image_bootstrap(mixed, control, strata, "dice")
    assert result["delta"] == pytest.approx(0.01, abs=1e-3)  # the mean per-image difference
    assert result["ci"][0] < 0 < result["ci"][1] and result["ci"][1] - result["ci"][0] > 0.05
    # the same mean gain spread evenly over the images resolves
    steady = control + 0.01 + np.tile(rng.normal(0, 0.01, 60), (5, 1))
    resolved = stats.seed_image_bootstrap(steady, control, strata, "dice")
    assert 0 < resolved["ci"][0] < resolved["delta"] < resolved["ci"][1] < 0.02
