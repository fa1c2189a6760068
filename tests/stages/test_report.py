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
    why = "by the utility, held-out loss 0.011 lower; kept out (gate.inconclusive)"
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
