"""The mask branch after the masks stage, on a PIL-made image + mask dataset: pairs
(ControlNet, SAE, SFF, drivers), the gate on them, the COCO export and segmentation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from pycocotools.coco import COCO
from scipy import ndimage

from defectgen import manifest
from defectgen.config import TrackingConfig
from defectgen.core.diffusion import control, models
from defectgen.core.images import decode_image
from defectgen.errors import DataError
from defectgen.metric_keys import metric_name
from defectgen.prior import open_base
from defectgen.runner import execute, get_stage
from tests.conftest import make_params, run_stage
from tests.stages.test_masks import _dataset

SECTIONS = {
    "data": {"label_from": "prefix", "masks_required": True},
    "preprocess": {"image_size": 32, "split": {"train": 0.5, "val": 0.25, "test": 0.25},
                   "subset": {"alpha": 1.0}},
    "gate": {"extractor": "effnet-lite0", "kid_subsets": 5},
    "base": {"vae_steps": 3, "unet_steps": 3, "batch_size": 8},
    "masks": {"methods": ["perturb", "hmi"], "per_class": 4, "hmi_between": 2,
              "ddpm": {"size": 16, "channels": [8, 16], "steps": 5, "batch_size": 8,
                       "sample_steps": 3}},
    "pairs": {"per_class": 5, "steps": 3, "batch_size": 4, "sample_steps": 3,
              "generate_batch": 3, "sae": True, "sff": {"enabled": True, "rate": 0.25}},
    "segment": {"seeds": [0], "steps": 4, "batch_size": 8, "widths": [8, 16]},
}  # fmt: skip


def _params(root: Path, **overrides):
    sections = {k: dict(v) for k, v in SECTIONS.items()}
    for key, value in overrides.items():
        sections[key] = {**sections[key], **value}
    return make_params("image_mask", root, **sections)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("pairs")
    params = _params(_dataset(tmp / "ds"))
    d = {k: tmp / k for k in ("ingested", "pre", "base", "masks", "pairs", "pgate", "seg")}
    run_stage("ingest", params, out_dir=d["ingested"])
    run_stage("preprocess", params, ingested=d["ingested"], out_dir=d["pre"])
    run_stage("base", params, preprocessed=d["pre"], out_dir=d["base"])
    run_stage("masks", params, preprocessed=d["pre"], out_dir=d["masks"])
    rt = models.runtime(params.model)
    fingerprint = models.fingerprint(open_base(d["base"], params, rt))
    d["metrics"] = run_stage("pairs", params, preprocessed=d["pre"], base=d["base"],
                             masks=d["masks"], out_dir=d["pairs"])  # fmt: skip
    d["fingerprint_before"] = fingerprint
    d["fingerprint_after"] = models.fingerprint(open_base(d["base"], params, rt))
    run_stage("gate", params, preprocessed=d["pre"], generated=d["pairs"], out_dir=d["pgate"])
    d["seg_metrics"] = run_stage("segment", params, preprocessed=d["pre"], pairs=d["pairs"],
                                   pairs_gated=d["pgate"], out_dir=d["seg"])  # fmt: skip
    d["params"] = params
    d["tmp"] = tmp
    return d


def test_pairs_are_self_annotated_with_the_masks_stage_masks_and_full_provenance(run):
    rows = manifest.read_rows(run["pairs"])
    real = manifest.read_rows(run["pre"])
    train_ids = {r["id"] for r in real if r["split"] == "train"}
    table = pd.read_parquet(run["masks"] / "masks.parquet").set_index("id")
    assert run["metrics"]["n_pairs"] == len(rows) == 10  # 5 per class, 2 classes
    record = json.loads((run["pairs"] / "pairs.json").read_text())
    for row in rows:
        assert row["origin"] == "synthetic" and row["split"] == "train"
        assert row["generator"].startswith(f"controlnet-coloured controlnet={row['label']}:")
        g = json.loads(row["gen_params"])
        assert g["mask_method"] in ("perturb", "hmi") and g["sff"]["enabled"] is True
        assert g["sae_reference"] in train_ids  # SAE's reference: a real train pair
        assert set(g["mask_parents"]) <= train_ids and g["mask_parents"]
        image, _ = decode_image((run["pairs"] / row["path"]).read_bytes())
        mask, _ = decode_image((run["pairs"] / row["mask_path"]).read_bytes())
        assert image.shape == mask.shape == (32, 32)
        source, _ = decode_image((run["masks"] / table.loc[g["mask_id"], "path"]).read_bytes())
        assert np.array_equal(mask, source)  # the annotation is the conditioning mask
    for label in ("Pa", "Sc"):
        entry = record["classes"][label]
        assert entry["n"] == 5 and entry["sae"] and entry["sff"]
        assert sum(entry["masks_by_method"].values()) == 5
        net = control.ControlNetModel.from_pretrained(run["pairs"] / "controlnets" / label)
        assert net.config.conditioning_embedding_out_channels == [16, 32, 96]  # 4x VAE
        grid, _ = decode_image((run["pairs"] / "grids" / f"{label}.png").read_bytes())
        assert grid.shape == (3 * 32, 5 * 32, 3)  # conditioning, image, outline
        assert (run["pairs"] / "curves" / f"{label}.controlnet.csv").is_file()
    assert run["fingerprint_after"] == run["fingerprint_before"]  # the base stays frozen


def test_pairs_rerun_reproduces_and_drivers_record_their_layout(run):
    tmp = run["tmp"]
    again = run_stage("pairs", run["params"], preprocessed=run["pre"], base=run["base"],
                      masks=run["masks"], out_dir=tmp / "again")  # fmt: skip
    assert again == run["metrics"]
    first = sorted((run["pairs"] / "images").rglob("*.png"))
    assert [p.read_bytes() for p in first] == [
        (tmp / "again" / p.relative_to(run["pairs"])).read_bytes() for p in first
    ]
    params = _params(tmp / "ds", pairs={"conditioning": "driver", "sae": False,
                                        "sff": {"enabled": False}})  # fmt: skip
    run_stage("pairs", params, preprocessed=run["pre"], base=run["base"], masks=run["masks"],
              out_dir=tmp / "drivers")  # fmt: skip
    train_ids = {r["id"] for r in manifest.read_rows(run["pre"]) if r["split"] == "train"}
    rows = manifest.read_rows(tmp / "drivers")
    assert rows and all(r["parent_id"] in train_ids for r in rows)
    assert all(json.loads(r["gen_params"])["layout_id"] == r["parent_id"] for r in rows)
    assert all(r["generator"].startswith("controlnet-driver") for r in rows)


def test_pairs_on_real_backgrounds_keep_the_background_and_annotate_both_defects(run):
    """pairs.background real: each defect generated into a few-shot train image of its
    class, beside that image's own defect; beyond the feathered band every pixel is the
    background's, and the annotation is the old defect and the new one."""
    tmp = run["tmp"]
    params = _params(tmp / "ds", pairs={"background": "real", "sae": False,
                                        "sff": {"enabled": False}})  # fmt: skip
    metrics = run_stage("pairs", params, preprocessed=run["pre"], base=run["base"],
                        masks=run["masks"], out_dir=tmp / "on-real")  # fmt: skip
    assert metrics["n_pairs"] == 10
    real = {r["id"]: r for r in manifest.read_rows(run["pre"])}
    table = pd.read_parquet(run["masks"] / "masks.parquet").set_index("id")
    blend = params.pairs.blend
    reach = control.band(blend.dilate, blend.feather)
    for row in manifest.read_rows(tmp / "on-real"):
        g = json.loads(row["gen_params"])
        bg_row = real[row["parent_id"]]
        assert g["background"] == "real" and g["background_id"] == bg_row["id"]
        assert bg_row["split"] == "train" and bg_row["in_subset"]  # never val or test
        assert bg_row["label"] == row["label"]
        background, _ = decode_image((run["pre"] / bg_row["path"]).read_bytes())
        own, _ = decode_image((run["pre"] / bg_row["mask_path"]).read_bytes())
        image, _ = decode_image((tmp / "on-real" / row["path"]).read_bytes())
        mask, _ = decode_image((tmp / "on-real" / row["mask_path"]).read_bytes())
        source, _ = decode_image((run["masks"] / table.loc[g["mask_id"], "path"]).read_bytes())
        moved = np.roll(source > 127, g["mask_offset"], axis=(0, 1))
        assert moved.sum() == (source > 127).sum()  # moved whole, not cut at the edge
        assert np.array_equal(mask > 127, moved | (own > 127))  # both defects annotated
        near = ndimage.binary_dilation(moved, iterations=reach)
        assert np.array_equal(image[~near], background[~near])
        assert not np.array_equal(image[moved], background[moved])  # a defect drawn there
    record = json.loads((tmp / "on-real" / "pairs.json").read_text())
    assert all(record["classes"][c]["background"] == "real" for c in ("Pa", "Sc"))
    grid, _ = decode_image((tmp / "on-real" / "grids" / "Pa.png").read_bytes())
    assert grid.shape == (4 * 32, 5 * 32, 3)  # background, conditioning, image, outline
    with pytest.raises(DataError, match="pairs.background normal: no defect-free"):
        run_stage("pairs", _params(tmp / "ds", pairs={"background": "normal"}),
                  preprocessed=run["pre"], base=run["base"], masks=run["masks"],
                  out_dir=tmp / "no-normal")  # fmt: skip


