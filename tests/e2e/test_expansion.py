"""The value experiment's command at toy size: a PIL-made image+mask dataset through the
whole DAG, results.json / results.md with the paired statistics, and a resumed rerun."""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image
from pycocotools.coco import COCO
from scipy import ndimage

from defectgen import export, manifest
from defectgen.core.diffusion import control
from defectgen.errors import DefectgenError
from experiments import gate_calibration
from experiments.expansion import run as expansion
from tests.conftest import save, texture
from tests.stages.test_masks import _dataset


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            h.update(str(path.relative_to(folder)).encode() + path.read_bytes())
    return h.hexdigest()


@pytest.mark.slow
def test_the_command_answers_with_paired_statistics_and_resumes(tmp_path: Path):
    source = _dataset(tmp_path / "source")
    for i in range(16):  # a defect-free class: plain texture, all-zero masks
        save(texture(100 + i, (32, 32)), source / "images" / f"Ok_{i}.png")
        save(np.zeros((32, 32), np.uint8), source / "masks" / f"Ok_{i}.png")
    before = _digest(source)
    profile = tmp_path / "toy.yaml"
    profile.write_text(
        yaml.safe_dump(
            {
                "data": {
                    "name": "toy",
                    "layout": "image_mask",
                    "root": str(source),
                    "label_from": "prefix",
                    "masks_required": True,
                    "normal_classes": ["Ok"],
                },
                "pairs": {"conditioning": "driver", "background": "normal"},
                "preprocess": {
                    "split": {"train": 0.5, "val": 0.25, "test": 0.25},
                    "subset": {"alpha": None, "per_class": 4},
                },
                "gate": {"extractor": "effnet-lite0"},
            }  # fmt: skip
        )
    )
    args = ["toy", "--profile", str(profile), "--toy", "--run-dir", str(tmp_path / "run"),
            "--results", str(tmp_path / "results")]  # fmt: skip
    assert expansion.main(args) == 0
    result = json.loads((tmp_path / "results" / "results.json").read_text())

    # the gate's calibration on this run: the gate again at this commit (the same verdicts
    # as the run's own), each class's no-harm check on val beside the same check on test
    calibration = ["toy", "--profile", str(profile), "--toy", "--run-dir", str(tmp_path / "run"),
                   "--results", str(tmp_path / "results"), "--write"]  # fmt: skip
    assert gate_calibration.main(calibration) == 0
    record = json.loads((tmp_path / "results" / "gate-calibration.json").read_text())
    cal = record["replicates"]["0"]["rows"]
    gated = json.loads((tmp_path / "run" / "gate" / "gate.json").read_text())["classes"]
    n_test = sum(r["split"] == "test" for r in manifest.read_rows(tmp_path / "run" / "preprocess"))
    assert [r["class"] for r in cal] == sorted(gated)
    for r in cal:
        assert r["verdict"] == gated[r["class"]]["verdict"] and r["rule"] in ("floor", "class",
                                                                              "pooled")  # fmt: skip
        assert r["test"]["n_images"] == n_test and r["test"]["n_seeds"] == 10
        assert r["agreement"] == gate_calibration.agreement(r["verdict"], r["outcome"])
    md = (tmp_path / "results" / "gate-calibration.md").read_text()
    assert md.count("| 0 |") == len(cal)

    assert set(result["stages"]) == {name for name, _ in expansion.STAGES}
    assert all(t["wall_s"] >= 0 and not t["resumed"] for t in result["stages"].values())
    # the stages that train take time (a skipped branch's stage may round to 0.0 s)
    assert all(result["stages"][s]["wall_s"] > 0 for s in ("base", "finetune", "train"))
    assert result["git"] and len(result["data"]["preprocessed_manifest_sha256"]) == 64
    assert result["params"]["train"]["seeds"] == [0, 1] and result["data"]["source"] == str(source)
    counts = result["data"]["images_per_class"]
    # 4 few-shot images per class; the rest of train is the oracle's pool
    assert all(c["few-shot"] == 4 and c.get("train", 0) >= 1 for c in counts.values())
    assert _digest(source) == before  # the raw data is copied, never written to

    clf = result["classification"]
    model = clf["models"]["squeezenet1_1"]
    for condition in ("real", "real+ungated", "real+classical-ungated", "real+oracle-ungated",
                      "all-train", "majority"):  # fmt: skip
        assert model[condition]["n_seeds"] == 2, condition
        assert 0 <= model[condition]["accuracy"]["mean"] <= 1
    assert model["real+ungated"]["steps"] == model["real"]["steps"] == 3  # equal budgets
    # the synthetic arm and its classical control add the same 4 images per class
    assert model["real+ungated"]["n_train"] == model["real+classical-ungated"]["n_train"] == 20
    asked = {(c["arm"], c["control"]) for c in clf["comparisons"]["squeezenet1_1"]}
    assert {("real+ungated", "real+classical-ungated"), ("real+ungated", "real"),
            ("real+oracle-ungated", "real+classical-ungated")} <= asked  # fmt: skip
    assert clf["headline"].startswith("Synthetic vs classical augmentation (squeezenet1_1, ")
    # 3 steps from scratch: more real data cannot show, so the headline gives no verdict
    assert clf["validity"]["squeezenet1_1"]["verdicts_allowed"] is False
    assert clf["headline"].endswith(clf["validity"]["squeezenet1_1"]["statement"])
    # the defect-free class is classified but never synthesised: no adapter, no masks, no
    # images, no pairs; the pairs' drivers take their layouts from its images
    run = tmp_path / "run"
    assert clf["labels"] == ["Ok", "Pa", "Sc"]
    assert set(json.loads((run / "finetune" / "finetune.json").read_text())) == {"Pa", "Sc"}
    assert "data.normal_classes" in json.loads((run / "masks" / "masks.json").read_text())[
        "classes"]["Ok"]["skipped"]  # fmt: skip
    generated = manifest.read_rows(run / "generate")
    pairs = manifest.read_rows(run / "pairs")
    assert {r["label"] for r in generated} == {r["label"] for r in pairs} == {"Pa", "Sc"}
    ok_rows = {r["id"]: r for r in manifest.read_rows(run / "preprocess") if r["label"] == "Ok"}
    assert {r["parent_id"] for r in pairs} <= set(ok_rows)
    for row in pairs:  # generated into a defect-free train image: the rest is that image
        g = json.loads(row["gen_params"])
        bg_row = ok_rows[g["background_id"]]
        assert g["background"] == "normal" and bg_row["split"] == "train"
        background = np.asarray(Image.open(run / "preprocess" / bg_row["path"]))
        image = np.asarray(Image.open(run / "pairs" / row["path"]))
        mask = np.asarray(Image.open(run / "pairs" / row["mask_path"])) > 127
        reach = control.band(g["blend"]["dilate"], g["blend"]["feather"])
        near = ndimage.binary_dilation(mask, iterations=reach)
        assert np.array_equal(image[~near], background[~near])
    assert set(result["gate"]) == {"Pa", "Sc"}
    assert all(g["n_synthetic"] == 4 for g in result["gate"].values())
    # per class, the synthetic images' test F1 against the classical arm's, and whether
    # each gate rule predicted it
    per_class = clf["per_class_vs_classical"]["squeezenet1_1"]["real+ungated"]
    assert [r["label"] for r in per_class] == ["Ok", "Pa", "Sc"]
    assert all(r["n_seeds"] == 2 and r["control"] == "real+classical-ungated" for r in per_class)
    agree = result["agreement"]
    assert set(agree["classes"]) == {"Pa", "Sc"} and agree["why"] is None  # gated classes
    assert {agree["rules"][k]["n"] for k in ("fd_ratio", "gate")} == {2}

    seg = result["segmentation"]
    assert seg["headline"].startswith("Synthetic pairs vs classical augmentation")
    assert seg["conditions"]["real+classical-ungated"]["n_seeds"] == 2
    # copy-paste onto the defect-free images, beside the geometric control
    assert seg["conditions"]["real+copy-paste-ungated"]["n_seeds"] == 2
    assert set(seg["conditions"]["real+copy-paste-ungated"]["pasted_from"]) <= {
        r["id"] for r in manifest.read_rows(run / "preprocess") if r["in_subset"]
    }
    # the oracle adds real pairs from outside the subset: 4 per class, or all there are
    oracle = sum(min(4, c["train"]) for k, c in counts.items() if k != "Ok")
    assert seg["conditions"]["real+oracle-ungated"]["n_added"] == oracle

    det = result["detection"]  # the toy data has masks: detectors train on every arm
    model = det["models"]["fasterrcnn_effnet_lite0_imagenet"]  # the default trunk
    assert model["real+classical-ungated"]["n_seeds"] == 2
    assert det["headline"].startswith("Synthetic vs classical augmentation for detection")

    md = (tmp_path / "results" / "results.md").read_text()
    assert clf["headline"] in md and seg["headline"] in md and "| majority |" in md
    assert "FD ratio rule right on" in md
    assert "generated.png" in result["grids"]
    assert (tmp_path / "results" / "generated.png").is_file()
    # every unit's score beside the result: the classifiers' per test image
    assert result["replicate"] == 0
    assert set(result["unit_scores"]) == {
        "train-test_predictions.parquet",
        "train-runs.parquet",
        "segment-runs.parquet",
        "segment-test_scores.parquet",
        "detect-runs.parquet",
    }
    units = pd.read_parquet(tmp_path / "results" / "train-test_predictions.parquet")
    runs_trained = pd.read_parquet(tmp_path / "results" / "train-runs.parquet")
    assert len(units) == result["classification"]["test_images"] * len(runs_trained) > 0

    # the run's expanded training set leaves as COCO, read back by pycocotools
    folders = export.Run(run / "preprocess", run / "generate", run / "gate", run / "pairs",
                         run / "pairs_gate")  # fmt: skip
    summary = export.export(folders, fmt="coco", condition="real+ungated", out=tmp_path / "coco")
    train = COCO(str(tmp_path / "coco" / "annotations" / "instances_train.json"))
    origins = [i["origin"] for i in train.loadImgs(train.getImgIds())]
    assert origins.count("synthetic") == summary["synthetic"] > 0
    assert origins.count("real") == 12
    bare = [i for i in train.getImgIds() if not train.getAnnIds(imgIds=[i])]
    assert len(bare) == 4  # the defect-free class's few-shot images: background, no instance
    test = COCO(str(tmp_path / "coco" / "annotations" / "instances_test.json"))
    assert {i["origin"] for i in test.loadImgs(test.getImgIds())} == {"real"}

    # Rerun: every stage is found done with the same params, nothing is trained again.
    assert expansion.main(args) == 0
    again = json.loads((tmp_path / "results" / "results.json").read_text())
    assert all(t["resumed"] for t in again["stages"].values())
    assert again["classification"]["models"] == clf["models"]

    # A stage's key is the params it reads: a detector setting reruns detect (and report,
    # downstream of it), nothing else
    changed = yaml.safe_load(profile.read_text())
    profile.write_text(yaml.safe_dump({**changed, "detect": {"lr": 0.01}}))
    assert expansion.main(args) == 0
    rerun = json.loads((tmp_path / "results" / "results.json").read_text())
    assert rerun["params"]["detect"]["lr"] == 0.01
    assert {k for k, t in rerun["stages"].items() if not t["resumed"]} == {"detect", "report"}

    # --keep-finished adds a stage to a finished run under changed params: the finished
    # stages are kept and say so; the missing one (report, the cheapest) runs with them
    profile.write_text(yaml.safe_dump({**changed, "detect": {"lr": 0.01}, "train": {"lr": 0.002}}))
    (run / ".done" / "report.json").unlink()
    assert expansion.main([*args, "--keep-finished"]) == 0
    kept = json.loads((tmp_path / "results" / "results.json").read_text())
    assert kept["params"]["train"]["lr"] == 0.002
    assert not kept["stages"]["report"]["resumed"]
    assert not kept["stages"]["report"]["other_params"]
    assert kept["stages"]["detect"]["resumed"] and not kept["stages"]["detect"]["other_params"]
    assert kept["stages"]["train"]["resumed"] and kept["stages"]["train"]["other_params"]
    assert not kept["stages"]["ingest"]["other_params"]  # it reads nothing that changed
    assert (
        "earlier params (kept: --keep-finished)"
        in (tmp_path / "results" / "results.md").read_text()
    )


