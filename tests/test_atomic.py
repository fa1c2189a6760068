"""defectgen.atomic: an output appears whole or not at all, and a link never lets a
writer reach the raw file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from defectgen.atomic import atomic_dir, atomic_write_bytes, atomic_write_json, link_or_copy


def test_a_failed_folder_write_leaves_the_old_output_whole(tmp_path: Path):
    out = tmp_path / "out"
    with atomic_dir(out) as tmp:
        (tmp / "a.txt").write_text("first")
    with pytest.raises(KeyboardInterrupt), atomic_dir(out) as tmp:
        (tmp / "a.txt").write_text("half")
        raise KeyboardInterrupt  # killed half-way
    assert (out / "a.txt").read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temp folder left


def test_a_killed_run_s_temp_folder_is_removed_by_the_next(tmp_path: Path):
    stale = tmp_path / ".out.tmp-killed"
    stale.mkdir()
    (stale / "partial").write_text("x")
    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "b.txt").write_text("second")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["b.txt"]  # replaced whole


def test_a_file_write_replaces_the_file_or_leaves_it(tmp_path: Path, monkeypatch):
    path = tmp_path / "sub" / "f.json"
    atomic_write_json(path, {"b": 1, "a": [1, 2]})
    assert path.read_text() == '{\n  "a": [\n    1,\n    2\n  ],\n  "b": 1\n}\n'

    def crash(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(path, b"new")
    assert path.read_text().startswith('{\n  "a"')  # the old file, whole
    assert [p.name for p in path.parent.iterdir()] == ["f.json"]  # no temp file left


def test_a_link_shares_the_raw_file_and_a_copy_does_not(tmp_path: Path):
    raw = tmp_path / "raw.png"
    raw.write_bytes(b"pixels")
    link_or_copy(raw, tmp_path / "linked" / "a.png", prefer_link=True)
    link_or_copy(raw, tmp_path / "copied" / "a.png", prefer_link=False)
    assert (tmp_path / "linked" / "a.png").stat().st_ino == raw.stat().st_ino
    assert (tmp_path / "copied" / "a.png").stat().st_ino != raw.stat().st_ino
    assert (tmp_path / "copied" / "a.png").read_bytes() == b"pixels"
