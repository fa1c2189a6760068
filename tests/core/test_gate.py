"""core.gate.decide, the gate's rule, on constructed evidence: one case per branch."""

from __future__ import annotations

import pytest

from defectgen.config import GateConfig
from defectgen.core.gate import Evidence, decide


def _check(lo: float, hi: float) -> dict:
    """A no-harm check's result (core.no_harm.check) with this interval."""
    return {"delta": (lo + hi) / 2, "ci": [lo, hi], "p_value": 0.5, "n_seeds": 10,
            "n_images": 120, "metric": "balanced_accuracy", "n_added": 64,
            "interval": "bootstrap"}  # fmt: skip


def _e(distance=90.0, *, own=None, pooled=None, missing=None, n=20, noise=160.0) -> Evidence:
    return Evidence(n_compared=n, n_reference=20, distance=distance, baseline=50.0, blur=150.0,
                    noise=noise, own=own, pooled=pooled, missing=missing)  # fmt: skip


NO_HARM = GateConfig()  # decide_by no_harm, margin 0.02, harm any, inconclusive reject


def test_too_few_images_fail_whatever_the_check_says():
    d = decide(_e(None, n=1, own=_check(0.1, 0.2)), NO_HARM)
    assert (d.passed, d.verdict, d.rule) == (False, "fail", "floor")
    assert "fewer than 2 to compare" in d.reason and "more generated images" in d.change
    few_val = Evidence(n_compared=20, n_reference=1, own=_check(0.1, 0.2))
    assert decide(few_val, NO_HARM).change.startswith("more val images would")


@pytest.mark.parametrize(
    ("distance", "noise", "words"),
    [(120.0, 160.0, "distance 120.0 is 2.40x the real-vs-real 50.0 (allowed 2x)"),
     (99.0, 95.0, "distance 99.0 is worse than noised real images' 95.0")],
)  # fmt: skip
def test_a_floor_fails_before_the_check_is_read(distance, noise, words):
    d = decide(_e(distance, noise=noise, own=_check(0.05, 0.1)), NO_HARM)  # it would pass
    assert (d.passed, d.verdict, d.rule, d.superior) == (False, "fail", "floor", False)
    assert (d.reason, d.fidelity_reason) == (f"fidelity floor: {words}", words)
    assert d.fidelity_passed is False and "another sweep cell" in d.change


def test_only_the_floors_asked_for_apply():
    damaged = _e(99.0, noise=95.0, own=_check(-0.01, 0.04))  # worse than noised real images
    assert decide(damaged, GateConfig(floors=["ratio", "blur"])).verdict == "pass"
    far = _e(120.0, own=_check(-0.01, 0.04))  # 2.4x real-vs-real
    assert decide(far, GateConfig(floors=["blur", "noise"])).verdict == "pass"
    assert decide(far, NO_HARM).rule == "floor"


def test_the_fidelity_rule_passes_on_the_floors_alone():
    cfg = GateConfig(decide_by="fidelity", max_distance=80.0)
    assert decide(_e(90.0), cfg).verdict == "fail"  # above the ceiling
    d = decide(_e(70.0, own=_check(-0.3, -0.1)), GateConfig(decide_by="fidelity"))
    assert (d.passed, d.verdict, d.rule) == (True, "pass", "fidelity") and "1.40x" in d.reason


@pytest.mark.parametrize(
    ("own", "harm", "verdict", "superior"),
    [((-0.015, 0.03), "any", "pass", False),      # no loss beyond the 2 pp margin
     ((0.01, 0.06), "any", "pass", True),         # better than the copies: promotes
     ((-0.08, -0.01), "any", "fail", False),      # a loss, resolved
     ((-0.015, -0.005), "any", "fail", False),    # a small loss: harm under harm any ...
     ((-0.015, -0.005), "beyond_margin", "pass", False),  # ... within the margin otherwise
     ((-0.09, -0.03), "beyond_margin", "fail", False),
     ((-0.05, 0.04), "any", "inconclusive", False)],
)  # fmt: skip
def test_the_class_own_check_decides_where_it_resolves(own, harm, verdict, superior):
    d = decide(_e(own=_check(*own), pooled=_check(0.05, 0.1)), GateConfig(harm=harm))
    rule = "class" if verdict != "inconclusive" else "pooled"
    assert (d.verdict if rule == "class" else "inconclusive") == verdict
    assert d.rule == rule and d.superior is superior


def test_an_undecided_class_takes_the_pooled_answer_and_says_so():
    d = decide(_e(own=_check(-0.05, 0.04), pooled=_check(-0.01, 0.02)), NO_HARM)
    assert (d.passed, d.verdict, d.rule, d.change) == (True, "pass", "pooled", "")
    assert "every class's images that passed the floors" in d.reason
    assert "this class's own check was inconclusive" in d.reason


@pytest.mark.parametrize(("policy", "passed"), [("reject", False), ("accept", True)])
def test_undecided_everywhere_is_inconclusive_and_the_policy_decides(policy, passed):
    d = decide(_e(own=_check(-0.09, 0.08), pooled=_check(-0.06, 0.05)),
               GateConfig(inconclusive=policy))  # fmt: skip
    assert (d.passed, d.verdict, d.rule) == (passed, "inconclusive", "class")
    assert d.reason.endswith("accepted by gate.inconclusive" if passed else
                             "kept out (gate.inconclusive)")  # fmt: skip
    # +-8.5 pp is wider than the 2 pp margin: more data, not better images
    assert d.change.startswith("not resolvable at this dataset size: the interval is +-8.5 pp")


def test_a_check_that_could_not_run_keeps_the_class_out():
    d = decide(_e(missing="fewer than 2 classes with real train images"), NO_HARM)
    assert (d.passed, d.verdict, d.rule) == (False, "fail", "class")
    assert d.reason == "no-harm check not possible: fewer than 2 classes with real train images"


def test_the_reason_says_the_sign_once_in_words_and_what_the_check_can_tell():
    d = decide(_e(own=_check(-0.06, -0.02)), NO_HARM)
    assert "val balanced accuracy 4.0 pp lower with the synthetic images" in d.reason
    assert "95 % interval -6.0 to -2.0 pp over 10 seeds and 120 val images" in d.reason
    assert "it can tell a loss of 2.0 pp or more" in d.reason
