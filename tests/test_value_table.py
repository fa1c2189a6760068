"""The value, gate and calibration tables of docs/results.md and the README's short
value table: written from the committed results.json files, and each copy is what those
files say."""

from __future__ import annotations

import json

import pytest

from experiments import gate_calibration
from experiments.expansion import replicates, table
from experiments.expansion.run import REPO


def comparison(arm: str, control: str, delta: float, ci: list[float], verdict: str) -> dict:
    return {"arm": arm, "control": control, "metric": "accuracy", "delta": delta, "ci": ci,
            "p_value": 0.01, "p_adjusted": 0.03, "n_seeds": 10, "verdict": verdict}  # fmt: skip


def test_a_row_reads_validity_and_the_synthetic_arms_differences(tmp_path):
    result = {
        "dataset": "toy",
        "params": {"preprocess": {"subset": {"alpha": None, "per_class": 20}}},
        "classification": {
            "primary_metric": "accuracy",
            "validity": {"m": {"verdicts_allowed": True, "all_train_minus_real":
                               {"delta": 0.05, "ci": [0.03, 0.07], "p_value": 0.001}}},
            "comparisons": {"m": [
                # real+synthetic was not trained (the gate passed nothing): the ungated arm
                comparison("real+ungated", "real", 0.02, [0.01, 0.03], "better"),
                comparison("real+classical-ungated", "real", -0.01, [-0.02, 0.0], "n.s."),
                comparison("real+ungated", "real+classical-ungated", 0.03, [0.02, 0.04],
                           "better"),
                comparison("real+ungated", "real", 0.5, [0.4, 0.6], "better") | {"metric": "f1"},
            ]},
        },
    }  # fmt: skip
    (row,) = table.rows(result)
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1:] == [
        "m", "1 (earlier protocol: seeds only)", "20", "accuracy", "yes", "-",
        "+5.0 pp [+3.0, +7.0]", "-1.0 pp [-2.0, +0.0]", "+2.0 pp [+1.0, +3.0]",
        "+3.0 pp [+2.0, +4.0]", "-", "real+ungated: better (one run)",
    ]  # fmt: skip
    assert "experiments/expansion/results/toy/results.md" in cells[0]
    (tmp_path / "toy").mkdir()
    (tmp_path / "toy" / "results.json").write_text(json.dumps(result))
    assert table.table(tmp_path).count("\n| ") == 1  # toy is not one of the datasets


def test_a_u_net_row_follows_the_classifiers_with_its_own_metric_and_validity():
    def seg(arm, control, delta, verdict):
        return comparison(arm, control, delta, [delta - 0.01, delta + 0.01], verdict) | {
            "metric": "s_measure"
        }

    result = {
        "dataset": "toy",
        "params": {"preprocess": {"subset": {"alpha": None, "per_class": 40}}},
        "classification": {"primary_metric": "accuracy", "validity": {}, "comparisons": {}},
        "segmentation": {
            "validity": {"metric": "s_measure", "verdicts_allowed": False,
                         "all_train_minus_real": {"delta": 0.01, "ci": [-0.01, 0.03]}},
            "comparisons": [seg("real+ungated", "real+classical-ungated", -0.02, "worse"),
                            seg("real+classical-ungated", "real", 0.01, "n.s.")],
        },
        "detection": {"skipped": "left out of this run with --skip"},
    }  # fmt: skip
    (row,) = table.rows(result)
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1:] == [
        "U-Net", "1 (earlier protocol: seeds only)", "40", "S-measure", "no", "-",
        "+1.0 pp [-1.0, +3.0]", "+1.0 pp [+0.0, +2.0]", "-", "-2.0 pp [-3.0, -1.0]", "-",
        "real+ungated: worse (one run)",
    ]  # fmt: skip