def test_a_class_whose_masks_were_all_dropped_gets_no_pairs_and_says_why(run):
    tmp = run["tmp"]
    masks_dir = tmp / "masks-no-pa"
    shutil.copytree(run["masks"], masks_dir)
    table = pd.read_parquet(masks_dir / "masks.parquet")
    table[table.label != "Pa"].to_parquet(masks_dir / "masks.parquet", index=False)
    metrics = run_stage("pairs", run["params"], preprocessed=run["pre"], base=run["base"],
                        masks=masks_dir, out_dir=tmp / "no-pa")  # fmt: skip
    record = json.loads((tmp / "no-pa" / "pairs.json").read_text())
    assert "every method dropped" in record["classes"]["Pa"]["skipped"]
    assert {r["label"] for r in manifest.read_rows(tmp / "no-pa")} == {"Sc"}
    assert metrics["n_pairs"] == 5 and "Pa/n" not in metrics


def test_coco_export_is_split_aware_and_loads_in_pycocotools(run):
    record = json.loads((run["seg"] / "segment.json").read_text())
    real = [r for r in manifest.read_rows(run["pre"]) if r["mask_path"]]
    passed = {r["id"] for r in manifest.read_rows(run["pgate"])}
    for split in ("train", "val", "test"):
        api = COCO(str(run["seg"] / "coco" / f"{split}.json"))
        images = api.loadImgs(api.getImgIds())
        origins = {im["origin"] for im in images}
        n_real = sum(1 for r in real if r["split"] == split)
        assert sum(1 for im in images if im["origin"] == "real") == n_real
        if split != "train":
            assert origins == {"real"}  # synthetic pairs never reach val or test
        else:
            assert sum(1 for im in images if im["origin"] == "synthetic") == len(passed)
        assert record[f"coco_{split}_images"] == len(images)
        for im in images[:3]:
            assert (run["seg"] / "coco" / im["file_name"]).is_file()
            union = np.zeros((im["height"], im["width"]), bool)
            for ann in api.loadAnns(api.getAnnIds(imgIds=im["id"])):
                union |= api.annToMask(ann).astype(bool)
            folder = run["pre"] if im["origin"] == "real" else run["pairs"]
            row = next(r for r in manifest.read_rows(folder) if r["id"] == im["defectgen_id"])
            mask, _ = decode_image((folder / row["mask_path"]).read_bytes())
            assert np.array_equal(union, mask > 127)


