"""core.gate.decide, the gate's rule, on constructed evidence: one case per branch."""

from __future__ import annotations

import pytest

from defectgen.config import GateConfig
from defectgen.core.gate import Decision, Evidence, decide


def _u(lo: float, hi: float) -> dict:
    return {"delta": (lo + hi) / 2, "ci": [lo, hi], "mde": 0.05, "n_images": 60,
            "n_folds": 5, "n_repeats": 4}  # fmt: skip


def _e(distance=90.0, *, baseline=50.0, blur=150.0, utility=None, missing=None, n=20) -> Evidence:
    return Evidence(n_compared=n, n_reference=20, distance=distance, baseline=baseline,
                    blur=blur, utility=utility, missing=missing)  # fmt: skip


UTILITY = GateConfig()  # decide_by utility, inconclusive reject


def test_too_few_images_fail_whatever_the_utility():
    d = decide(_e(None, n=1, utility=_u(0.1, 0.2)), UTILITY)
    assert not d.passed and d.verdict == "fail" and "fewer than 2" in d.reason
    assert d.fidelity_passed is None and d.utility_verdict == "pass"  # reported, not used


@pytest.mark.parametrize(
    ("distance", "ceiling", "passed", "words"),
    [(90.0, None, True, "1.80x"), (120.0, None, False, "2.40x the real-vs-real 50.0 (allowed"),
     (90.0, 80.0, False, "ceiling 80")],
)  # fmt: skip
def test_the_fidelity_rule(distance, ceiling, passed, words):
    cfg = GateConfig(decide_by="fidelity", max_distance=ceiling)
    d = decide(_e(distance, utility=_u(-0.3, -0.1)), cfg)  # the utility does not decide here
    assert d.passed is passed and d.fidelity_passed is passed and words in d.reason
    assert d.verdict == ("pass" if passed else "fail") and d.utility_verdict == "fail"


def test_worse_than_blurred_fails_and_still_reports_the_utility():
    d = decide(_e(200.0, utility=_u(0.1, 0.3)), UTILITY)
    assert not d.passed and d.verdict == "fail" and "fidelity floor" in d.reason
    assert "utility pass" in d.reason and d.utility_verdict == "pass"
    assert d.fidelity_passed is False  # 4x the real-vs-real


def test_an_unmeasurable_utility_keeps_the_class_out():
    d = decide(_e(missing="fewer than 2 classes with real train images"), UTILITY)
    # distance 90 against a real-vs-real 50: 1.8x, within the fidelity rule's limit
    assert d == Decision(False, "fail", "utility not measurable: fewer than 2 classes with "
                         "real train images; kept out", True,
                         "distance 90.0 is 1.80x the real-vs-real 50.0", None)  # fmt: skip


@pytest.mark.parametrize(
    ("ci", "policy", "passed", "verdict", "said"),
    [((0.01, 0.2), "reject", True, "pass", "lower with the synthetic images"),
     ((-0.2, -0.01), "accept", False, "fail", "higher with the synthetic images"),
     ((-0.1, 0.1), "reject", False, "inconclusive", "kept out"),
     ((-0.1, 0.1), "accept", True, "inconclusive", "accepted")],
)  # fmt: skip
def test_the_utility_interval_decides(ci, policy, passed, verdict, said):
    # a distance ratio over max_ratio does not matter under the utility rule
    d = decide(_e(120.0, utility=_u(*ci)), GateConfig(inconclusive=policy))
    assert (d.passed, d.verdict) == (passed, verdict) and d.fidelity_passed is False
    assert "resolves effects from 0.050" in d.reason and "60 train images" in d.reason
    assert d.reason.startswith("by the utility, held-out loss ")  # the verdict said beside it
    assert said in d.reason


def test_an_estimate_without_an_interval_is_inconclusive():
    u = {**_u(0.0, 0.0), "delta": 0.1, "ci": None, "mde": None}
    d = decide(_e(utility=u), UTILITY)
    assert d.verdict == "inconclusive" and not d.passed


def test_an_inconclusive_reason_says_how_many_images_would_resolve_it():
    u = {**_u(-0.02, 0.06), "n_needed": 960}
    d = decide(_e(utility=u), UTILITY)
    assert d.verdict == "inconclusive" and "0.020 at about 960 train images" in d.reason
    # no such clause when the estimate already has the images it needs
    d = decide(_e(utility={**_u(0.01, 0.2), "n_needed": 40}), UTILITY)
    assert d.verdict == "pass" and "about" not in d.reason


def test_the_reason_says_the_sign_in_words_and_the_interval_in_the_same_sense():
    # delta is classical minus synthetic loss: +0.03 means the synthetic images help
    helped = decide(_e(utility=_u(0.01, 0.05)), UTILITY).reason
    assert "held-out loss 0.030 lower with the synthetic images" in helped
    assert "synthetic - classical -0.030 [-0.050, -0.010]" in helped
    hurt = decide(_e(utility={**_u(-0.05, 0.01), "n_needed": 1234567}), UTILITY).reason
    assert "held-out loss 0.020 higher with the synthetic images" in hurt
    assert "synthetic - classical +0.020 [-0.010, +0.050]" in hurt
    assert "at about 1,234,567 train images" in hurt