def test_the_value_tables_are_the_committed_results():
    full = table.table()
    assert table.readme_table(table.RESULTS_DOC) == table.relinked(full)
    short = table.readme_table(REPO / "README.md", table.SHORT_START, table.SHORT_END)
    assert short == table.short_table(full)


def test_the_short_table_keeps_each_row_s_dataset_synthetic_minus_classical_and_verdict():
    full = "\n".join([
        table.START, *table.HEADER,
        "| [toy](experiments/x.md) | judge | 3 | 10 | accuracy | yes | a | b | c | d | "
        "-1.0 pp [-2.0, -0.1] | -1 / -1 / -1 | real+ungated: worse |",
        table.END,
    ])  # fmt: skip
    short = table.short_table(full).splitlines()
    assert short[1] == ("| dataset | judge | replicates | few-shot per class | "
                        "synthetic - classical | verdict (Holm) |")  # fmt: skip
    assert short[3] == ("| [toy](experiments/x.md) | judge | 3 | 10 | -1.0 pp [-2.0, -0.1] | "
                        "real+ungated: worse |")  # fmt: skip
    assert "](../experiments/x.md)" in table.relinked(full)


def test_a_gate_row_puts_the_estimate_its_power_and_the_outcome_side_by_side(tmp_path):
    result = {
        "dataset": "toy",
        "gate": {"Sc": {"utility": {"delta": 0.01, "ci": [-0.02, 0.04], "mde": 0.042,
                                    "n_images": 60, "n_needed": 1065}}},
        "agreement": {
            "classes": {"Sc": {"outcome_f1_delta": 0.03, "outcome_ci": [0.01, 0.05],
                               "outcome": "better", "gate_verdict": "inconclusive",
                               "gate_right": False, "fd_ratio_verdict": "pass",
                               "fd_ratio_right": True}},
            "rules": {"gate": {"right": 0, "n": 1, "right_resolved": 0, "n_resolved": 1,
                               "inconclusive": 1},
                      "fd_ratio": {"right": 1, "n": 1, "right_resolved": 1, "n_resolved": 1}},
        },
    }  # fmt: skip
    (row,) = table.gate_rows(result)
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells == [
        "toy", "Sc", "+0.010 [-0.020, +0.040]", "0.042", "1,065 (has 60)", "inconclusive",
        "+0.030 [+0.010, +0.050] (better)", "wrong", "pass (right)",
    ]  # fmt: skip
    for name in ("elpv", "neu-det"):  # pooled over the datasets present
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps({**result, "dataset": name}))
    assert (
        "Pooled over 2 classes (2 with a resolved outcome): the gate right on 0 of the 2 "
        "resolved (0 of 2 in all), inconclusive on 2 of 2; the FD ratio rule right on 2 of "
        "the 2 resolved (2 of 2)." in table.gate_table(tmp_path)
    )


def test_the_gate_table_is_the_committed_results():
    readme = table.readme_table(table.RESULTS_DOC, table.GATE_START, table.GATE_END)
    assert readme == table.gate_table()


def test_the_calibration_table_is_the_committed_results():
    readme = table.readme_table(table.RESULTS_DOC, table.CAL_START, table.CAL_END)
    assert readme == table.calibration_table()


def _calibration_row(label: str, verdict: str, outcome: str) -> dict:
    check = {"delta": 0.01, "ci": [-0.012, 0.032]}
    agreement = gate_calibration.agreement(verdict, outcome)
    return {"class": label, "verdict": verdict, "rule": "class", "val": check, "test": check,
            "outcome": outcome, "agreement": agreement}  # fmt: skip