def test_segmentation_scores_each_condition_on_the_real_test_split(run):
    record = json.loads((run["seg"] / "segment.json").read_text())
    n_test = sum(1 for r in manifest.read_rows(run["pre"]) if r["split"] == "test")
    assert record["n_test"] == n_test
    conditions = record["conditions"]
    real = conditions["real"]
    assert real["n_added"] == 0 and real["n_train"] == record["n_train_real"]
    assert conditions["real+ungated"]["n_train"] == real["n_train"] + 10
    # the classical control adds as many (augmented real) pairs as its arm adds pairs
    assert conditions["real+classical-ungated"]["n_added"] == 10
    assert record["protocol"]["steps"] == 4  # every condition: the same optimizer steps
    # the subset is the whole train split here (alpha 1): no real pairs to be the oracle
    skipped = "every train pair is in the few-shot subset"
    assert conditions["real+oracle-ungated"] == {"skipped": skipped}
    assert conditions["all-train"] == {"skipped": skipped}
    # the toy pairs (4 steps of every model) pass no gate: the gated arm and its controls
    # are skipped with their reasons
    assert manifest.read_rows(run["pgate"]) == []
    assert conditions["real+synthetic"] == {"skipped": "no synthetic pairs passed the gate"}
    assert conditions["real+classical"] == {"skipped": "real+synthetic adds no pair to match"}
    # copy-paste: as many real defects pasted onto real train images, from the subset only
    pasted = conditions["real+copy-paste-ungated"]
    # (large squares on 32 px images: some go over part of the background's own)
    assert pasted["n_added"] == 10 and pasted["short"] == [0]
    assert 0 <= pasted["overlapping"][0] <= 10
    subset = {r["id"] for r in manifest.read_rows(run["pre"]) if r["in_subset"]}
    assert pasted["pasted_from"] and set(pasted["pasted_from"]) <= subset
    assert "copy-paste" in record["protocol"]["copy_paste"]
    assert not any("pasted_from" in e for c, e in conditions.items() if "copy-paste" not in c)
    compared = {(c["arm"], c["control"]) for c in record["comparisons"]}
    assert ("real+ungated", "real+classical-ungated") in compared
    assert ("real+ungated", "real+copy-paste-ungated") in compared
    assert record["headline"].startswith("Synthetic pairs vs classical augmentation")
    for name in ("real", "real+ungated", "real+classical-ungated", "real+copy-paste-ungated"):
        entry = conditions[name]
        assert 0 <= entry["s_measure"]["mean"] <= 1 and 0 <= entry["mae"]["mean"] <= 1
        assert 0 <= entry["dice"]["mean"] <= 1 and set(entry["dice_per_class"]) == {"Pa", "Sc"}
        assert run["seg_metrics"][f"{metric_name(name)}/dice"] == entry["dice"]["mean"]
    table = pd.read_csv(run["seg"] / "comparison.csv")
    assert set(table.condition) >= {"real", "real+ungated"} and len(table) % 8 == 0
    runs = pd.read_parquet(run["seg"] / "runs.parquet")
    assert len(runs) == len(table) // 8  # one seed per scored condition
    # every unit's per-image score, from which each run's score and interval recompute
    each = pd.read_parquet(run["seg"] / "test_scores.parquet")
    assert len(each) == len(runs) * n_test
    means = each.groupby(["condition", "seed"])[["s_measure", "dice"]].mean()
    for r in runs.itertuples():
        assert means.loc[(r.condition, r.seed)].tolist() == pytest.approx([r.s_measure, r.dice])
    vs = next(c for c in record["comparisons"] if (c["arm"], c["control"], c["metric"])
              == ("real+ungated", "real+classical-ungated", "s_measure"))  # fmt: skip
    assert vs["n_images"] == n_test  # the interval resamples the test images
    # the report shows the pairs' grids and the segmentation table
    run_stage("report", run["params"], out_dir=run["tmp"] / "report", masks=run["masks"],
               pairs=run["pairs"], pairs_gated=run["pgate"], segment=run["seg"])  # fmt: skip
    md = (run["tmp"] / "report" / "report.md").read_text()
    assert "## Image + mask pairs" in md and "## Segmentation" in md
    # the pairs' gate verdicts with their reasons, as the pairs_gate stage wrote them
    assert "real+ungated" in md
    verdicts = json.loads((run["pgate"] / "gate.json").read_text())["classes"]
    assert all(f"{e['verdict']}: {e['reason']}" in md for e in verdicts.values())