def _gate(fd_passed: bool, verdict: str) -> dict:
    return {"fidelity_passed": fd_passed, "verdict": verdict, "ratio": 1.0}


def _outcome(label: str, verdict: str) -> dict:
    return {"label": label, "delta": 0.0, "ci": [0.0, 0.0], "n_seeds": 10, "verdict": verdict}


def test_agreement_scores_each_rule_against_the_test_outcome():
    gate = {
        "helped-passed": _gate(True, "pass"),  # both rules right
        "helped-failed": _gate(False, "inconclusive"),  # both wrong: a helpful class kept out
        "hurt-passed": _gate(True, "fail"),  # the FD rule wrong, the gate right
        "flat-failed": _gate(False, "fail"),  # both right: no gain over classical to miss
        "untrained": _gate(True, "pass"),  # no outcome: not counted
    }
    outcomes = [
        _outcome("helped-passed", "better"),
        _outcome("helped-failed", "better"),
        _outcome("hurt-passed", "worse"),
        _outcome("flat-failed", "not distinguishable"),
    ]
    agree = expansion.agreement(gate, {"real+ungated": outcomes})
    assert set(agree["classes"]) == {"helped-passed", "helped-failed", "hurt-passed",
                                     "flat-failed"}  # fmt: skip
    # over the 3 resolved outcomes (flat-failed is not): FD rule right on helped-passed
    # only, the gate on helped-passed and hurt-passed
    assert agree["rules"]["fd_ratio"] == {"right": 2, "n": 4, "rate": 0.5, "right_resolved": 1,
                                          "n_resolved": 3, "rate_resolved": 1 / 3}  # fmt: skip
    assert agree["rules"]["gate"] == {
        "right": 3, "n": 4, "rate": 0.75, "right_resolved": 2, "n_resolved": 3,
        "rate_resolved": 2 / 3, "inconclusive": 1, "inconclusive_share": 0.25,
    }  # fmt: skip
    assert agree["classes"]["hurt-passed"]["fd_ratio_right"] is False
    assert "not trained" in expansion.agreement(gate, {})["why"]


