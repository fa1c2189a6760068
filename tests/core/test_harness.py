"""The comparison harness: what each condition adds, which conditions run, and what the
paired scores may say."""

from __future__ import annotations

from collections import Counter

import numpy as np

from defectgen.core import arms, harness, validity


def rows(prefix: str, per_class: dict[str, int], origin: str = "real") -> list[dict]:
    return [{"id": f"{prefix}-{label}-{k}", "label": label, "origin": origin}
            for label, n in per_class.items() for k in range(n)]  # fmt: skip


def labels(drawn: list[dict]) -> dict[str, int]:
    return dict(Counter(r["label"] for r in drawn))


def pool(gated: dict[str, int] | None = None, outside: dict[str, int] | None = None):
    plan = arms.plan(["real+synthetic", "real+ungated", "substitution"], oracle=True,
                     copy_paste=True)  # fmt: skip
    gated = {"scratch": 5} if gated is None else gated
    outside = {"good": 30, "scratch": 3} if outside is None else outside
    added = {"real+synthetic": rows("gen", gated, "synthetic"),
             "real+ungated": rows("gen", {"scratch": 8, "good": 2}, "synthetic")}  # fmt: skip
    subset = rows("sub", {"good": 6, "scratch": 4})
    return harness.Pool(plan, subset, rows("out", outside), added, normal_classes=("good",))


def test_each_control_adds_as_many_images_per_class_as_its_arm():
    p = pool()
    rng = np.random.default_rng(0)
    assert p.draw("real", rng).n_added == 0
    assert labels(p.draw("real+ungated", rng).rows) == {"scratch": 8, "good": 2}
    classical = p.draw("real+classical-ungated", rng)
    assert labels(classical.copies) == {"scratch": 8, "good": 2} and not classical.rows
    assert {r["id"] for r in classical.copies} <= {r["id"] for r in p.subset}
    # 8 copies of 4 scratch images: every image twice (whole passes), not one image 8 times
    assert set(Counter(r["id"] for r in classical.copies if r["label"] == "scratch").values()) == {
        2
    }
    oracle = p.draw("real+oracle", rng)
    # the gated arm adds 5 scratches; only 3 exist outside the subset: the shortfall is said
    assert labels(oracle.rows) == {"scratch": 3}
    assert p.oracle_shortfall("real+oracle") == {"scratch": 2}
    assert all(r["id"].startswith("out-") for r in oracle.rows)
    pastes = p.draw("real+copy-paste", rng)
    assert pastes.pastes is not None and pastes.n_added == 5
    assert len(p.draw("all-train", rng).rows) == 33


def test_substitution_replaces_outside_images_by_as_many_passed_ones_per_class():
    p = pool(gated={"scratch": 5, "good": 1})
    drawn = p.draw("substitution", np.random.default_rng(0))
    assert labels(drawn.rows) == {"scratch": 3, "good": 1}
    assert all(r["origin"] == "synthetic" for r in drawn.rows)


def test_a_gate_that_passes_nothing_skips_its_arm_and_every_control_with_a_reason():
    p = pool(gated={})
    run, skipped = p.runnable()
    assert skipped == {
        "real+synthetic": "no synthetic images passed the gate",
        "real+classical": "real+synthetic adds no image to match",
        "real+copy-paste": "real+synthetic adds no image to match",
        "real+oracle": "real+synthetic adds no image to match",
        "substitution": "the gate passed no synthetic image",
    }
    assert run == ["real", "real+ungated", "real+classical-ungated", "real+copy-paste-ungated",
                   "real+oracle-ungated", "all-train"]  # fmt: skip
    alone = pool(outside={})
    assert alone.reason("all-train") == "every train image is in the few-shot subset"


def scores(gain: dict[str, float], seeds: int = 6) -> dict[str, dict[int, float]]:
    rng = np.random.default_rng(1)
    return {c: {s: 0.7 + g + rng.normal(0, 0.005) for s in range(seeds)} for c, g in gain.items()}


def test_analyse_answers_every_question_and_reads_verdicts_only_when_data_helps():
    plan = arms.plan(["real+ungated"], oracle=True)
    helps = {"real": 0.0, "real+ungated": 0.04, "real+classical-ungated": 0.01,
             "real+oracle-ungated": 0.06, "all-train": 0.08}  # fmt: skip
    bound = dict.fromkeys(helps, False)
    rows, check = harness.analyse({"acc": scores(helps)}, plan, primary="acc",
                                  higher={"acc": True}, constant=0.5, bound=bound)  # fmt: skip
    asked = {(r["arm"], r["control"]) for r in rows}
    assert ("real+ungated", "real+classical-ungated") in asked
    assert ("real+oracle-ungated", "real+classical-ungated") in asked
    assert check["verdicts_allowed"] and check["reference"] == "real+oracle-ungated"
    line = harness.headline(rows, check, "acc", "Synthetic vs classical")
    assert line.startswith("Synthetic vs classical (real+ungated vs real+classical-ungated, "
                           "6 paired seeds, equal steps): better")  # fmt: skip
    # the same arms, but extra real images do not help: every verdict is withheld
    flat = {**helps, "real+oracle-ungated": 0.0, "all-train": 0.0}
    rows, check = harness.analyse({"acc": scores(flat)}, plan, primary="acc",
                                  higher={"acc": True}, constant=0.5, bound=bound)  # fmt: skip
    assert not check["verdicts_allowed"]
    assert {r["verdict"] for r in rows} == {validity.NOT_ALLOWED}
    assert "cannot measure" in harness.headline(rows, check, "acc", "Synthetic vs classical")


def test_analyse_uses_the_callers_image_level_test_where_it_has_one():
    plan = arms.plan(["real+ungated"], oracle=False)
    seen = []

    def difference(metric, arm, control):
        seen.append((metric, arm, control))
        return {"delta": 0.01, "ci": [-0.05, 0.07], "p_value": 0.7, "n_seeds": 6,
                "n_images": 40}  # fmt: skip

    gain = {"real": 0.0, "real+ungated": 0.04, "real+classical-ungated": 0.01}
    rows, _ = harness.analyse({"dice": scores(gain)}, plan, primary="dice",
                              higher={"dice": True}, constant=0.0,
                              bound=dict.fromkeys(gain, False), difference=difference)  # fmt: skip
    assert ("dice", "real+ungated", "real+classical-ungated") in seen
    vs = next(r for r in rows if r["control"] == "real+classical-ungated")
    assert vs["ci"] == [-0.05, 0.07] and vs["n_images"] == 40
