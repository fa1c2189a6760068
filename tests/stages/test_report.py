"""The report stage's sections from the stages' records (the whole page: tests/e2e/)."""

from __future__ import annotations

import json

from defectgen.stages.report import _gate


def _entry(passed: bool, verdict: str, reason: str) -> dict:
    return {
        "passed": passed, "verdict": verdict, "reason": reason, "fd_effnet_lite0": 30.0,
        "fd_effnet_lite0_real": 10.0, "fd_effnet_lite0_blur": 90.0,
        "fd_effnet_lite0_noise": 80.0, "near_duplicates": 0, "n_kept": 4 if passed else 0,
    }  # fmt: skip


def test_the_gate_table_gives_the_gates_own_verdict_and_reason(tmp_path):
    """pass / fail / inconclusive as gate.json has them: a class kept out as inconclusive
    reads "inconclusive", not "fail" (it did not pass)."""
    (tmp_path / "sweep").mkdir()
    (tmp_path / "gated").mkdir()
    cell = {"strength": 0.5, "guidance": 2.0}
    (tmp_path / "sweep" / "chosen.json").write_text(
        json.dumps({"source": "sweep", "classes": {"crack": cell, "dent": cell}})
    )
    why = "no harm? val accuracy 1.1 pp lower; kept out (gate.inconclusive)"
    gate = {"extractor": "effnet-lite0", "note": "offline", "classes": {
        "crack": _entry(True, "pass", "ratio check"),
        "dent": _entry(False, "inconclusive", why)}}  # fmt: skip
    (tmp_path / "gated" / "gate.json").write_text(json.dumps(gate))
    sec, passed, kept = _gate(tmp_path / "sweep", tmp_path / "gated")
    md = "\n".join(sec.markdown)
    assert (passed, kept) == (1, 4)
    assert "| pass: ratio check |" in md and f"| inconclusive: {why} |" in md
    assert "fail:" not in md
    html = "".join(sec.blocks)
    assert '<td class="inconclusive">' in html and '<td class="pass">' in html


def _class_row(label: str, delta: float, ci: list[float], verdict: str) -> dict:
    return {"label": label, "arm": "real+ungated", "control": "real+classical-ungated",
            "metric": "f1", "delta": delta, "ci": ci, "p_value": 0.01, "n_seeds": 5,
            "verdict": verdict}  # fmt: skip


def test_the_first_screen_answers_per_class_and_says_what_to_do_next():
    from defectgen.stages.report import _answer, _summary

    row = {"arm": "real+ungated", "control": "real+classical-ungated",
           "metric": "balanced_accuracy", "delta": 0.031, "ci": [0.012, 0.05],
           "p_value": 0.004, "p_adjusted": 0.008, "n_seeds": 5, "n_images": 261,
           "verdict": "better"}  # fmt: skip
    evaluation = {
        "primary_metric": "balanced_accuracy",
        "validity": {"probe": {"verdicts_allowed": True, "statement": "More data helps"}},
        "comparisons": {"probe": [row]},
        "per_class_vs_classical": {"probe": {"real+ungated": [
            _class_row("crack", 0.04, [0.01, 0.07], "better"),
            _class_row("dent", -0.05, [-0.08, -0.02], "worse"),
            _class_row("pit", 0.01, [-0.02, 0.04], "not distinguishable")]}},
        "per_class_vs_real": {"probe": {"real+ungated": [
            _class_row("crack", 0.06, [0.03, 0.09], "better"),
            _class_row("dent", 0.0, [-0.03, 0.03], "not distinguishable"),
            _class_row("pit", 0.02, [-0.01, 0.05], "not distinguishable")]}},
    }  # fmt: skip
    gate = {"classes": {c: {"verdict": "inconclusive", "passed": False, "n_kept": 0,
                            "n_synthetic": 64} for c in ("crack", "dent", "pit")}}  # fmt: skip
    sec = _answer(evaluation, gate, tiny_prior=True)
    md = "\n".join(sec.markdown)
    assert "| crack | inconclusive | 0 / 64 | +4.0 pp [+1.0, +7.0] (better) | " \
           "+6.0 pp [+3.0, +9.0] (better) |" in md  # fmt: skip
    assert "| pit | inconclusive | 0 / 64 | +1.0 pp [-2.0, +4.0] (not resolved) |" in md
    assert "Keep the synthetic images for crack" in md
    assert "Leave dent's synthetic images out" in md and "pit" not in md.split("What next")[1]
    assert "sd15 profile on a GPU" in md and "The gate kept every class out" in md
    # the summary says the answer once, in words, with what it covers and the caveat
    summary = _summary((sec, 0, 0), 3, "Adding the synthetic images helped more.", True)
    sentences = [s.strip() for s in summary.split(". ") if s.strip()]
    assert len(sentences) == len(set(sentences))
    assert "In the comparison's terms" not in summary and "tiny CPU prior" in summary
    assert "test images" in summary
    assert "balanced_accuracy" not in md + summary  # words, not metric keys


def test_when_the_run_gives_no_answer_no_class_gets_a_verdict_either():
    from defectgen.stages.report import _answer

    statement = "This budget cannot measure the value of data here: ..."
    evaluation = {
        "primary_metric": "balanced_accuracy",
        "validity": {"probe": {"verdicts_allowed": False, "statement": statement}},
        "comparisons": {"probe": []},
        "per_class_vs_real": {"probe": {"real+ungated": [
            _class_row("crack", 0.05, [0.02, 0.08], "better")]}},
    }  # fmt: skip
    md = "\n".join(_answer(evaluation, None, tiny_prior=False).markdown)
    assert "+5.0 pp [+2.0, +8.0] (no verdict)" in md and "(better)" not in md
    assert "More test images, a larger dataset" in md
