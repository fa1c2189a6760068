"""core.no_harm.check on constructed features: a generator that draws the wrong class is
resolved as harmful, one that draws the class itself does no harm, identical arms are
bounded by the rule of three."""

from __future__ import annotations

import numpy as np
import pytest

from defectgen.core import no_harm


def _problem(seed: int, n_val: int = 1500):
    """Three Gaussian classes in 32-d with overlapping means (a linear judge is right on
    most images, not all): 20 real train images per class, `n_val` val images."""
    rng = np.random.default_rng(seed)
    means = np.zeros((3, 32))
    means[1, :8], means[2, 8:16] = 0.8, 0.8
    draw = lambda c, n: means[c] + rng.normal(0, 1, (n, 32))  # noqa: E731
    real_y = np.repeat(np.arange(3), 20)
    val_y = np.repeat(np.arange(3), n_val // 3)
    real_x = np.concatenate([draw(c, 20) for c in range(3)])
    return {
        "real_x": real_x, "real_y": real_y,
        "val_x": np.concatenate([draw(c, n_val // 3) for c in range(3)]), "val_y": val_y,
        "good": draw(0, 60),  # new images of class 0
        "wrong": draw(1, 60),  # a generator that draws class 1 and calls it class 0
        "copies": real_x[:20][np.repeat(np.arange(20), 6)] + rng.normal(0, 0.3, (120, 32)),
    }  # fmt: skip


def _check(p: dict, synthetic: np.ndarray, classical: np.ndarray | None = None) -> dict:
    added = {0: no_harm.Added(synthetic, p["copies"] if classical is None else classical)}
    return no_harm.check(p["real_x"], p["real_y"], p["val_x"], p["val_y"], added,
                         metric="balanced_accuracy", n_classes=3, seeds=5, components=16,
                         seed=0)  # fmt: skip


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_images_of_the_wrong_class_fail(seed):
    p = _problem(seed)
    bad = _check(p, p["wrong"])
    assert bad["ci"][1] < 0 and no_harm.answer(bad, margin=0.02, harm="any") == "fail"
    assert (bad["n_seeds"], bad["n_images"], bad["n_added"]) == (5, 1500, 60)
    assert bad["interval"] == "bootstrap" and not no_harm.superior(bad)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_new_images_of_the_class_do_no_harm(seed):
    p = _problem(seed)
    good = _check(p, p["good"])
    assert good["ci"][0] > -0.02 and no_harm.answer(good, margin=0.02, harm="any") == "pass"


def test_a_small_val_set_cannot_tell_and_says_so():
    p = _problem(0, n_val=30)
    small = _check(p, p["good"])
    assert no_harm.answer(small, margin=0.02, harm="any") == "inconclusive"
    assert no_harm.half_width(small) > 0.02
    change = no_harm.what_would_change("inconclusive", small, margin=0.02)
    assert change.startswith("not resolvable at this dataset size")


def test_a_few_val_images_cannot_pass_a_class_on_a_one_image_edge():
    # 6 val images per class: whatever the bootstrap over them reads, the interval spans
    # the rule of three's 3 / 6 per class on either side of the estimate, so undecided
    p = _problem(3, n_val=18)
    result = _check(p, p["good"])
    assert result["interval"].startswith("bootstrap, widened")
    assert result["ci"][0] <= result["delta"] - 0.5 + 1e-9
    assert no_harm.answer(result, margin=0.02, harm="any") == "inconclusive"


def test_identical_arms_are_bounded_by_the_rule_of_three():
    p = _problem(0, n_val=90)
    same = p["copies"][:60]
    result = _check(p, same, classical=same)  # each seed draws all 60: the same set
    assert result["delta"] == 0.0 and result["interval"] == "rule of three"
    assert result["ci"] == pytest.approx([-0.1, 0.1])  # 3 / 30 per class, balanced accuracy
    assert no_harm.answer(result, margin=0.02, harm="any") == "inconclusive"
    assert "predicted every val image alike" in no_harm.describe(result, margin=0.02)


def test_the_rule_of_three_weighs_classes_as_the_metric_does():
    y = np.array([0] * 10 + [1] * 30)
    assert no_harm.no_discordance_bound(y, "accuracy") == pytest.approx(3 / 40)
    assert no_harm.no_discordance_bound(y, "balanced_accuracy") == pytest.approx((0.3 + 0.1) / 2)