def test_segment_metrics_and_curves_log_to_mlflow(run, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    params = run["params"].model_copy(update={"tracking": TrackingConfig(enabled=True)})
    inputs = {"preprocessed": run["pre"], "pairs": run["pairs"], "pairs_gated": run["pgate"]}
    metrics, _ = execute(get_stage("segment"), params, out_dir=tmp_path / "seg", inputs=inputs)
    client = MlflowClient()
    logged = next(
        r
        for r in client.search_runs([client.get_experiment_by_name("defectgen").experiment_id])
        if r.info.run_name == "segment"
    )
    assert logged.data.metrics["real_ungated/dice"] == metrics["real_ungated/dice"]
    curve = client.get_metric_history(logged.info.run_id, "curve/real_ungated.seed0")
    assert len(curve) == 4  # 4 steps: a point per step (at most segment.LOSS_POINTS)


def test_without_masks_pairs_and_segment_say_skipped(folders_dataset, tmp_path):
    params = make_params("folders", folders_dataset)
    run_stage("ingest", params, out_dir=tmp_path / "ingested")
    run_stage("preprocess", params, ingested=tmp_path / "ingested", out_dir=tmp_path / "pre")
    run_stage("masks", params, preprocessed=tmp_path / "pre", out_dir=tmp_path / "masks")
    metrics = run_stage("pairs", params, preprocessed=tmp_path / "pre", base=tmp_path / "no-base",
                        masks=tmp_path / "masks", out_dir=tmp_path / "pairs")  # fmt: skip
    assert metrics == {"n_pairs": 0.0, "skipped": 1.0}
    assert manifest.read_rows(tmp_path / "pairs") == []
    run_stage("gate", params, preprocessed=tmp_path / "pre", generated=tmp_path / "pairs",
             out_dir=tmp_path / "pgate")  # fmt: skip
    seg = run_stage("segment", params, preprocessed=tmp_path / "pre", pairs=tmp_path / "pairs",
                      pairs_gated=tmp_path / "pgate", out_dir=tmp_path / "seg")  # fmt: skip
    assert seg == {"skipped": 1.0}
    assert "no masks" in json.loads((tmp_path / "seg" / "segment.json").read_text())["skipped"]
