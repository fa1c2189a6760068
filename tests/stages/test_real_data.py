"""Ingest of the real steel datasets in ../shared/data (NEU-DET: VOC; SD-Saliency-900: masks)."""

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from defectgen import artifacts, manifest
from defectgen.core.images import decode_image
from defectgen.layouts import parse_voc
from tests.conftest import make_params, run_stage, shared_data

pytestmark = pytest.mark.slow

NEU_CLASSES = ["crazing", "inclusion", "patches", "pitted_surface", "rolled-in_scale", "scratches"]


def test_neu_det_voc(tmp_path: Path):
    root = shared_data("neu-det")
    params = make_params("voc", root, data={"label_from": "prefix"})
    out = tmp_path / "neu"
    metrics = run_stage("ingest", params, out_dir=out)
    rows = manifest.read_rows(out)
    counts = Counter(r["label"] for r in rows)
    assert sorted(counts) == NEU_CLASSES
    # 300 files per class; patches_105.jpg is a byte-identical copy of patches_101.jpg.
    assert metrics["n_images"] == 1799 and counts["patches"] == 299
    assert all(n == 300 for c, n in counts.items() if c != "patches"), counts
    report = json.loads((out / artifacts.INGEST_JSON).read_text())
    assert report["duplicates"] == [
        {"path": "images/patches_105.jpg", "duplicate_of": "images/patches_101.jpg"}
    ]
    assert metrics["n_skipped"] == 0
    # This copy's images are 416x416 while the VOC files declare 200x200: boxes are rescaled.
    assert metrics["n_rescaled_annotations"] == 1800
    raw_boxes, declared = parse_voc(root / "annotations" / "scratches_5.xml")
    assert declared == (200, 200)
    mixed = 0
    for row in rows:
        assert row["boxes"], row["original_path"]
        # The image's class (from its file name) is always among its boxes' classes ...
        labels = {b["label"] for b in row["boxes"]}
        assert row["label"] in labels
        mixed += labels != {row["label"]}
    # ... and 123 images also carry a box of a second class (e.g. crazing_104: patches).
    assert mixed == 123
    for row in rows:
        assert row["width"] == row["height"] == 416
        assert all(0 <= b["x0"] < b["x1"] <= 416 for b in row["boxes"])
    scratch = next(r for r in rows if r["original_path"] == "images/scratches_5.jpg")
    assert scratch["boxes"][0]["x1"] == pytest.approx(raw_boxes[0]["x1"] * 416 / 200, rel=1e-5)
    # Label from the annotation gives the same classes.
    # Label from the annotation (the most frequent box class) agrees for most images.
    by_ann = make_params("voc", root, data={"label_from": "annotation"})
    run_stage("ingest", by_ann, out_dir=tmp_path / "neu2")
    ann_label = {r["id"]: r["label"] for r in manifest.read_rows(tmp_path / "neu2")}
    agree = sum(ann_label[r["id"]] == r["label"] for r in rows)
    assert len(ann_label) == 1799 and agree >= 1799 - mixed


def test_sd_saliency_900_masks(tmp_path: Path):
    root = shared_data("sd-saliency-900")
    params = make_params(
        "image_mask",
        root,
        data={"label_from": "prefix", "masks_required": True},
        preprocess={"image_size": 64, "subset": {"alpha": 1.0}},  # all of train: the few-shot set
    )
    out = tmp_path / "sd900"
    metrics = run_stage("ingest", params, out_dir=out)
    rows = manifest.read_rows(out)
    # 300 pairs per class; Pa_105.bmp repeats Pa_101.bmp (as patches_105/101 in NEU-DET).
    assert Counter(r["label"] for r in rows) == {"In": 300, "Pa": 299, "Sc": 300}
    report = json.loads((out / artifacts.INGEST_JSON).read_text())
    # ... with a different mask: the report flags it for a person to check.
    assert report["duplicates"] == [
        {"path": "images/Pa_105.bmp", "duplicate_of": "images/Pa_101.bmp", "mask_differs": True}
    ]
    assert metrics["n_skipped"] == 0
    for row in rows[::50]:
        # The mask stored with the row is the mask file of the same stem.
        stem = Path(row["original_path"]).stem
        raw_mask, _ = decode_image((root / "masks" / f"{stem}.png").read_bytes())
        stored, _ = decode_image((out / row["mask_path"]).read_bytes())
        assert np.array_equal(stored, raw_mask)
    pre = run_stage("preprocess", params, ingested=out, out_dir=tmp_path / "pre")
    assert pre["n_images"] == 899
    assert pre["n_train"] > 650 and pre["n_test"] > 60

    # The mask branch on the real masks (DefFiller's benchmark). Mean mask area over all
    # 300 per class: In 5.8 %, Pa 22.4 %, Sc 7.0 % of the image, all above DefectSynth's
    # tau (5.3 %), so HMI interpolates every class in the producer's latent space.
    toy = {"methods": ["hmi", "perturb"], "per_class": 6, "hmi_between": 3,
           "ddpm": {"size": 32, "channels": [16, 32], "steps": 10, "batch_size": 8,
                    "sample_steps": 5}}  # fmt: skip
    params = make_params(
        "image_mask", root, data={"label_from": "prefix", "masks_required": True},
        preprocess={"image_size": 64, "subset": {"alpha": 1.0}},
        gate={"extractor": "effnet-lite0"}, masks=toy,
    )  # fmt: skip
    made = run_stage("masks", params, preprocessed=tmp_path / "pre", out_dir=tmp_path / "masks")
    record = json.loads((tmp_path / "masks" / "masks.json").read_text())["classes"]
    assert {c: e["hmi_space"] for c, e in record.items()} == dict.fromkeys(["In", "Pa", "Sc"],
                                                                          "latent")  # fmt: skip
    means = {c: e["real"]["area_ratio_mean"] for c, e in record.items()}  # the few-shot subset
    assert means == {"In": pytest.approx(0.058, abs=0.012), "Pa": pytest.approx(0.224, abs=0.03),
                     "Sc": pytest.approx(0.070, abs=0.012)}  # fmt: skip
    assert made["n_masks"] == len(table := pd.read_parquet(tmp_path / "masks" / "masks.parquet"))
    train_ids = {r["id"] for r in manifest.read_rows(tmp_path / "pre") if r["split"] == "train"}
    assert all(set(json.loads(p)) <= train_ids for p in table.parents)
    for entry in record.values():
        perturbed = entry["methods"]["perturb"]
        assert "dropped" not in perturbed and perturbed["n"] == perturbed["accepted"] > 0
        # a 10-step producer's latent interpolations are noise, not these defects' shapes
        assert "dropped" in entry["methods"]["hmi"] and entry["methods"]["hmi"]["n"] == 0
        assert 0.5 < perturbed["area_ratio_mean"] / entry["real"]["area_ratio_mean"] < 2
        assert entry["fd_effnet_lite0_real"] > 0 and perturbed["fd_effnet_lite0"] > 0
