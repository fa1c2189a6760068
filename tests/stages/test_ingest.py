import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from defectgen import artifacts, manifest
from defectgen.core.images import decode_image, pixel_id
from defectgen.errors import DataError
from tests.conftest import blob_mask, make_params, run_stage, save, texture


def _report(out: Path) -> dict:
    return json.loads((out / artifacts.INGEST_JSON).read_text())


def _reasons(out: Path) -> dict[str, str]:
    return {s["path"]: s["reason"] for s in _report(out)["skipped"]}


def _tree_digest(root: Path) -> dict[str, tuple[str, int]]:
    return {
        p.relative_to(root).as_posix(): (
            hashlib.sha256(p.read_bytes()).hexdigest(),
            p.stat().st_mode,
        )
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_class_folders(folders_dataset: Path, tmp_path: Path):
    before = _tree_digest(folders_dataset)
    out = tmp_path / "out"
    metrics = run_stage("ingest", make_params("folders", folders_dataset), out_dir=out)
    assert metrics["n_images"] == 36 and metrics["n_classes"] == 3
    assert metrics["count/crack"] == metrics["count/dent"] == metrics["count/scratch"] == 12
    rows = manifest.read_rows(out)
    assert len(rows) == 36
    for row in rows:
        # The stored file decodes to exactly the pixels whose hash is the id.
        pixels, _ = decode_image((out / row["path"]).read_bytes())
        assert pixel_id(pixels) == row["id"]
        assert row["split"] is None and row["origin"] == "real"
        assert row["original_path"].startswith(row["label"] + "/")
        assert row["source"].startswith("fixture@")
    assert _tree_digest(folders_dataset) == before  # raw data untouched


def test_label_from_prefix_in_a_flat_folder(tmp_path: Path):
    root = tmp_path / "flat"
    for i in range(3):
        save(texture(i), root / f"pitted_surface_{i}.jpg", quality=95)
        save(texture(50 + i), root / f"rolled-in_scale_{i}.jpg", quality=95)
    save(texture(99), root / "noclass.png")
    params = make_params("folders", root, data={"label_from": "prefix"})
    metrics = run_stage("ingest", params, out_dir=tmp_path / "out")
    assert metrics["count/pitted_surface"] == 3 and metrics["count/rolled-in_scale"] == 3
    assert "does not match data.label_pattern" in _reasons(tmp_path / "out")["noclass.png"]


def test_image_mask_pairs(mask_dataset: Path, tmp_path: Path):
    out = tmp_path / "out"
    params = make_params(
        "image_mask", mask_dataset, data={"label_from": "prefix", "masks_required": True}
    )
    metrics = run_stage("ingest", params, out_dir=out)
    assert metrics["count/In"] == 8 and metrics["count/Pa"] == 8
    for row in manifest.read_rows(out):
        mask, _ = decode_image((out / row["mask_path"]).read_bytes())
        n = int(row["original_path"].split("_")[1].split(".")[0])
        seed = (0 if row["label"] == "In" else 100) + n
        assert np.array_equal(mask, blob_mask(seed))  # each mask stays with its own image


def test_mask_problems(mask_dataset: Path, tmp_path: Path):
    save(np.zeros((10, 10), np.uint8), mask_dataset / "masks" / "In_1.png")  # wrong size
    soft = blob_mask(2).copy()
    soft[0, 0] = 77
    save(soft, mask_dataset / "masks" / "In_2.png")  # non-binary
    (mask_dataset / "masks" / "In_3.png").unlink()  # missing
    out = tmp_path / "out"
    params = make_params(
        "image_mask", mask_dataset, data={"label_from": "prefix", "masks_required": True}
    )
    metrics = run_stage("ingest", params, out_dir=out)
    reasons = _reasons(out)
    assert "mask is 10x10 but the image is 40x40" in reasons["images/In_1.bmp"]
    assert "not binary" in reasons["images/In_2.bmp"]
    assert "no mask: expected masks/In_3.png" in reasons["images/In_3.bmp"]
    assert metrics["count/In"] == 5 and metrics["count/Pa"] == 8
    # Masks optional: the images stay, without their bad masks, with a warning.
    optional = make_params("image_mask", mask_dataset, data={"label_from": "prefix"})
    metrics = run_stage("ingest", optional, out_dir=tmp_path / "out2")
    assert metrics["count/In"] == 8
    rows = {r["original_path"]: r for r in manifest.read_rows(tmp_path / "out2")}
    assert rows["images/In_1.bmp"]["mask_path"] is None
    assert rows["images/In_4.bmp"]["mask_path"] is not None
    # With binarize_masks the soft mask is accepted.
    soft_ok = make_params(
        "image_mask",
        mask_dataset,
        data={"label_from": "prefix", "masks_required": True},
        ingest={"binarize_masks": True},
    )
    assert run_stage("ingest", soft_ok, out_dir=tmp_path / "out3")["count/In"] == 6


def _voc_xml(path: Path, objects: list[tuple[str, int, int, int, int]], size=(40, 40)) -> None:
    objs = "".join(
        f"<object><name>{n}</name><bndbox><xmin>{a}</xmin><ymin>{b}</ymin>"
        f"<xmax>{c}</xmax><ymax>{d}</ymax></bndbox></object>"
        for n, a, b, c, d in objects
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"<annotation><size><width>{size[0]}</width><height>{size[1]}</height>"
        f"<depth>1</depth></size>{objs}</annotation>"
    )


def test_voc_boxes_and_label_from_annotation(tmp_path: Path):
    root = tmp_path / "voc"
    for i in range(4):
        save(texture(i), root / "images" / f"img{i}.jpg", quality=95)
        _voc_xml(root / "annotations" / f"img{i}.xml", [("scratch", 2, 3, 20, 30)])
    save(texture(10), root / "images" / "img4.jpg", quality=95)
    _voc_xml(root / "annotations" / "img4.xml", [("dent", 1, 1, 10, 10), ("dent", 5, 5, 50, 50)])
    save(texture(11), root / "images" / "orphan.jpg", quality=95)
    (root / "annotations" / "broken.xml").write_text("<annotation><object>")
    save(texture(12), root / "images" / "broken.jpg", quality=95)
    out = tmp_path / "out"
    params = make_params("voc", root, data={"label_from": "annotation"})
    metrics = run_stage("ingest", params, out_dir=out)
    assert metrics["count/scratch"] == 4 and metrics["count/dent"] == 1
    rows = {r["original_path"]: r for r in manifest.read_rows(out)}
    # VOC is 1-based inclusive; ours is 0-based half-open.
    assert rows["images/img0.jpg"]["boxes"] == [
        {"label": "scratch", "x0": 1.0, "y0": 2.0, "x1": 20.0, "y1": 30.0}
    ]
    assert rows["images/img4.jpg"]["boxes"][1]["x1"] == 40.0  # clipped to the image
    reasons = _reasons(out)
    assert "no annotated objects" in reasons["images/orphan.jpg"]
    assert "unreadable XML" in reasons["images/broken.jpg"]


def test_coco_polygons_and_rle(tmp_path: Path):
    from pycocotools import mask as mask_utils

    root = tmp_path / "coco"
    save(texture(1), root / "images" / "a.png")
    save(texture(2), root / "images" / "b.png")
    save(texture(3), root / "images" / "c.png")
    rle_mask = np.zeros((40, 40), np.uint8, order="F")
    rle_mask[5:15, 20:30] = 1
    rle = mask_utils.encode(np.asfortranarray(rle_mask))
    rle["counts"] = rle["counts"].decode()
    coco = {
        "images": [
            {"id": 1, "file_name": "a.png", "width": 40, "height": 40},
            {"id": 2, "file_name": "b.png", "width": 40, "height": 40},
            {"id": 3, "file_name": "c.png", "width": 40, "height": 40},
            {"id": 4, "file_name": "missing.png", "width": 40, "height": 40},
        ],
        "categories": [{"id": 7, "name": "hole"}, {"id": 8, "name": "stain"}],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 7,
                "bbox": [0, 0, 10, 10],
                "segmentation": [[0, 0, 10, 0, 10, 10, 0, 10]],
                "area": 100,
                "iscrowd": 0,
            },
            {
                "id": 2,
                "image_id": 2,
                "category_id": 8,
                "bbox": [20, 5, 10, 10],
                "segmentation": rle,
                "area": 100,
                "iscrowd": 1,
            },
        ],
    }
    (root / "annotations.json").write_text(json.dumps(coco))
    out = tmp_path / "out"
    metrics = run_stage(
        "ingest", make_params("coco", root, data={"label_from": "annotation"}), out_dir=out
    )
    assert metrics["count/hole"] == 1 and metrics["count/stain"] == 1
    rows = {r["original_path"]: r for r in manifest.read_rows(out)}
    poly, _ = decode_image((out / rows["images/a.png"]["mask_path"]).read_bytes())
    assert poly[2, 2] == 255 and poly[30, 30] == 0
    rle_out, _ = decode_image((out / rows["images/b.png"]["mask_path"]).read_bytes())
    assert np.array_equal(rle_out, rle_mask * 255)
    assert rows["images/b.png"]["boxes"][0]["label"] == "stain"
    reasons = _reasons(out)
    assert "no annotations" in reasons["images/c.png"]
    assert "not found" in reasons["images/missing.png"]


