"""The train stage on a small PIL-made dataset: which images each condition trains on
(asserted on the ids), the test split never trained on, skips, and the reports."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from defectgen import manifest
from defectgen.core import validity
from defectgen.core.images import encode_png, pixel_id
from defectgen.errors import DataError
from defectgen.stages import train
from tests.conftest import make_params, run_stage, save, stripes

CONDITIONS = ["real+synthetic", "real+ungated", "substitution"]  # the synthetic arms
# what runs with them: real and the matched controls (core.arms)
RUN = ["real", "real+synthetic", "real+classical", "real+oracle", "real+ungated",
       "real+classical-ungated", "real+oracle-ungated", "substitution", "all-train",
       "majority"]  # fmt: skip


def params_for(root: Path, **train):
    return make_params(
        "folders",
        root,
        preprocess={
            "image_size": 32,
            "split": {"train": 0.5, "val": 0.25, "test": 0.25},
            "subset": {"alpha": 0.5},
        },
        train={"models": ["resnet18"], "seeds": [0, 1], "steps": 3, "evals": 2, **train},
    )


def synthetic_rows(folder: Path, parents: list[dict], start: int) -> list[dict]:
    rows = []
    for i, parent in enumerate(parents):
        px = stripes(10_000 + start + i, vertical=parent["label"] == "vertical")
        oid = pixel_id(px)
        rel = f"images/{parent['label']}/{oid[:16]}.png"
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(encode_png(px))
        rows.append(
            manifest.make_row(
                id=oid,
                path=rel,
                label=parent["label"],
                split="train",
                width=32,
                height=32,
                channels=1,
                origin="synthetic",
                parent_id=parent["id"],
                generator="test",
                gen_params="{}",
                source="test",
            )  # fmt: skip
        )
    return rows


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> dict:
    """2 classes x 24 images -> preprocess; 6 synthetic images per class generated,
    of which the 'gate' passed the horizontal class only."""
    tmp = tmp_path_factory.mktemp("train")
    for ci, label in enumerate(("horizontal", "vertical")):
        for i in range(24):
            save(stripes(ci * 100 + i, vertical=bool(ci)), tmp / "raw" / label / f"{i}.png")
    params = params_for(tmp / "raw")
    run_stage("ingest", params, out_dir=tmp / "ingested")
    run_stage("preprocess", params, ingested=tmp / "ingested", out_dir=tmp / "pre")
    rows = manifest.read_rows(tmp / "pre")
    synthetic = []
    for label in ("horizontal", "vertical"):
        parents = [r for r in rows if r["label"] == label and r["in_subset"]]
        synthetic += synthetic_rows(tmp / "gen", (parents * 6)[:6], len(synthetic))
    manifest.write_manifest(synthetic, tmp / "gen" / manifest.MANIFEST_NAME)
    gated = [r for r in synthetic if r["label"] == "horizontal"]
    manifest.write_manifest(gated, tmp / "gated" / manifest.MANIFEST_NAME)
    return {"tmp": tmp, "rows": rows, "synthetic": synthetic, "gated": gated}


def run_train(dataset: dict, out: Path, gated: Path | None = None, **train_cfg) -> dict:
    tmp = dataset["tmp"]
    return run_stage(
        "train",
        params_for(tmp / "raw", **train_cfg),
        preprocessed=tmp / "pre",
        generated=tmp / "gen",
        gated=gated or tmp / "gated",
        out_dir=out,
    )


def test_each_condition_trains_on_what_it_says_and_never_on_test(dataset, tmp_path):
    # unbalanced batches: after 3 steps from scratch the class-balanced default leaves
    # the compared arms' models predicting identically, with no interval to check
    metrics = run_train(dataset, tmp_path / "train", conditions=CONDITIONS, class_balance="none")
    rows = dataset["rows"]
    train_rows = [r for r in rows if r["split"] == "train"]
    subset = {r["id"] for r in rows if r["in_subset"]}
    outside = {r["id"]: r["label"] for r in train_rows if not r["in_subset"]}
    held_out = {r["id"] for r in rows if r["split"] in ("val", "test")}
    gated = {r["id"] for r in dataset["gated"]}  # 6 horizontal images
    every = {r["id"] for r in dataset["synthetic"]}  # 6 per class
    runs = pd.read_parquet(tmp_path / "train" / "runs.parquet")
    assert sorted(set(runs["condition"])) == sorted(RUN)
    assert len(runs) == len(RUN) * 2 and metrics["n_runs"] == len(runs)
    for _, run in runs.iterrows():
        assert not set(run["train_ids"]) & held_out  # val and test never trained on
        # the equal budget: every trained condition takes the same optimizer steps
        assert run["steps"] == (0 if run["condition"] == "majority" else 3)
    exact = {  # the oracle arms and substitution draw: checked below
        "real": subset,
        "real+synthetic": subset | gated,
        "real+ungated": subset | every,
        "real+classical": subset,
        "real+classical-ungated": subset,
        "all-train": {r["id"] for r in train_rows},
        "majority": subset,
    }
    for condition, expected in exact.items():
        trained = runs[runs["condition"] == condition]["train_ids"]
        assert len(trained) == 2 and all(set(ids) == expected for ids in trained), condition

    def by_metric(condition: str, seed: int, metric: str) -> float:
        hit = runs[(runs["condition"] == condition) & (runs["seed"] == seed)].iloc[0]
        return float(hit[metric])

    def counts(condition: str, seed: int = 0) -> dict:
        hit = runs[(runs["condition"] == condition) & (runs["seed"] == seed)].iloc[0]
        return json.loads(hit["n_train"])

    real = counts("real")
    n_outside = {c: sum(1 for lab in outside.values() if lab == c) for c in real}
    # the controls add per class what their arm adds: gated 6 horizontal; ungated 6 + 6
    assert counts("real+classical") == {"horizontal": real["horizontal"] + 6,
                                        "vertical": real["vertical"]}  # fmt: skip
    assert counts("real+classical-ungated") == {c: n + 6 for c, n in real.items()}
    # the oracle: distinct real train images from outside the subset, up to what exists
    want = {c: min(6, n_outside[c]) for c in real}
    assert counts("real+oracle-ungated") == {c: n + want[c] for c, n in real.items()}
    for seed in (0, 1):
        hit = runs[(runs["condition"] == "real+oracle-ungated") & (runs["seed"] == seed)]
        picked = set(hit.iloc[0]["train_ids"]) - subset
        assert picked <= set(outside) and len(picked) == sum(want.values())
    sub = runs[runs["condition"] == "substitution"].iloc[0]
    # horizontal: its removed train images replaced by gate-passed ones (as many as exist)
    assert sub["n_synthetic"] == min(n_outside["horizontal"], len(gated))
    assert set(sub["train_ids"]) - subset <= gated
    classical = runs[runs["condition"] == "real+classical"].iloc[0]
    assert classical["n_classical"] == len(gated) and classical["n_synthetic"] == 0

    report = json.loads((tmp_path / "train" / "eval.json").read_text())
    assert report["labels"] == ["horizontal", "vertical"] and report["skipped"] == {}
    assert report["protocol"]["matched_to"]["real+oracle-ungated"] == "real+ungated"
    short = {c: 6 - n for c, n in n_outside.items() if n < 6}
    assert report["oracle_shortfall"].get("real+oracle-ungated", {}) == short
    entries = report["models"]["resnet18"]
    assert report["order"] == RUN  # table order: each arm next to its controls
    assert entries["real"]["accuracy_delta"] == 0.0 and entries["real"]["n_seeds"] == 2
    for entry in entries.values():
        assert 0.0 <= entry["accuracy_mean"] <= 1.0 and entry["accuracy_std"] >= 0.0
        assert set(entry["recall_mean"]) == {"horizontal", "vertical"}
    # majority: the constant predictor, the whole train split's most frequent class
    test = [r for r in rows if r["split"] == "test"]
    whole = {c: sum(r["label"] == c for r in train_rows) for c in real}
    top = max(sorted(whole), key=lambda c: whole[c])
    assert entries["majority"]["accuracy_mean"] == sum(r["label"] == top for r in test) / len(test)
    # the validity record: all-train minus real on the primary metric, from the runs
    metric = report["primary_metric"]
    assert metric == "accuracy"  # the test split is balanced (6 per class)
    check = report["validity"]["resnet18"]
    upper = [by_metric("all-train", k, metric) - by_metric("real", k, metric) for k in (0, 1)]
    assert check["all_train_minus_real"]["delta"] == pytest.approx(np.mean(upper))
    assert check["constant_predictor"] == entries["majority"]["accuracy_mean"]
    assert check["verdicts_allowed"] is False  # 3 steps: this budget cannot tell
    assert all(c["verdict"] == "no verdict: this budget cannot measure the value of data here"
               for c in report["comparisons"]["resnet18"])  # fmt: skip
    assert "This budget cannot measure the value of data here" in report["headline"]
    assert all(e["best_steps"] and isinstance(e["budget_bound"], bool)
               for c, e in entries.items() if c != "majority")  # fmt: skip
    # paired comparisons, computed over the two seeds, Holm-adjusted within the family
    by_seed = {(r["condition"], r["seed"]): r["accuracy"] for _, r in runs.iterrows()}
    cmp = next(c for c in report["comparisons"]["resnet18"]
               if (c["arm"], c["control"], c["metric"])
               == ("real+ungated", "real+classical-ungated", "accuracy"))  # fmt: skip
    diffs = [by_seed["real+ungated", k] - by_seed["real+classical-ungated", k] for k in (0, 1)]
    assert cmp["n_seeds"] == 2 and cmp["delta"] == pytest.approx(np.mean(diffs))
    assert cmp["n_images"] == len(test)  # the interval resamples the test images too
    assert cmp["ci"][0] <= cmp["delta"] <= cmp["ci"][1]
    assert cmp["p_adjusted"] >= cmp["p_value"]
    assert "test images" in report["protocol"]["interval"]
    # every unit's score is stored: each run's accuracy recomputes from its image rows
    preds = pd.read_parquet(tmp_path / "train" / "test_predictions.parquet")
    assert len(preds) == len(runs) * len(test)
    assert set(preds["image_id"]) == {r["id"] for r in test}
    correct = (preds["predicted"] == preds["label"]).groupby([preds["condition"], preds["seed"]])
    for (condition, seed), accuracy in correct.mean().items():
        assert accuracy == pytest.approx(by_seed[condition, seed])
    key = "resnet18/real_ungated/vs_real_classical-ungated/accuracy_delta"
    assert metrics[key] == pytest.approx(cmp["delta"])
    assert report["headline"].startswith(
        "Synthetic vs classical augmentation (resnet18, real+synthetic vs real+classical"
    )
    assert set(report["captured"]["resnet18"]) == {"real+synthetic", "real+ungated"}
    confusion = json.loads((tmp_path / "train" / "confusion.json").read_text())
    assert np.sum(confusion["resnet18"]["real"]) == 2 * len(test)  # summed over 2 seeds
    assert "resnet18/real_synthetic/accuracy_mean" in metrics  # MLflow-safe key
    plot = pd.read_csv(tmp_path / "train" / "comparison.csv")
    assert set(plot["condition"]) == set(RUN)


def test_nothing_to_add_is_skipped_and_reported(dataset, tmp_path):
    empty = tmp_path / "empty_gate"
    manifest.write_manifest([], empty / manifest.MANIFEST_NAME)
    run_train(dataset, tmp_path / "train", gated=empty, seeds=[0], conditions=CONDITIONS)
    report = json.loads((tmp_path / "train" / "eval.json").read_text())
    assert report["skipped"] == {
        "real+synthetic": "no synthetic images passed the gate",
        "real+classical": "real+synthetic adds no image to match",
        "real+oracle": "real+synthetic adds no image to match",
        "substitution": "the gate passed no synthetic image",
    }
    # the ungated arm still has its controls: the demo's case when the gate passes nothing
    assert set(report["models"]["resnet18"]) == {
        "real", "real+ungated", "real+classical-ungated", "real+oracle-ungated", "all-train",
        "majority",
    }  # fmt: skip
    assert "real+ungated vs real+classical-ungated" in report["headline"]


def test_synthetic_images_from_held_out_parents_are_refused(dataset, tmp_path):
    tmp = dataset["tmp"]
    test_row = next(r for r in dataset["rows"] if r["split"] == "test")
    bad = tmp_path / "gen"
    rows = synthetic_rows(bad, [test_row], 500)
    manifest.write_manifest(rows, bad / manifest.MANIFEST_NAME)
    with pytest.raises(DataError, match=r"synthetic images may only derive from train"):
        run_stage(
            "train",
            params_for(tmp / "raw"),
            preprocessed=tmp / "pre",
            generated=bad,
            gated=tmp / "gated",
            out_dir=tmp_path / "train",
        )


def test_two_workers_train_the_same_runs_as_one(dataset, tmp_path):
    """train.workers runs the (model, condition, seed) units in separate one-thread
    processes: the records equal those of one one-thread process, in the same order."""
    cfg = {"conditions": ["real+synthetic"], "oracle": False, "seeds": [0, 1]}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # what each worker process has
    try:
        run_train(dataset, tmp_path / "serial", workers=1, **cfg)
    finally:
        torch.set_num_threads(threads)
    metrics = run_train(dataset, tmp_path / "pool", workers=2, **cfg)
    serial, pool = (pd.read_parquet(tmp_path / d / "runs.parquet") for d in ("serial", "pool"))
    assert len(pool) == 8 and metrics["n_runs"] == 8  # real, +synthetic, +classical, majority
    columns = ["condition", "seed", "accuracy", "macro_f1", "best_step", "train_ids_sha256"]
    pd.testing.assert_frame_equal(serial[columns], pool[columns])
    curves = sorted((tmp_path / "pool" / "curves").glob("*.csv"))  # loss and val per check
    assert len(curves) == 2 * 6  # every trained run's (majority trains nothing)
    for path in curves:
        assert path.read_bytes() == (tmp_path / "serial" / "curves" / path.name).read_bytes()
    assert any(k.startswith("time/resnet18/") for k in metrics)  # each unit timed


def test_the_headline_gives_a_verdict_only_when_the_validity_check_passed():
    row = {"arm": "real+ungated", "control": "real+classical-ungated", "metric": "accuracy",
           "delta": 0.03, "ci": [0.01, 0.05], "p_value": 0.004, "p_adjusted": 0.02,
           "n_seeds": 10, "n_images": 261, "verdict": "better"}  # fmt: skip
    allowed = {"m": {"verdicts_allowed": True, "statement": "More real data helps ..."}}
    refused = {"m": {"verdicts_allowed": False, "statement": "This budget cannot ..."}}
    text = train.headline({"m": [row]}, allowed, "accuracy")
    assert (
        "real+ungated vs real+classical-ungated" in text
        and ": better; test accuracy +3.0 pp" in text
        and "10 paired seeds x 261 test images" in text
    )
    assert train.headline({"m": [row]}, refused, "accuracy").endswith(": This budget cannot ...")
    # the metric the headline reads is the primary one
    assert train.headline({"m": [row]}, allowed, "balanced_accuracy").startswith("No synthetic")
    kept = validity.withhold([row], allowed["m"])
    withheld = validity.withhold([row], refused["m"])
    assert kept == [row] and withheld[0]["verdict"].startswith("no verdict")
    assert withheld[0]["delta"] == row["delta"]  # the numbers stay; only the verdict goes


def test_a_probe_trains_beside_a_pooled_model_on_features_made_once(dataset, tmp_path):
    """The judge's probe (effnet_lite2_probe) trains in the stage's process on its frozen
    trunk's features (made once per image, reused by every condition and seed) while
    squeezenet trains in the worker pool; both models' runs are recorded, the probe
    learns the stripes, and each probe reads its own network's features."""
    cfg = {"conditions": ["real+synthetic"], "oracle": False, "seeds": [0, 1], "steps": 30,
           "lr": 1e-2, "views": 4, "workers": 2}  # fmt: skip
    run_train(dataset, tmp_path / "train", models=["squeezenet1_1", "effnet_lite2_probe"], **cfg)
    runs = pd.read_parquet(tmp_path / "train" / "runs.parquet")
    for model in ("squeezenet1_1", "effnet_lite2_probe"):
        mine = runs[runs["model"] == model]
        assert (
            sorted(set(mine["condition"]))
            == sorted(["real", "real+synthetic", "real+classical", "majority"])
            and len(mine) == 8
        )
    probe = runs[(runs["model"] == "effnet_lite2_probe") & (runs["condition"] == "real")]
    assert probe["accuracy"].min() >= 0.9
    report = json.loads((tmp_path / "train" / "eval.json").read_text())
    said = report["protocol"]["models"]["effnet_lite2_probe"]
    assert "frozen EfficientNet-Lite2" in said and "none of the generator's instruments" in said

    data = train._Data(params_for(dataset["tmp"] / "raw", **cfg), dataset["tmp"] / "pre",
                       dataset["tmp"] / "gen", dataset["tmp"] / "gated")  # fmt: skip
    rows = data.subset[:3]
    judge = data.features(rows, views=4, network="efficientnet-lite2").clone()
    generators = data.features(rows, views=4, network="efficientnet-lite0")
    assert judge.shape == generators.shape == (3, 4, 1280)
    assert not torch.allclose(judge, generators)  # two networks, two feature spaces
    data._trunks = {}  # a cached image is not passed through a trunk again
    flipped = data.features(list(reversed(rows)), views=4, network="efficientnet-lite2")
    assert torch.equal(flipped, judge.flip(0)) and data._trunks == {}