def test_the_calibration_table_counts_what_the_gate_issue_asks(tmp_path):
    rows = [_calibration_row("a", "pass", "harm"), _calibration_row("b", "fail", "harm"),
            _calibration_row("c", "inconclusive", "no harm"),
            _calibration_row("d", "pass", "unresolved")]  # fmt: skip
    (tmp_path / "elpv").mkdir()
    record = {"replicates": {"0": {"git": "abc1234", "rows": rows}}}
    (tmp_path / "elpv" / "gate-calibration.json").write_text(json.dumps(record))
    text = table.calibration_table(tmp_path)
    assert "| elpv | 0 | abc1234 | a | pass (class) | +1.0 pp [-1.2, +3.2] | " in text
    assert "| harm | wrong |" in text and "| b | fail (class) |" in text
    assert ("4 classes: the gate inconclusive on 1, passed 2 (of which harmful on test: 1), "
            "failed 1; right on 1, wrong on 1, undecided on 2.") in text  # fmt: skip


LABELS = ["defective", "functional"]
# per condition, the share of test images its classifiers get right
SKILL = {"real": 0.70, "real+ungated": 0.80, "real+classical-ungated": 0.72,
         "real+oracle-ungated": 0.88, "all-train": 0.90}  # fmt: skip


def write_replicate(folder, k: int, skill: dict[str, float], *, bound=()):
    """A replicate's results.json and its per-image predictions: each condition's seeds
    right on a `skill` share of 200 test images (drawn per seed), wrong elsewhere."""
    import numpy as np
    import pandas as pd

    folder.mkdir(parents=True)
    rng = np.random.default_rng(k)
    truth = [LABELS[i % 2] for i in range(200)]
    rows = []
    for condition, p in skill.items():
        for seed in range(5):
            right = rng.random(200) < p
            rows += [{"model": "m", "condition": condition, "seed": seed, "image_id": f"t{i}",
                      "label": t, "predicted": t if ok else LABELS[1 - LABELS.index(t)]}
                     for i, (t, ok) in enumerate(zip(truth, right, strict=True))]  # fmt: skip
    pd.DataFrame(rows).to_parquet(folder / "train-test_predictions.parquet")
    check = {"budget_bound": list(bound), "degenerate": {},
             "reasons": [f"budget-bound: {', '.join(bound)}"] if bound else []}  # fmt: skip
    result = {"dataset": "toy", "replicate": k, "git": "abc1234",
              "params": {"preprocess": {"subset": {"per_class": 20}}},
              "classification": {"labels": LABELS, "primary_metric": "balanced_accuracy",
                                 "validity": {"m": check}, "comparisons": {"m": []}}}  # fmt: skip
    (folder / "results.json").write_text(json.dumps(result))


def replicate_dirs(tmp_path, skills, **kw):
    for k, skill in enumerate(skills):
        write_replicate(tmp_path / (f"replicate-{k}" if k else ""), k, skill, **kw)
    return tmp_path


def test_replicates_that_agree_carry_a_verdict_with_every_replicates_delta(tmp_path):
    claim = replicates.claim(replicate_dirs(tmp_path / "toy", [SKILL] * 3))
    c = claim["models"]["m"]
    assert claim["replicates"] == [0, 1, 2]
    assert c["arm"] == "real+ungated" and c["verdicts_allowed"], c["reasons"]
    vs = c["synthetic_minus_classical"]
    assert vs["n_replicates"] == 3 and len(vs["per_replicate"]) == 3
    assert all(0.03 < d < 0.13 for d in vs["per_replicate"])  # about +8 pp each
    assert vs["ci"][0] > 0 and vs["verdict"] == "better"
    assert c["reference_minus_real"]["arm"] == "real+oracle-ungated"
    (row,) = table.claim_rows(claim, 20)
    cells = [x.strip() for x in row.strip("|").split("|")]
    assert cells[2] == "3" and cells[-1] == "real+ungated: better"
    assert cells[-2].count(" / ") == 2  # the three replicates' deltas


def test_replicates_that_disagree_in_sign_get_no_verdict(tmp_path):
    worse = {**SKILL, "real+ungated": 0.62}  # below its classical control in one replicate
    claim = replicates.claim(replicate_dirs(tmp_path / "toy", [SKILL, SKILL, worse]))
    vs = claim["models"]["m"]["synthetic_minus_classical"]
    assert not vs["agree_in_sign"]
    assert vs["verdict"] == replicates.DISAGREE


