"""COCO export (defectgen.core.coco) read back through pycocotools' own COCO API."""

import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO

from defectgen.core import coco


def _mask(boxes: list[tuple[int, int, int, int]], shape=(40, 50)) -> np.ndarray:
    out = np.zeros(shape, np.uint8)
    for r0, r1, c0, c1 in boxes:
        out[r0:r1, c0:c1] = 255
    return out


def _load(data: dict, path: Path) -> COCO:
    path.write_text(json.dumps(data))
    return COCO(str(path))


def test_round_trip_through_pycocotools(tmp_path: Path):
    two = _mask([(2, 6, 3, 10), (20, 30, 30, 33)])  # two regions: two instances
    one = _mask([(5, 15, 5, 15)])
    samples = [
        coco.Sample("a.png", "scratch", "train", "real", two, defectgen_id="r1"),
        coco.Sample("b.png", "patch", "train", "synthetic", one, defectgen_id="s1",
                    parent_id="r1"),
        coco.Sample("c.png", "patch", "test", "real", one, defectgen_id="r2"),
    ]  # fmt: skip
    api = _load(coco.build(samples, ["patch", "scratch"], "train"), tmp_path / "train.json")
    assert [c["name"] for c in api.loadCats(api.getCatIds())] == ["patch", "scratch"]
    assert len(api.getImgIds()) == 2 and len(api.getAnnIds()) == 3
    first = api.loadImgs(1)[0]
    assert (first["file_name"], first["height"], first["width"]) == ("a.png", 40, 50)
    synthetic = api.loadImgs(2)[0]
    assert synthetic["origin"] == "synthetic" and synthetic["parent_id"] == "r1"

    anns = api.loadAnns(api.getAnnIds(imgIds=[1]))
    decoded = [api.annToMask(a).astype(bool) for a in anns]
    assert np.array_equal(np.logical_or(*decoded), two > 0)  # the instances make the mask
    assert sorted(a["area"] for a in anns) == [28.0, 30.0]  # 4x7 and 10x3 pixels
    box = next(a for a in anns if a["area"] == 28.0)["bbox"]
    assert box == [3.0, 2.0, 7.0, 4.0]  # x, y, w, h
    assert all(a["iscrowd"] == 0 and a["category_id"] == 2 for a in anns)
    (patch,) = api.loadAnns(api.getAnnIds(imgIds=[2]))
    assert patch["category_id"] == 1 and np.array_equal(api.annToMask(patch), one > 0)

    test = _load(coco.build(samples, ["patch", "scratch"], "test"), tmp_path / "test.json")
    assert [i["file_name"] for i in test.loadImgs(test.getImgIds())] == ["c.png"]


def test_an_image_without_defect_has_no_instance(tmp_path: Path):
    samples = [coco.Sample("ok.png", "patch", "val", "real", np.zeros((8, 8), np.uint8))]
    api = _load(coco.build(samples, ["patch"], "val"), tmp_path / "val.json")
    assert len(api.getImgIds()) == 1 and api.getAnnIds() == []


def test_synthetic_outside_train_and_unknown_classes_are_refused():
    mask = _mask([(0, 2, 0, 2)])
    with pytest.raises(ValueError, match="synthetic images belong to train only"):
        coco.build([coco.Sample("s.png", "patch", "test", "synthetic", mask)], ["patch"], "test")
    with pytest.raises(ValueError, match="class 'dent' not in"):
        coco.build([coco.Sample("d.png", "dent", "train", "real", mask)], ["patch"], "train")
