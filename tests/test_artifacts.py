"""defectgen.artifacts: every output file is named there and every record one stage hands
another is read through its readers, which name the file and the fix when it is wrong."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pandas as pd
import pytest

from defectgen import artifacts
from defectgen.errors import DataError

SRC = Path(__file__).resolve().parents[1] / "src" / "defectgen"
RECORDS = {
    name: value
    for name in dir(artifacts)
    if name.isupper()
    and isinstance(value := getattr(artifacts, name), str)
    and value.endswith((".json", ".parquet", ".csv"))
}
# a stage's own resume units, which it writes and reads back itself
OWN = {"RECORD_JSON", "CELLS_JSON"}
READS = {"json.loads", "pd.read_parquet", "pq.read_table", "pd.read_csv"}


def _bypasses(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, code) of each read of a record that does not go through artifacts: a file
    name spelled out, or a record constant opened with json/pandas/pyarrow directly."""
    prose = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            prose.add(id(body[0].value))
    found = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Constant)
            and id(node) not in prose
            and node.value in RECORDS.values()
        ):
            found.append((node.lineno, repr(node.value)))
        if isinstance(node, ast.Call) and ast.unparse(node.func) in READS:
            names = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
            if names & (set(RECORDS) - OWN):
                found.append((node.lineno, ast.unparse(node)))
    return found


def test_every_record_is_named_and_read_through_artifacts():
    found = [
        f"{path.relative_to(SRC)}:{line} {code}"
        for path in sorted(SRC.rglob("*.py"))
        if path.name != "artifacts.py"
        for line, code in _bypasses(ast.parse(path.read_text(encoding="utf-8")))
    ]
    assert found == []


def test_the_scan_catches_a_spelled_out_name_and_a_direct_read():
    code = (
        "def f(d):\n"
        '    """reads gate.json"""\n'
        '    a = json.loads((d / "gate.json").read_text())\n'
        "    b = pd.read_parquet(d / MASKS_PARQUET)\n"
        "    c = json.loads((d / RECORD_JSON).read_text())\n"
    )
    lines = sorted(line for line, _ in _bypasses(ast.parse(code)))
    assert lines == [3, 4]


def test_a_reader_names_the_file_the_stage_and_the_fix(tmp_path: Path):
    with pytest.raises(DataError, match=r"gate\.json: missing; pass the gate stage's output"):
        artifacts.read_gate(tmp_path)
    (tmp_path / artifacts.GATE_JSON).write_text("{not json")
    with pytest.raises(DataError, match="unreadable"):
        artifacts.read_gate(tmp_path)
    (tmp_path / artifacts.GATE_JSON).write_text(json.dumps({"extractor": "x"}))
    with pytest.raises(DataError, match=r"lacks \['classes'\]"):
        artifacts.read_gate(tmp_path, option="pairs_gated")
    with pytest.raises(DataError, match="--masks"):
        artifacts.read_masks_table(tmp_path)
    pd.DataFrame({"id": ["m1"], "parents": ['["a"]']}).to_parquet(
        tmp_path / artifacts.MASKS_PARQUET
    )
    assert artifacts.read_masks_table(tmp_path) == [{"id": "m1", "parents": '["a"]'}]


def test_the_sweep_s_choice_must_cover_every_class(tmp_path: Path):
    cell = {"strength": 0.3, "guidance": 1.5}
    (tmp_path / artifacts.CHOSEN_JSON).write_text(json.dumps({"classes": {"a": cell}}))
    assert artifacts.read_chosen(tmp_path, ["a"]) == {"a": cell}
    with pytest.raises(DataError, match=r"no chosen settings for classes \['b'\]"):
        artifacts.read_chosen(tmp_path, ["a", "b"])
