"""The cluster fan-in: per-class stage outputs merged as one run over every class writes
them, and conflicts refused by name."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from defectgen import manifest
from defectgen.cluster import fanin
from defectgen.errors import DataError
from tests.conftest import make_params, save


def _part(root: Path, label: str, shade: int, *, extractor: str = "effnet-lite0") -> Path:
    """A gate-like per-class output: gate.json, gate.csv, a manifest, a grid and an image."""
    part = root / label
    (part / "images" / label).mkdir(parents=True)
    save(np.full((4, 4), shade, np.uint8), part / "images" / label / "a.png")
    save(np.full((2, 3 + shade % 5), shade, np.uint8), part / "samples.png")
    gate = {"extractor": extractor, "classes": {label: {"passed": shade > 100}}}
    (part / "gate.json").write_text(json.dumps(gate))
    (part / "gate.csv").write_text(f"label,passed\n{label},{shade > 100}\n")
    row = manifest.make_row(id=f"{shade:016x}", path=f"images/{label}/a.png", label=label,
                            split="train", width=4, height=4, channels=1, origin="synthetic",
                            parent_id="p", generator="g", gen_params="{}", source="s")  # fmt: skip
    manifest.write_manifest([row], part / manifest.MANIFEST_NAME)
    return part


def test_merge_equals_one_output_over_every_class(tmp_path: Path):
    parts = [_part(tmp_path, "crack", 50), _part(tmp_path, "dent", 150)]
    out = tmp_path / "merged"
    assert fanin.merge(parts, out) == {"n_parts": 2, "n_files": 6}
    gate = json.loads((out / "gate.json").read_text())
    assert gate == {
        "extractor": "effnet-lite0",
        "classes": {"crack": {"passed": False}, "dent": {"passed": True}},
    }
    assert (out / "gate.csv").read_text() == "label,passed\ncrack,False\ndent,True\n"
    assert [r["label"] for r in manifest.read_rows(out)] == ["crack", "dent"]
    assert (out / "images" / "dent" / "a.png").read_bytes() == (
        parts[1] / "images" / "dent" / "a.png"
    ).read_bytes()
    grid = np.asarray(Image.open(out / "samples.png"))  # stacked, padded to the widest
    assert grid.shape == (4, 3 + 150 % 5) and grid[0, 0] == 50 and grid[2, 0] == 150
    assert fanin.verdict(out, "dent") == "pass" and fanin.verdict(out, "crack") == "fail"
    with pytest.raises(DataError, match="no verdict for class 'scratch'"):
        fanin.verdict(out, "scratch")


def test_merge_refuses_disagreeing_parts_and_nothing(tmp_path: Path):
    parts = [_part(tmp_path, "crack", 50), _part(tmp_path, "dent", 150, extractor="inception")]
    with pytest.raises(DataError, match=r"gate.json.extractor: the per-class outputs disagree"):
        fanin.merge(parts, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()  # nothing half-written
    with pytest.raises(DataError, match="nothing to merge"):
        fanin.merge([], tmp_path / "merged")


def test_fan_out_classes_follow_params_and_data(tmp_path: Path):
    rows = [
        manifest.make_row(
            id=f"{i:016x}",
            path=f"{c}/{i}.png",
            label=c,
            split=s,
            width=4,
            height=4,
            channels=1,
            origin="real",
            source="x",
        )  # fmt: skip
        for i, (c, s) in enumerate([("dent", "train"), ("crack", "train"), ("pit", "val")])
    ]
    manifest.write_manifest(rows, tmp_path / manifest.MANIFEST_NAME)
    assert fanin.classes(make_params(root=tmp_path), tmp_path) == ["crack", "dent"]
    narrowed = make_params(root=tmp_path, finetune={"classes": ["dent"]})
    assert fanin.classes(narrowed, tmp_path) == ["dent"]
    # a defect-free class is classified, never adapted
    normal = make_params(root=tmp_path, data={"normal_classes": ["crack"]})
    assert fanin.classes(normal, tmp_path) == ["dent"]
