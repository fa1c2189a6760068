"""defectgen.curves: loss curves as `<series>.csv` (step, loss), read back for a resumed
unit, and summarised."""

from __future__ import annotations

from pathlib import Path

from defectgen.curves import Curves


def test_curves_round_trip_through_their_csv_files(tmp_path: Path):
    curves = Curves()
    log = curves.logger("crack.lora")
    for step, value in enumerate([4.0, 2.0, 1.0, 0.5]):
        log(step, value)
    curves.write(tmp_path / "curves")
    assert (tmp_path / "curves" / "crack.lora.csv").read_text() == (
        "step,loss\n0,4\n1,2\n2,1\n3,0.5\n"
    )
    resumed = Curves()
    resumed.extend_from(tmp_path / "curves")
    assert resumed.series == {"crack.lora": [4.0, 2.0, 1.0, 0.5]}


def test_a_summary_reads_the_first_and_last_tenth_and_the_minimum():
    curves = Curves()
    log = curves.logger("vae")
    for step in range(20):  # 20 steps: each tenth is 2 values
        log(step, 20.0 - step)
    assert curves.summary("vae") == {
        "steps": 20, "first_mean": 19.5, "last_mean": 1.5, "min": 1.0
    }  # fmt: skip
    assert curves.summary("unet") == {}  # a series that never logged
