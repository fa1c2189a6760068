"""The yolo layout: an Ultralytics YOLO / YOLO-seg dataset (data.yaml, images/ and labels/
per split) read by ingest, on a PIL-made fixture, and our own YOLO exports read back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from defectgen import export, manifest
from defectgen.core.images import decode_image
from defectgen.errors import DataError
from tests.conftest import make_params, run_stage, save, texture
from tests.test_export import _run


def _reasons(out: Path) -> dict[str, str]:
    report = json.loads((out / "ingest_report.json").read_text())
    return {s["path"]: s["reason"] for s in report["skipped"]}


def _label(root: Path, split: str, stem: str, lines: list[str]) -> None:
    path = root / "labels" / split / f"{stem}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines))


def _dataset(root: Path) -> Path:
    """40x40 textures: crack images with a polygon (a 10x20 px rectangle), hole images
    with two polygons, defect-free images with empty (or no) label files, and three
    broken label files."""
    root.mkdir(parents=True)
    (root / "data.yaml").write_text(
        yaml.safe_dump(
            {
                "path": "/nowhere/moved",
                "train": "images/train",
                "val": "images/val",
                "names": {0: "crack", 1: "hole"},
            }
        )  # fmt: skip
    )
    for i in range(4):
        split = "train" if i < 3 else "val"
        save(texture(i), root / "images" / split / f"crack{i}.png")
        # x 0.25-0.75 (10-30 px), y 0.125-0.375 (5-15 px)
        _label(root, split, f"crack{i}", ["0 0.25 0.125 0.75 0.125 0.75 0.375 0.25 0.375"])
        save(texture(10 + i), root / "images" / split / f"hole{i}.png")
        _label(root, split, f"hole{i}", ["1 0 0 0.25 0 0.25 0.25 0 0.25",
                                         "1 0.5 0.5 1 0.5 1 1 0.5 1"])  # fmt: skip
        save(texture(20 + i), root / "images" / split / f"good{i}.png")
        if i % 2:
            _label(root, split, f"good{i}", [])  # empty; the others have no file at all
    broken = {"bad_class": "7 0.1 0.1 0.2 0.1 0.2 0.2", "bad_count": "0 0.1 0.2 0.3",
              "bad_range": "0 0.5 0.5 1.5 0.2"}  # fmt: skip
    for k, (stem, line) in enumerate(broken.items()):
        save(texture(30 + k), root / "images" / "train" / f"{stem}.png")
        _label(root, "train", stem, ["0 0.5 0.5 0.2 0.2", line])
    return root


def test_yolo_seg_polygons_become_masks_and_empty_labels_a_normal_class(tmp_path: Path):
    root = _dataset(tmp_path / "yolo")
    out = tmp_path / "out"
    params = make_params("yolo", root, data={"normal_classes": ["good"]})
    metrics = run_stage("ingest", params, out_dir=out)
    assert metrics["count/crack"] == 4 and metrics["count/hole"] == 4
    assert metrics["count/good"] == 4  # empty label files and missing ones alike
    rows = {r["original_path"]: r for r in manifest.read_rows(out)}
    mask, _ = decode_image((out / rows["images/train/crack0.png"]["mask_path"]).read_bytes())
    expected = np.zeros((40, 40), np.uint8)
    expected[5:15, 10:30] = 255
    assert np.array_equal(mask, expected)
    (box,) = rows["images/val/crack3.png"]["boxes"]
    assert (box["label"], box["x0"], box["y0"], box["x1"], box["y1"]) == ("crack", 10, 5, 30, 15)
    holes, _ = decode_image((out / rows["images/train/hole1.png"]["mask_path"]).read_bytes())
    assert holes[:10, :10].all() and holes[20:, 20:].all() and not holes[12:18].any()
    # a defect-free image of a YOLO-seg dataset: an all-zero mask, "no defect"
    good, _ = decode_image((out / rows["images/train/good1.png"]["mask_path"]).read_bytes())
    assert good.shape == (40, 40) and not good.any()
    # each broken label file costs its own image only, and says where and what
    reasons = _reasons(out)
    assert set(reasons) == {f"images/train/{s}.png" for s in ("bad_class", "bad_count",
                                                               "bad_range")}  # fmt: skip
    assert reasons["images/train/bad_class.png"].startswith(
        "label file labels/train/bad_class.txt: line 2: class 7 is not in data.yaml's 2 names"
    )
    assert "line 2: 3 values" in reasons["images/train/bad_count.png"]
    assert "line 2: coordinates outside 0-1" in reasons["images/train/bad_range.png"]
    # the moved dataset's stale `path` is said, and its own folder read instead
    report = json.loads((out / "ingest_report.json").read_text())
    assert any("'/nowhere/moved' not found" in w for w in report["warnings"])


def test_without_a_normal_class_defect_free_images_are_skipped_saying_how_to_keep_them(
    tmp_path: Path,
):
    root = _dataset(tmp_path / "yolo")
    out = tmp_path / "out"
    run_stage("ingest", make_params("yolo", root), out_dir=out)
    reason = _reasons(out)["images/train/good1.png"]
    assert "no objects in labels/train/good1.txt" in reason and "data.normal_classes" in reason


def test_a_yolo_data_file_without_names_is_refused_naming_the_file(tmp_path: Path):
    root = tmp_path / "yolo"
    root.mkdir()
    (root / "data.yaml").write_text("train: images/train\n")
    with pytest.raises(DataError, match=r"data.yaml: not an Ultralytics data file .*'names'"):
        run_stage("ingest", make_params("yolo", root), out_dir=tmp_path / "out")


@pytest.mark.parametrize("fmt", ["yolo", "yolo-seg"])
def test_our_yolo_export_reads_back_as_it_was(tmp_path: Path, fmt: str):
    """Export a run's real images as YOLO (boxes) or YOLO-seg (polygons), ingest the
    export with the yolo layout: the same images, classes, boxes and masks."""
    run = _run(tmp_path / "run", masks=fmt == "yolo-seg")
    out = tmp_path / fmt
    export.export(run, fmt=fmt, condition="all-train", out=out)
    back = tmp_path / "back"
    run_stage(
        "ingest", make_params("yolo", out, data={"normal_classes": ["background"]}), out_dir=back
    )
    source = {r["id"]: r for r in manifest.read_rows(run.preprocessed)}
    rows = manifest.read_rows(back)
    assert {r["id"] for r in rows} == set(source)  # pixel ids: the very images
    for row in rows:
        was = source[row["id"]]
        if fmt == "yolo":
            assert row["label"] == was["label"]
            (box,) = row["boxes"]
            (old,) = was["boxes"]
            assert [box[k] for k in ("x0", "y0", "x1", "y1")] == pytest.approx(
                [old[k] for k in ("x0", "y0", "x1", "y1")], abs=1e-3
            )
            continue
        mask, _ = decode_image((back / row["mask_path"]).read_bytes())
        original, _ = decode_image((run.preprocessed / was["mask_path"]).read_bytes())
        assert np.array_equal(mask > 127, original > 127), row["original_path"]
        # the defect-free test image comes back as the normal class; the rest as they were
        assert row["label"] == (was["label"] if original.any() else "background")


def test_class_ids_must_be_0_to_n_minus_1_and_string_keys_keep_their_numeric_order(tmp_path):
    from defectgen import layouts

    root = tmp_path / "yolo"
    names = {str(i): f"c{i}" for i in range(12)}  # "10" sorts before "2" as text
    save(texture(1), root / "images" / "a.png")
    _label(root, "", "a", ["10 0.1 0.1 0.2 0.2"])
    (root / "data.yaml").write_text(yaml.safe_dump({"train": "images", "names": names}))
    (c,) = layouts.discover(make_params("yolo", root).data, root).candidates
    assert c.label == "c10"
    (root / "data.yaml").write_text(yaml.safe_dump({"train": "images", "names": {1: "x"}}))
    with pytest.raises(DataError, match=r"class ids \[1\] are not 0..0"):
        layouts.discover(make_params("yolo", root).data, root)


def test_a_label_file_without_its_image_is_reported_by_file(tmp_path: Path):
    root = _dataset(tmp_path / "yolo")
    _label(root, "train", "099", ["0 0.5 0.5 0.2 0.2"])  # a crack whose image is missing
    out = tmp_path / "out"
    params = make_params("yolo", root, data={"normal_classes": ["good"]})
    run_stage("ingest", params, out_dir=out)
    reasons = _reasons(out)
    assert "label file without its image" in reasons["labels/train/099.txt"]
    assert not any(p.startswith("labels/val") for p in reasons)  # every val label has its image