def test_bad_files_are_skipped_and_the_good_ones_kept(folders_dataset: Path, tmp_path: Path):
    crack = folders_dataset / "crack"
    (crack / "zero.png").write_bytes(b"")
    good = (crack / "crack_0.png").read_bytes()
    (crack / "truncated.png").write_bytes(good[: len(good) // 2])
    (crack / "notes.png").write_text("not an image")
    (crack / "readme.txt").write_text("hello")
    out = tmp_path / "out"
    metrics = run_stage("ingest", make_params("folders", folders_dataset), out_dir=out)
    assert metrics["count/crack"] == 12 and metrics["n_images"] == 36
    reasons = _reasons(out)
    assert "empty file" in reasons["crack/zero.png"]
    assert (
        "truncated" in reasons["crack/truncated.png"]
        or "not a readable" in reasons["crack/truncated.png"]
    )
    assert "not a readable image" in reasons["crack/notes.png"]
    assert "not an image type" in reasons["crack/readme.txt"]


def test_unusual_modes_are_converted(folders_dataset: Path, tmp_path: Path):
    mixed = folders_dataset / "mixed"
    save((texture(500).astype(np.uint16) * 257), mixed / "deep.png")
    save(texture(501), mixed / "pal.png")
    Image.fromarray(texture(501)).convert("P").save(mixed / "pal.png")
    Image.fromarray(texture(502, rgb=True)).convert("CMYK").save(mixed / "cmyk.jpg")
    rgba = np.dstack([texture(503, rgb=True), np.full((40, 40), 255, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(mixed / "alpha.png")
    out = tmp_path / "out"
    metrics = run_stage("ingest", make_params("folders", folders_dataset), out_dir=out)
    assert metrics["count/mixed"] == 4 and metrics["n_converted"] == 4
    convs = {c["path"]: c["conversion"] for c in _report(out)["conversions"]}
    assert convs["mixed/deep.png"].startswith("I;16") and convs["mixed/cmyk.jpg"] == "CMYK -> RGB"
    deep = next(r for r in manifest.read_rows(out) if r["original_path"] == "mixed/deep.png")
    stored, conv = decode_image((out / deep["path"]).read_bytes())
    assert conv is None and np.array_equal(stored, texture(500))  # 16-bit scaled back exactly


def test_duplicates_within_a_class_are_dropped(folders_dataset: Path, tmp_path: Path):
    img = Image.open(folders_dataset / "dent" / "dent_0.png")
    img.save(folders_dataset / "dent" / "copy as bmp.bmp")  # same pixels, other encoding
    out = tmp_path / "out"
    metrics = run_stage("ingest", make_params("folders", folders_dataset), out_dir=out)
    assert metrics["count/dent"] == 12 and metrics["n_duplicates"] == 1
    dup = _report(out)["duplicates"][0]
    assert {dup["path"], dup["duplicate_of"]} == {"dent/copy as bmp.bmp", "dent/dent_0.png"}


def test_same_image_in_two_classes(folders_dataset: Path, tmp_path: Path):
    (folders_dataset / "dent" / "stray.png").write_bytes(
        (folders_dataset / "crack" / "crack_3.png").read_bytes()
    )
    with pytest.raises(DataError) as err:
        run_stage("ingest", make_params("folders", folders_dataset), out_dir=tmp_path / "out")
    assert "crack/crack_3.png" in str(err.value) and "dent/stray.png" in str(err.value)
    assert not (tmp_path / "out").exists()  # nothing half-written
    params = make_params("folders", folders_dataset, ingest={"on_label_conflict": "skip"})
    metrics = run_stage("ingest", params, out_dir=tmp_path / "out")
    assert metrics["count/crack"] == 11 and metrics["count/dent"] == 12
    assert len(list((tmp_path / "out" / "images" / "crack").iterdir())) == 11


def test_empty_class_folder_and_minimum(folders_dataset: Path, tmp_path: Path):
    (folders_dataset / "empty").mkdir()
    out = tmp_path / "out"
    metrics = run_stage("ingest", make_params("folders", folders_dataset), out_dir=out)
    assert metrics["n_classes"] == 3
    assert _report(out)["empty_classes"] == ["empty"]
    # Listed explicitly, an empty class is below the minimum: a clear failure.
    params = make_params(
        "folders",
        folders_dataset,
        data={"classes": ["crack", "empty"]},
        ingest={"min_images_per_class": 5},
    )
    with pytest.raises(DataError, match="'empty': 0"):
        run_stage("ingest", params, out_dir=tmp_path / "out2")
    params = make_params("folders", folders_dataset, ingest={"min_images_per_class": 13})
    with pytest.raises(DataError, match="'crack': 12, 'dent': 12, 'scratch': 12"):
        run_stage("ingest", params, out_dir=tmp_path / "out3")


def test_unicode_and_spaces_in_paths(tmp_path: Path):
    root = tmp_path / "données brutes"
    for i in range(3):
        save(texture(i), root / "rayure fine" / f"éch {i}.png")
        save(texture(10 + i), root / "鋼" / f"画像 {i}.png")
    out = tmp_path / "sortie à part"
    metrics = run_stage("ingest", make_params("folders", root), out_dir=out)
    assert metrics["count/rayure fine"] == 3 and metrics["count/鋼"] == 3
    for row in manifest.read_rows(out):
        assert (out / row["path"]).is_file()


def test_hardlink_option_shares_the_raw_bytes(folders_dataset: Path, tmp_path: Path):
    out = tmp_path / "out"
    run_stage(
        "ingest", make_params("folders", folders_dataset, ingest={"link": "hardlink"}), out_dir=out
    )
    row = manifest.read_rows(out)[0]
    raw = folders_dataset / row["original_path"]
    assert os.stat(out / row["path"]).st_ino == os.stat(raw).st_ino


def test_elpv_package_counts_match_labels():
    from defectgen.layouts import elpv_data_dir

    probs = [
        float(line.split()[1])
        for line in (elpv_data_dir() / "labels.csv").read_text().splitlines()
        if line.strip()
    ]
    params = make_params("elpv", None)
    # The layout reader alone: labels by binning the probability at 0.5.
    from defectgen.layouts import discover

    found = discover(params.data, None)
    labels = [c.label for c in found.candidates]
    assert len(labels) == len(probs) == 2624
    assert labels.count("defective") == sum(p >= 0.5 for p in probs)
    three = make_params(
        "elpv", None, data={"elpv_bins": [0.3, 0.9], "elpv_classes": ["ok", "mild", "bad"]}
    )
    labels3 = [c.label for c in discover(three.data, None).candidates]
    assert labels3.count("mild") == sum(0.3 <= p < 0.9 for p in probs)
    assert found.version  # the package version is the dataset version
