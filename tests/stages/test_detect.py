"""The detect stage on a PIL-made finished run (tests.test_export._run): every arm and
its controls at an equal step budget, COCOeval numbers, annotations inherited only up
to the strength limit, and a dataset without masks or boxes skipped."""

from __future__ import annotations

import json
from pathlib import Path

from defectgen import artifacts, manifest
from tests.conftest import make_params, run_stage
from tests.test_export import _run


def _params(**detect):
    cfg = {"seeds": [0, 1], "steps": 2, "evals": 1, "batch_size": 4, **detect}
    return make_params(root=Path("unused"), detect=cfg)


def _folders(run) -> dict:
    return {"preprocessed": run.preprocessed, "generated": run.generated, "gated": run.gated,
            "pairs": run.pairs, "pairs_gated": run.pairs_gated}  # fmt: skip


def test_every_arm_trains_equal_steps_and_is_scored_with_coco(tmp_path: Path):
    run = _run(tmp_path / "run")
    out = tmp_path / "detect"
    metrics = run_stage("detect", _params(), **_folders(run), out_dir=out)
    report = json.loads((out / artifacts.DETECT_JSON).read_text())
    model = report["models"]["fasterrcnn_effnet_lite0_imagenet"]
    assert report["order"] == ["real", "real+synthetic", "real+classical", "real+copy-paste",
                               "real+oracle", "real+ungated", "real+classical-ungated",
                               "real+copy-paste-ungated", "real+oracle-ungated",
                               "all-train"]  # fmt: skip
    assert all(e["steps"] == 2 and e["n_seeds"] == 2 for e in model.values())
    # gated: patch's strength-0.3 child (its 0.8 sibling has no layout to inherit) and one
    # pair per class; ungated: both classes' 0.3 children and two pairs per class
    assert model["real+synthetic"]["n_added"] == model["real+classical"]["n_added"] == 3
    assert model["real+ungated"]["n_added"] == model["real+classical-ungated"]["n_added"] == 6
    # copy-paste: as many real defects pasted onto real subset images (the masks are known)
    assert model["real+copy-paste"]["n_added"] == 3
    assert model["real+copy-paste-ungated"]["n_added"] == 6
    assert "copy-paste" in report["protocol"]["copy_paste"]
    subset = {r["id"] for r in manifest.read_rows(run.preprocessed) if r["in_subset"]}
    for name in ("real+copy-paste", "real+copy-paste-ungated"):  # provenance, per seed
        assert model[name]["short"] == [0, 0] and len(model[name]["overlapping"]) == 2
        assert model[name]["pasted_from"] and set(model[name]["pasted_from"]) <= subset
    assert not any("pasted_from" in e for c, e in model.items() if "copy-paste" not in c)
    assert model["real+oracle-ungated"]["n_added"] == 4  # 2 outside per class: all there are
    assert model["real"]["n_train"] == 6 and model["all-train"]["n_train"] == 10
    assert report["left_out"]["real+ungated"] == {"none (strength 0.8 > 0.5)": 2}
    assert all(0.0 <= e["map_mean"] <= e["map50_mean"] + 1e-9 <= 1.0 for e in model.values())
    asked = {(c["arm"], c["control"], c["metric"])
             for c in report["comparisons"]["fasterrcnn_effnet_lite0_imagenet"]}  # fmt: skip
    assert ("real+ungated", "real+classical-ungated", "map") in asked
    assert ("real+ungated", "real+copy-paste-ungated", "map") in asked
    assert report["headline"].startswith("Synthetic vs classical augmentation for detection")
    assert (out / artifacts.BOXES_PNG).is_file() and (out / artifacts.RUNS_PARQUET).is_file()
    assert metrics["n_runs"] == 20.0  # 10 conditions x 2 seeds
    key = "fasterrcnn_effnet_lite0_imagenet/real_ungated/vs_real_classical-ungated/map_delta"
    assert key in metrics  # the default model: the ImageNet trunk
    # one val check cannot show a detector levelled off: no verdict, and the headline says why
    check = report["validity"]["fasterrcnn_effnet_lite0_imagenet"]
    assert check["verdicts_allowed"] is False and "cannot measure" in report["headline"]
    assert all(e["best_steps"] == [2, 2] and e["budget_bound"] for e in model.values())


def test_a_dataset_without_masks_or_boxes_is_skipped(tmp_path: Path):
    run = _run(tmp_path / "run")
    rows = manifest.read_rows(run.preprocessed)
    plain = [{**r, "mask_path": None, "boxes": None} for r in rows]
    manifest.write_manifest(plain, run.preprocessed / manifest.MANIFEST_NAME)
    metrics = run_stage("detect", _params(), **_folders(run), out_dir=tmp_path / "detect")
    assert metrics == {"skipped": 1.0}
    report = json.loads((tmp_path / "detect" / artifacts.DETECT_JSON).read_text())
    assert "neither masks nor boxes" in report["skipped"]
