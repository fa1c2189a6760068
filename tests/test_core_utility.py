"""The gate's utility proxy on constructed features. (That held-out real images of a
class pass is checked on real NEU images in test_stage_gate.)"""

from __future__ import annotations

import numpy as np
import pytest

from defectgen.core import utility


def _problem(seed: int):
    """Two overlapping Gaussian classes in 64-d: 20 real class-0 and 40 class-1 training
    images, 300 val images per class; arms add 80 class-0 images each."""
    rng = np.random.default_rng(seed)
    mean0, mean1 = np.zeros(64), np.full(64, 0.25)
    draw = lambda mean, n: mean + rng.normal(0, 1, (n, 64))  # noqa: E731
    real0, real1 = draw(mean0, 20), draw(mean1, 40)
    return {
        "real_x": np.concatenate([real0, real1]),
        "real_y": np.array([0] * 20 + [1] * 40),
        "wrong": draw(mean1, 80),  # a generator that draws the other class
        "copies": real0[rng.integers(0, 20, 80)] + rng.normal(0, 0.3, (80, 64)),
        "val_x": np.concatenate([draw(mean0, 300), draw(mean1, 300)]),
        "val_y": np.array([0] * 300 + [1] * 300),
    }


def _utility(p, added):
    return utility.utility(
        p["real_x"], p["real_y"], added, p["copies"], 0, p["val_x"], p["val_y"],
        seeds=5, components=16, seed=0,
    )  # fmt: skip


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_images_of_the_wrong_class_fail(seed):
    p = _problem(seed)
    bad = _utility(p, p["wrong"])
    assert bad["verdict"] == "fail" and bad["ci"][1] < 0
    assert bad["loss_synthetic"] > bad["loss_classical"]
    assert bad["n_images"] == 600 and bad["n_seeds"] == 5


def test_the_same_images_in_both_arms_are_inconclusive():
    p = _problem(1)
    same = _utility(p, p["copies"])
    assert same["delta"] == pytest.approx(0.0, abs=1e-12) and same["verdict"] == "inconclusive"
    with pytest.raises(ValueError, match="as many images"):
        _utility(p, p["wrong"][:5])