def test_fewer_than_three_replicates_or_a_budget_bound_one_withhold_the_verdict(tmp_path):
    two = replicates.claim(replicate_dirs(tmp_path / "two", [SKILL] * 2))["models"]["m"]
    assert not two["verdicts_allowed"]
    assert two["synthetic_minus_classical"]["verdict"] == replicates.WITHHELD
    assert replicates.TOO_FEW in two["reasons"][0]
    bound = replicate_dirs(tmp_path / "bound", [SKILL] * 3, bound=["real+ungated"])
    c = replicates.claim(bound)["models"]["m"]
    assert not c["verdicts_allowed"] and any("budget-bound" in r for r in c["reasons"])


def test_an_oracle_that_does_not_beat_real_withholds_the_verdict(tmp_path):
    flat = {**SKILL, "real+oracle-ungated": 0.70}
    c = replicates.claim(replicate_dirs(tmp_path / "toy", [flat] * 3))["models"]["m"]
    assert not c["verdicts_allowed"]
    assert "real+oracle-ungated does not beat real" in c["reasons"][0]


def test_each_datasets_replicates_md_is_its_committed_files():
    assert replicates.main(["--check"]) == 0


def write_segmentation(folder, k: int, gain: float, older: bool = False):
    """A replicate with only the U-Net's per-image Dice: the ungated arm `gain` above its
    classical control on every image (plus noise), the oracle 0.05 above real. `older`:
    a results.json from before it kept the primary metric (its validity names it)."""
    import numpy as np
    import pandas as pd

    folder.mkdir(parents=True)
    rng = np.random.default_rng(k)
    base = rng.uniform(0.3, 0.7, 120)
    shift = {"real": 0.0, "real+ungated": 0.02 + gain, "real+classical-ungated": 0.02,
             "real+oracle-ungated": 0.05, "all-train": 0.06}  # fmt: skip
    rows = [{"condition": c, "seed": s, "image_id": f"t{i}", "label": LABELS[i % 2],
             "dice": float(base[i] + d + rng.normal(0, 0.01))}
            for c, d in shift.items() for s in range(3) for i in range(120)]  # fmt: skip
    pd.DataFrame(rows).to_parquet(folder / "segment-test_scores.parquet")
    check = {"budget_bound": [], "degenerate": {}, "reasons": []}
    result = {"dataset": "toy", "replicate": k, "git": "abc1234",
              "params": {"preprocess": {"subset": {"per_class": 20}}},
              "classification": {"labels": LABELS, "primary_metric": "balanced_accuracy",
                                 "validity": {}, "comparisons": {}},
              "segmentation": {"primary_metric": "dice", "validity": check}}  # fmt: skip
    if older:
        result["segmentation"] = {"validity": {**check, "metric": "dice"}}
    (folder / "results.json").write_text(json.dumps(result))


def test_the_u_nets_claim_reads_its_per_image_scores_over_two_replicates(tmp_path):
    root = tmp_path / "toy"
    for k in range(2):
        write_segmentation(root / (f"replicate-{k}" if k else ""), k, gain=0.03, older=k == 1)
    c = replicates.claim(root)["models"][replicates.UNET]
    assert c["metric"] == "dice" and c["replicates"] == [0, 1]
    assert c["verdicts_allowed"], c["reasons"]  # two replicates suffice for the U-Net
    vs = c["synthetic_minus_classical"]
    assert vs["per_replicate"] == pytest.approx([0.03, 0.03], abs=0.005)
    assert vs["verdict"] == "better" and vs["agree_in_sign"]
    (row,) = table.claim_rows(replicates.claim(root), 20)
    assert "| U-Net | 2 | 20 | Dice | yes |" in row
