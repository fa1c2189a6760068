import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from defectgen import artifacts, manifest
from defectgen.core.images import decode_image, pixel_id
from defectgen.errors import DataError
from tests.conftest import make_params, run_stage, save, texture


def _run(root: Path, tmp: Path, layout="folders", **sections) -> tuple[list[dict], dict, Path]:
    params = make_params(layout, root, **sections)
    run_stage("ingest", params, out_dir=tmp / "ingested")
    out = tmp / "pre"
    metrics = run_stage("preprocess", params, ingested=tmp / "ingested", out_dir=out)
    return manifest.read_rows(out), metrics, out


def test_resize_colour_split_and_subset(folders_dataset: Path, tmp_path: Path):
    rows, metrics, out = _run(
        folders_dataset,
        tmp_path,
        preprocess={"image_size": 16, "color": "rgb", "subset": {"alpha": 0.5}},
    )
    assert len(rows) == metrics["n_images"] == 36
    assert metrics["n_train"] + metrics["n_val"] + metrics["n_test"] == 36
    for row in rows:
        px, _ = decode_image((out / row["path"]).read_bytes())
        assert px.shape == (16, 16, 3) and row["channels"] == 3
        assert pixel_id(px) == row["id"] and row["raw_id"] != row["id"]
        assert row["in_subset"] is False or row["split"] == "train"
    for label in ("crack", "dent", "scratch"):
        n_train = sum(1 for r in rows if r["label"] == label and r["split"] == "train")
        n_sub = sum(1 for r in rows if r["label"] == label and r["in_subset"])
        assert n_sub == -(-n_train // 2)  # ceil(alpha * n)
    counts = json.loads((out / artifacts.SPLIT_COUNTS_JSON).read_text())
    assert counts["crack"]["train"] == metrics["count/train/crack"]


def test_split_is_stable_when_images_are_added(folders_dataset: Path, tmp_path: Path):
    rows1, _, _ = _run(folders_dataset, tmp_path / "a")
    for i in range(20):
        save(texture(9000 + i), folders_dataset / "crack" / f"new_{i}.png")
    rows2, _, _ = _run(folders_dataset, tmp_path / "b")
    before = {r["raw_id"]: r["split"] for r in rows1}
    after = {r["raw_id"]: r["split"] for r in rows2}
    assert len(after) == len(before) + 20
    assert all(after[k] == v for k, v in before.items())
    tests1 = {r["raw_id"] for r in rows1 if r["split"] == "test"}
    assert tests1 <= {r["raw_id"] for r in rows2 if r["split"] == "test"}  # test stays frozen


def test_masks_follow_their_images_and_stay_binary(mask_dataset: Path, tmp_path: Path):
    rows, _, out = _run(
        mask_dataset,
        tmp_path,
        layout="image_mask",
        data={"label_from": "prefix", "masks_required": True},
        preprocess={"image_size": 20},
    )
    assert len(rows) == 16
    ing = {r["id"]: r for r in manifest.read_rows(tmp_path / "ingested")}
    for row in rows:
        mask, _ = decode_image((out / row["mask_path"]).read_bytes())
        assert mask.shape == (20, 20) and set(np.unique(mask).tolist()) <= {0, 255}
        raw_mask, _ = decode_image(
            (tmp_path / "ingested" / ing[row["raw_id"]]["mask_path"]).read_bytes()
        )
        # 40 -> 20 nearest-neighbour samples each output pixel's centre: source 2i + 1.
        assert np.array_equal(mask, raw_mask[1::2, 1::2])


def _billet(seed: int) -> np.ndarray:
    """A bright 40 x 120 object on a dark 80 x 160 background, textured."""
    img = np.full((80, 160), 20, np.uint8)
    img[20:60, 20:140] = 180 + (texture(seed, (120, 40)) // 4)
    return img


def test_roi_crop_tiles_share_a_split_and_boxes_move(tmp_path: Path):
    root = tmp_path / "billets"
    for i in range(10):
        save(_billet(i), root / "slag" / f"b{i}.png")
    rows, metrics, out = _run(
        root,
        tmp_path,
        preprocess={"image_size": 32, "roi": {"enabled": True}},
    )
    assert len(rows) == 30  # each 120 x 40 object -> 3 square tiles
    by_raw = Counter(r["raw_id"] for r in rows)
    assert set(by_raw.values()) == {3}
    for raw_id in by_raw:
        assert len({r["split"] for r in rows if r["raw_id"] == raw_id}) == 1
    px, _ = decode_image((out / rows[0]["path"]).read_bytes())
    assert px.shape == (32, 32) and px.min() >= 150  # only the object, no background


def test_roi_drops_tiles_without_defect_pixels(tmp_path: Path):
    root = tmp_path / "billets"
    for i in range(4):
        save(_billet(i), root / "images" / f"Sc_{i}.png")
        m = np.zeros((80, 160), np.uint8)
        m[30:40, 30:50] = 255  # defect only in the first tile
        save(m, root / "masks" / f"Sc_{i}.png")
    rows, metrics, _ = _run(
        root,
        tmp_path,
        layout="image_mask",
        data={"label_from": "prefix", "masks_required": True},
        preprocess={"image_size": 32, "roi": {"enabled": True}},
    )
    assert len(rows) == 4 and metrics["n_dropped_tiles"] == 8


def test_boxes_scale_with_resize(tmp_path: Path):
    root = tmp_path / "voc"
    save(texture(1, (40, 40)), root / "images" / "a_1.png")
    (root / "annotations").mkdir()
    (root / "annotations" / "a_1.xml").write_text(
        "<annotation><object><name>a</name><bndbox><xmin>11</xmin><ymin>1</ymin>"
        "<xmax>20</xmax><ymax>40</ymax></bndbox></object></annotation>"
    )
    rows, _, _ = _run(
        root,
        tmp_path,
        layout="voc",
        data={"label_from": "prefix"},
        preprocess={"image_size": 20},
    )
    assert rows[0]["boxes"] == [{"label": "a", "x0": 5.0, "y0": 0.0, "x1": 10.0, "y1": 20.0}]


def test_a_normal_class_the_dataset_lacks_is_named(folders_dataset: Path, tmp_path: Path):
    with pytest.raises(DataError, match=r"normal_classes lists \['ok'\].*its classes are"):
        _run(folders_dataset, tmp_path, data={"normal_classes": ["ok"]})
