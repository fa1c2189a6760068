"""defectgen.progress: plain progress lines on stderr, one per step window and unit,
with what is left."""

from __future__ import annotations

import pytest

from defectgen.progress import Units, progress


def test_a_loop_says_it_starts_and_ends_and_still_logs_every_step(capsys):
    logged = []
    step = progress("vae", 3, lambda s, v: logged.append((s, v)), every_s=3600)
    for s in range(3):
        step(s, 1.0 / (s + 1))
    lines = capsys.readouterr().err.splitlines()
    assert logged == [(0, 1.0), (1, 0.5), (2, 1.0 / 3)]
    assert lines[0] == "[vae] 3 steps ..."
    assert len(lines) == 2 and lines[1].startswith("[vae] step 3/3, loss 0.3333, ")
    assert lines[1].endswith("about 0.0 min left")


def test_units_count_up_and_say_what_a_resumed_unit_is(capsys, monkeypatch):
    clock = iter([100.0, 160.0])
    monkeypatch.setattr("defectgen.progress.time.perf_counter", lambda: next(clock))
    units = Units("finetune", "class", 3)
    units.tick("crack", None)
    units.tick("dent", 30.0)  # built in 30 s, finishing at t=100
    units.tick("pit", 30.0)  # the next one at t=160
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "[finetune] class 1/3 (crack) already done"
    # 1 built over the 30 s since building began, 1 unit to come: 0.5 min left
    assert lines[1] == "[finetune] class 2/3 (dent) done in 30.0 s; about 0.5 min left"
    assert lines[2] == "[finetune] class 3/3 (pit) done in 30.0 s"
    with pytest.raises(StopIteration):  # the clock was read once per built unit
        next(clock)
