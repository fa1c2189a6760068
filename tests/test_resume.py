"""Resume: finished units survive a killed or failed run; ensure_many runs units in
worker processes (train.workers) with the same results and the same resume rules."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from defectgen.resume import Resume


def write_where(unit: Path, value: int) -> None:
    """A unit: records its value and the process and thread setting it ran with."""
    if value < 0:
        raise ValueError(f"unit {value} fails")
    record = {"value": value, "pid": os.getpid(), "omp": os.environ.get("OMP_NUM_THREADS")}
    (unit / "record.json").write_text(json.dumps(record))


def _jobs(values: list[int]) -> list[tuple[str, object, tuple]]:
    return [(f"u{i}", write_where, (v,)) for i, v in enumerate(values)]


def _records(done: list[tuple[Path, float | None]]) -> list[dict]:
    return [json.loads((path / "record.json").read_text()) for path, _ in done]


def test_units_run_in_one_thread_workers_and_keep_their_order(tmp_path):
    resume = Resume(tmp_path / "out", "key")
    done = resume.ensure_many(_jobs([3, 1, 2]), workers=2)
    records = _records(done)
    assert [r["value"] for r in records] == [3, 1, 2]
    assert all(r["pid"] != os.getpid() and r["omp"] == "1" for r in records)
    assert all(seconds is not None for _, seconds in done)
    # everything finished: a rerun starts no process and returns the same folders
    again = resume.ensure_many(_jobs([3, 1, 2]), workers=2)
    assert [p for p, _ in again] == [p for p, _ in done] and all(s is None for _, s in again)
    # one worker: in this process, the same folders
    serial = Resume(tmp_path / "serial", "key").ensure_many(_jobs([3, 1, 2]), workers=1)
    assert [r["pid"] for r in _records(serial)] == [os.getpid()] * 3


def test_a_failing_unit_keeps_the_finished_ones_for_the_rerun(tmp_path):
    resume = Resume(tmp_path / "out", "key")
    with pytest.raises(ValueError, match="unit -1 fails"):
        resume.ensure_many(_jobs([5, -1, 6, 7]), workers=2)
    assert resume.done("u1") is None
    finished = {u for u in ("u0", "u2", "u3") if resume.done(u) is not None}
    assert finished == {"u0", "u2", "u3"}  # the pool finishes the others before raising
    rerun = resume.ensure_many(_jobs([5, 4, 6, 7]), workers=2)
    assert [s is None for _, s in rerun] == [True, False, True, True]  # only u1 again
    assert [r["value"] for r in _records(rerun)] == [5, 4, 6, 7]


def test_each_unit_ticks_once_as_it_finishes_and_units_prints_k_of_n(tmp_path, capfd):
    from defectgen.progress import Units

    resume = Resume(tmp_path / "out", "key")
    resume.ensure(_jobs([3])[0][0], write_where, 3)  # u0 finished by an earlier run
    units = Units("train", "run", 3)
    ticks: list[tuple[str, bool]] = []

    def tick(unit: str, seconds: float | None) -> None:
        ticks.append((unit, seconds is None))
        units.tick(unit, seconds)

    resume.ensure_many(_jobs([3, 1, 2]), workers=2, tick=tick)
    assert ticks[0] == ("u0", True)  # the finished one first, as found
    assert sorted(ticks[1:]) == [("u1", False), ("u2", False)]
    lines = capfd.readouterr().err.splitlines()
    assert lines[0] == "[train] run 1/3 (u0) already done"
    assert lines[1].startswith("[train] run 2/3 (u") and lines[1].endswith(" min left")
    assert lines[2].startswith("[train] run 3/3 (u") and "min left" not in lines[2]
    # one worker ticks in the jobs' order, resumed or not
    ticks.clear()
    Resume(tmp_path / "serial", "key").ensure_many(_jobs([3, 1]), tick=tick)
    assert ticks == [("u0", False), ("u1", False)]


def test_the_time_left_counts_wall_time_so_units_run_in_parallel_are_not_counted_twice(
    capfd, monkeypatch
):
    from defectgen import progress

    clock = iter([100.0, 100.0, 130.0])  # two units of 10 s each finish together, then one
    monkeypatch.setattr(progress.time, "perf_counter", lambda: next(clock))
    units = progress.Units("segment", "U-Net", 6)
    units.tick("a", 10.0)  # started at 90
    units.tick("b", 10.0)  # beside it: 2 units in 10 s of wall time
    units.tick("c", 10.0)  # and a third, after a wait: 3 units in 40 s
    lines = capfd.readouterr().err.splitlines()
    assert lines[0].endswith("about 0.8 min left")  # 5 to come at 10 s each
    assert lines[1].endswith("about 0.3 min left")  # 4 at 5 s: not 4 x 10 s
    assert lines[2].endswith("about 0.7 min left")  # 3 at 40/3 s: not 3 x 10 s
