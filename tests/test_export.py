"""`defectgen export`: a finished run's expanded training set and real val/test splits in
four formats, read back with the tools users train with (torchvision's ImageFolder,
pycocotools' COCO, the YOLO label format), with provenance beside the files."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from pycocotools.coco import COCO

from defectgen import cli, export, manifest
from defectgen._torchvision_compat import ensure_torchvision_importable
from defectgen.core.images import encode_png, pixel_id
from defectgen.errors import DataError

H, W = 32, 40
RECT = {"scratch": (4, 12, 6, 30), "patch": (10, 26, 20, 36)}  # rows r0:r1, columns c0:c1


def _image(rng: np.random.Generator, label: str, empty: bool = False):
    pixels = rng.integers(0, 120, (H, W), dtype=np.uint8)
    mask = np.zeros((H, W), np.uint8)
    if not empty:
        r0, r1, c0, c1 = RECT[label]
        pixels[r0:r1, c0:c1] = 230
        mask[r0:r1, c0:c1] = 255
    return pixels, mask


def _write(folder: Path, rows: list[dict]) -> Path:
    manifest.write_manifest(rows, folder / manifest.MANIFEST_NAME)
    return folder


def _row(folder: Path, pixels, mask, label, split, *, with_mask=True, boxes=False, **extra):
    pid = pixel_id(pixels)
    rel = f"images/{label}/{pid[:16]}.png"
    (folder / rel).parent.mkdir(parents=True, exist_ok=True)
    (folder / rel).write_bytes(encode_png(pixels))
    mrel = None
    if with_mask:
        mrel = f"masks/{label}/{pid[:16]}.png"
        (folder / mrel).parent.mkdir(parents=True, exist_ok=True)
        (folder / mrel).write_bytes(encode_png(mask))
    box_list = None
    if boxes:
        r0, r1, c0, c1 = RECT[label]
        box_list = [{"label": label, "x0": c0, "y0": r0, "x1": c1, "y1": r1}]
    return manifest.make_row(id=pid, path=rel, label=label, split=split, width=W, height=H,
                             channels=1, mask_path=mrel, boxes=box_list, source="toy@1",
                             **extra)  # fmt: skip


def _run(tmp: Path, *, masks: bool = True) -> export.Run:
    """A finished run's folders: per class 3 few-shot + 2 outside train, 2 val, 2 test
    (one test image of scratch defect-free); img2img children at strength 0.3 and 0.8;
    two image+mask pairs per class, one of them gate-passed."""
    rng = np.random.default_rng(0)
    pre, gen, pairs = tmp / "preprocessed", tmp / "generated", tmp / "pairs"
    real, synthetic, pair_rows = [], [], []
    kw = {"with_mask": masks, "boxes": not masks}
    for label in RECT:
        for i, split in enumerate(["train"] * 5 + ["val"] * 2 + ["test"] * 2):
            empty = label == "scratch" and i == 8
            pixels, mask = _image(rng, label, empty)
            real.append(_row(pre, pixels, mask, label, split, in_subset=i < 3, **kw))
        parent = real[-9]  # the class's first few-shot image
        for strength in (0.3, 0.8):
            pixels, _ = _image(rng, label)
            synthetic.append(_row(gen, pixels, None, label, "train", with_mask=False,
                                  origin="synthetic", parent_id=parent["id"], generator="tiny",
                                  gen_params=json.dumps({"strength": strength})))  # fmt: skip
        for _ in range(2):
            pixels, mask = _image(rng, label)
            pair_rows.append(_row(pairs, pixels, mask, label, "train", origin="synthetic",
                                  generator="controlnet", gen_params="{}"))  # fmt: skip
    _write(pre, real)
    _write(gen, synthetic)
    gated = _write(tmp / "gated", [r for r in synthetic if r["label"] == "patch"])
    _write(pairs, pair_rows)
    pairs_gated = _write(tmp / "pairs_gated", pair_rows[::2])
    return export.Run(pre, gen, gated, pairs, pairs_gated)


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(str(p).encode() + p.read_bytes())
    return h.hexdigest()


def _provenance(out: Path) -> list[dict]:
    with (out / export.PROVENANCE_NAME).open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_imagefolder_loads_with_torchvision_and_keeps_synthetic_in_train(tmp_path: Path):
    ensure_torchvision_importable()
    from torchvision.datasets import ImageFolder

    run = _run(tmp_path / "run")
    before = _digest(tmp_path / "run")
    out = tmp_path / "export"
    folders = ["--preprocessed", str(run.preprocessed), "--generated", str(run.generated),
               "--gated", str(run.gated), "--pairs", str(run.pairs),
               "--pairs-gated", str(run.pairs_gated)]  # fmt: skip
    args = ["export", "--format", "imagefolder", "--condition", "real+ungated", "--out", str(out)]
    assert cli.main(args + folders) == 0
    train = ImageFolder(str(out / "train"))
    assert train.classes == ["patch", "scratch"]
    # per class: 3 few-shot + 2 img2img children + 2 pairs (every generated one: ungated)
    assert len(train) == 2 * (3 + 2 + 2)
    test = ImageFolder(str(out / "test"))
    assert len(test) == 4 and len(ImageFolder(str(out / "val"))) == 4
    rows = _provenance(out)
    assert len(rows) == 14 + 4 + 4
    assert {r["split"] for r in rows if r["origin"] == "synthetic"} == {"train"}
    assert all(r["parent_id"] for r in rows if r["generator"] == "tiny")
    assert all((out / r["file"]).is_file() for r in rows)
    assert _digest(tmp_path / "run") == before  # the run's folders are only read


def test_coco_instances_match_the_drawn_defects(tmp_path: Path):
    run = _run(tmp_path)
    out = tmp_path / "coco"
    summary = export.export(run, fmt="coco", condition="real+synthetic", out=out)
    api = COCO(str(out / "annotations" / "instances_train.json"))
    images = api.loadImgs(api.getImgIds())
    # few-shot 3 per class; gated: patch's strength-0.3 child (0.8 is above the 0.5 default,
    # left out) and one pair per class
    assert len(images) == 3 + 3 + 1 + 2
    assert summary["left_out"] == {"none (strength 0.8 > 0.5)": 1}
    cats = {c["id"]: c["name"] for c in api.loadCats(api.getCatIds())}
    for image in images:
        (ann,) = api.loadAnns(api.getAnnIds(imgIds=[image["id"]]))
        r0, r1, c0, c1 = RECT[cats[ann["category_id"]]]
        assert ann["bbox"] == [c0, r0, c1 - c0, r1 - r0]
        assert (out / "images" / image["file_name"]).is_file()
    child = next(i for i in images if i["annotations_from"].startswith("parent"))
    assert child["annotations_from"] == "parent mask (strength 0.3)" and child["parent_id"]
    test = COCO(str(out / "annotations" / "instances_test.json"))
    assert {i["origin"] for i in test.loadImgs(test.getImgIds())} == {"real"}
    # the defect-free test image stays, as background: an image without instances
    assert len(test.getImgIds()) == 4 and len(test.getAnnIds()) == 3


def _yolo(out: Path, split: str) -> dict[str, list[list[float]]]:
    return {
        p.stem: [[float(v) for v in line.split()] for line in p.read_text().splitlines()]
        for p in (out / "labels" / split).glob("*.txt")
    }


def test_yolo_boxes_are_normalised_centres_and_sizes(tmp_path: Path):
    run = _run(tmp_path, masks=False)  # a VOC-style dataset: boxes, no masks
    out = tmp_path / "yolo"
    export.export(run, fmt="yolo", condition="real", out=out)
    data = yaml.safe_load((out / "data.yaml").read_text())
    assert data["names"] == {0: "patch", 1: "scratch"} and data["nc"] == 2
    assert data["train"] == "images/train" and Path(data["path"]) == out.resolve()
    labels = _yolo(out, "train")
    images = sorted(p.stem for p in (out / "images" / "train").iterdir())
    assert sorted(labels) == images and len(images) == 6  # one label file per image
    for stem, lines in labels.items():
        (line,) = lines
        name = data["names"][int(line[0])]
        r0, r1, c0, c1 = RECT[name]
        expected = [(c0 + c1) / 2 / W, (r0 + r1) / 2 / H, (c1 - c0) / W, (r1 - r0) / H]
        assert line[1:] == pytest.approx(expected, abs=1e-6), stem
    with pytest.raises(DataError, match="no masks to export; use --format imagefolder"):
        export.export(run, fmt="yolo-seg", condition="real", out=tmp_path / "seg")


def test_yolo_seg_polygons_outline_each_instance(tmp_path: Path):
    run = _run(tmp_path)
    out = tmp_path / "yolo-seg"
    export.export(run, fmt="yolo-seg", condition="real+synthetic", out=out, branch="pairs")
    labels = _yolo(out, "test")
    assert sorted(len(v) for v in labels.values()) == [0, 1, 1, 1]  # the defect-free one: empty
    for lines in _yolo(out, "train").values():
        (line,) = lines
        cls, xy = int(line[0]), np.array(line[1:]).reshape(-1, 2) * [W, H]
        r0, r1, c0, c1 = RECT[["patch", "scratch"][cls]]
        assert xy[:, 0].min() == pytest.approx(c0) and xy[:, 0].max() == pytest.approx(c1)
        assert xy[:, 1].min() == pytest.approx(r0) and xy[:, 1].max() == pytest.approx(r1)
        x, y = xy[:, 0], xy[:, 1]
        area = 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))
        assert abs(area - (c1 - c0) * (r1 - r0)) <= 1.0  # the outline, corners cut by half a pixel
    rows = _provenance(out)
    assert {r["generator"] for r in rows if r["origin"] == "synthetic"} == {"controlnet"}


def test_a_foreign_folder_is_never_replaced(tmp_path: Path):
    run = _run(tmp_path)
    keep = tmp_path / "mine"
    keep.mkdir()
    (keep / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="is not an earlier export"):
        export.export(run, fmt="imagefolder", condition="real", out=keep)
    assert (keep / "notes.txt").read_text() == "mine"
    out = tmp_path / "again"
    export.export(run, fmt="imagefolder", condition="real", out=out)
    export.export(run, fmt="imagefolder", condition="all-train", out=out)  # its own: replaced
    assert json.loads((out / "export.json").read_text())["images"]["train"] == 10