def test_an_unknown_dataset_names_the_profiles_there_are(tmp_path: Path):
    with pytest.raises(SystemExit, match=r"no such profile; datasets with one: \['elpv'"):
        expansion.main(["nosuch", "--run-dir", str(tmp_path)])


def test_the_committed_profiles_are_valid_overrides():
    for profile in sorted(expansion.PROFILES.glob("*.yaml")):
        raw = expansion.build_params(profile.stem, profile, toy=False, track=False)
        assert raw["data"]["name"] == profile.stem
        assert len(raw["train"]["seeds"]) >= 10  # the bar for classifiers


def test_set_overrides_come_after_the_profile_and_are_validated():
    profile = expansion.PROFILES / "sd-saliency-900.yaml"
    extra = expansion.setting("pairs.blend.strength=0.6")
    assert extra == {"pairs": {"blend": {"strength": 0.6}}}
    raw = expansion.build_params(
        "sd-saliency-900",
        profile,
        toy=False,
        track=False,
        settings=(expansion.setting("pairs.background=real"), extra),
    )
    assert raw["pairs"]["background"] == "real" and raw["pairs"]["blend"]["strength"] == 0.6
    assert raw["pairs"]["per_class"] == 48 and raw["pairs"]["blend"]["dilate"] == 2  # kept
    with pytest.raises(argparse.ArgumentTypeError, match="expected SECTION.KEY=VALUE"):
        expansion.setting("pairs.background")
    with pytest.raises(DefectgenError, match="background"):
        expansion.build_params(
            "sd-saliency-900",
            profile,
            toy=False,
            track=False,
            settings=(expansion.setting("pairs.background=elsewhere"),),
        )


