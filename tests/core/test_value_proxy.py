"""The gate's utility estimate (core.value_proxy.crossfit) on constructed features, and the
minimum detectable effect it reports. (That held-out real images of a class pass is
checked on real NEU images in tests/stages/test_gate.py: on isotropic Gaussians new draws of a class
and noised copies of its images help a linear model about alike.)"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as scipy_stats

from defectgen.core import stats, value_proxy


def _problem(seed: int):
    """Two Gaussian classes in 64-d (means 4 sd apart): 20 real class-0 and 40 class-1 train
    images; 80 images to add to class 0 from a good generator, a wrong one, and classical
    copies (noised real class-0 images, 4 per source)."""
    rng = np.random.default_rng(seed)
    mean0, mean1 = np.zeros(64), np.full(64, 0.5)
    draw = lambda mean, n: mean + rng.normal(0, 1, (n, 64))  # noqa: E731
    real0, real1 = draw(mean0, 20), draw(mean1, 40)
    sources = np.repeat(np.arange(20), 4)
    return {
        "real_x": np.concatenate([real0, real1]),
        "real_y": np.array([0] * 20 + [1] * 40),
        "good": draw(mean0, 80),  # new images of the class
        "wrong": draw(mean1, 80),  # a generator that draws the other class
        "copies": real0[sources] + rng.normal(0, 0.3, (80, 64)),
        "sources": sources,
    }


def _crossfit(p, added, parents=None, **kw):
    parents = np.full(len(added), value_proxy.NO_PARENT) if parents is None else parents
    return value_proxy.crossfit(
        p["real_x"], p["real_y"], added, parents, p["copies"], p["sources"], 0,
        **{"folds": 5, "repeats": 2, "components": 16, "seed": 0, **kw},
    )  # fmt: skip


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_images_of_the_wrong_class_are_resolved_below_zero(seed):
    p = _problem(seed)
    bad = _crossfit(p, p["wrong"])
    assert bad["ci"][1] < 0 and bad["loss_synthetic"] > bad["loss_classical"]
    # every real train image is scored once per repeat
    assert (bad["n_images"], bad["n_folds"], bad["n_repeats"]) == (60, 5, 2)


def test_the_same_images_in_both_arms_give_no_difference():
    p = _problem(1)
    pool = p["copies"][::4]  # one copy per source: the classical arm draws exactly these
    p = {**p, "copies": pool, "sources": np.arange(20)}
    same = _crossfit(p, pool, parents=np.arange(20))
    assert same["delta"] == pytest.approx(0.0, abs=1e-9)
    assert same["ci"][0] <= 0 <= same["ci"][1]


def test_images_made_from_a_held_out_parent_are_left_out_of_its_fold():
    p = _problem(0)
    # 20 synthetic images with a class-0 parent each, 10 without one: a 5-fold split
    # holds out 4 of the 20 parents, so 16 + 10 are added per fold
    parents = np.concatenate([np.arange(20), np.full(10, value_proxy.NO_PARENT)])
    out = _crossfit(p, p["good"][:30], parents=parents)
    assert out["synthetic_per_fold"] == 26


def test_too_small_a_class_gives_no_estimate():
    p = _problem(0)
    p = {**p, "real_x": p["real_x"][19:], "real_y": p["real_y"][19:]}  # one class-0 image
    out = _crossfit(p, p["good"])
    assert out["delta"] is None and out["n_folds"] == 0
    assert value_proxy.folds_for(np.array([0, 0, 0, 1, 1, 1, 1]), 5) == 3


def test_the_classical_pool_covers_any_training_fold():
    # 12 images in 5 folds: a training fold keeps at least 9, which need 6 copies each
    # for 50 synthetic images... 9 x 6 = 54 >= 50 (and 5 each would give 45)
    assert value_proxy.pool_size(50, 12, 5) == 6
    assert value_proxy.pool_size(3, 40, 5) == 1


def _resolved_share(effect: float, sd: float, n: int, seed: int) -> float:
    """How often n normal differences of true mean `effect` give a 95 % t interval above
    0, over 4,000 simulated samples: the power the formulas promise, measured."""
    draws = np.random.default_rng(seed).normal(effect, sd, (4000, n))
    t = scipy_stats.t.ppf(0.975, n - 1)
    lo = draws.mean(1) - t * draws.std(1, ddof=1) / np.sqrt(n)
    return float((lo > 0).mean())


def test_the_minimum_detectable_effect_has_its_power():
    # a true effect of exactly the MDE is resolved (interval above 0) in ~80 % of samples
    n, sd = 30, 2.0
    effect = stats.mde(sd, n)
    assert _resolved_share(effect, sd, n, seed=0) == pytest.approx(0.8, abs=0.03)
    assert stats.mde(sd, 4 * n) == pytest.approx(effect / 2, rel=0.05)
    assert stats.mde(sd, 1) is None


def test_the_images_needed_resolve_the_effect_with_that_power():
    # the power analysis of an inconclusive estimate: at n_to_resolve(effect, sd)
    # differences, a true effect of that size has its interval above 0 in ~80 % of samples
    effect, sd = 0.25, 1.5
    n = stats.n_to_resolve(effect, sd)
    assert _resolved_share(effect, sd, n, seed=1) == pytest.approx(0.8, abs=0.03)
    assert stats.n_to_resolve(-effect, sd) == n  # the size of the effect, either sign
    assert stats.n_to_resolve(effect / 2, sd) == pytest.approx(4 * n, rel=0.05)
    assert stats.n_to_resolve(0.0, sd) is None