def test_a_result_from_uncommitted_code_is_refused_unless_exploratory(tmp_path: Path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "code.py").write_text("x = 1\n")
    subprocess.run([*git, "add", "code.py"], check=True)
    subprocess.run([*git, "commit", "-qm", "one"], check=True)
    sha = expansion.clean_commit(False, repo)
    assert sha and not sha.endswith("-dirty")
    (repo / "code.py").write_text("x = 2\n")  # an uncommitted change
    with pytest.raises(SystemExit, match="uncommitted changes.*--exploratory"):
        expansion.clean_commit(False, repo)
    assert expansion.clean_commit(True, repo) == f"{sha}-dirty"
    # an earlier run's committed result, rewritten by the next run, is output, not code
    subprocess.run([*git, "checkout", "-q", "code.py"], check=True)
    results = repo / expansion.RESULT_PATHS[0]
    results.mkdir(parents=True)
    (results / "results.json").write_text("{}")
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "a result"], check=True)
    (results / "results.json").write_text('{"rerun": true}')
    assert not expansion.clean_commit(False, repo).endswith("-dirty")


def test_a_replicate_changes_the_seed_and_nothing_else():
    profile = expansion.PROFILES / "elpv.yaml"
    base = expansion.replicate_params("elpv", profile, False, False, (), 0)
    third = expansion.replicate_params("elpv", profile, False, False, (), 2)
    assert third["seed"] == base["seed"] + 2
    assert {k: v for k, v in third.items() if k != "seed"} == {
        k: v for k, v in base.items() if k != "seed"
    }
