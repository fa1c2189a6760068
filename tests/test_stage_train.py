"""The train stage on a small PIL-made dataset: which images each condition trains on
(asserted on the ids), the test split never trained on, skips, and the reports."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from defectgen import manifest
from defectgen.core.images import encode_png, pixel_id
from defectgen.errors import DataError
from defectgen.stages import ingest, preprocess, train
from tests.conftest import make_params, save

CONDITIONS = ["real", "real+synthetic", "real+ungated", "substitution", "real+classical"]


def stripes(seed: int, vertical: bool, size: int = 32) -> np.ndarray:
    """Class-typical images: stripes across or down, random phase, period and noise."""
    rng = np.random.default_rng(seed)
    axis = np.arange(size)
    wave = 127 + 100 * np.sin(2 * np.pi * (axis + rng.uniform(0, 8)) / rng.uniform(5, 9))
    img = np.tile(wave, (size, 1)) if vertical else np.tile(wave[:, None], (1, size))
    return np.clip(img + rng.normal(0, 20, img.shape), 0, 255).astype(np.uint8)


def params_for(root: Path, **train):
    return make_params(
        "folders",
        root,
        preprocess={
            "image_size": 32,
            "split": {"train": 0.5, "val": 0.25, "test": 0.25},
            "subset": {"alpha": 0.5},
        },
        train={"models": ["resnet18"], "seeds": [0, 1], "epochs": 2, **train},
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
    ingest.run(params, out_dir=tmp / "ingested")
    preprocess.run(params, ingested=tmp / "ingested", out_dir=tmp / "pre")
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
    return train.run(
        params_for(tmp / "raw", **train_cfg),
        preprocessed=tmp / "pre",
        generated=tmp / "gen",
        gated=gated or tmp / "gated",
        out_dir=out,
    )


def test_each_condition_trains_on_what_it_says_and_never_on_test(dataset, tmp_path):
    metrics = run_train(dataset, tmp_path / "train", conditions=CONDITIONS)
    rows = dataset["rows"]
    subset = {r["id"] for r in rows if r["in_subset"]}
    held_out = {r["id"] for r in rows if r["split"] in ("val", "test")}
    gated = {r["id"] for r in dataset["gated"]}
    every = {r["id"] for r in dataset["synthetic"]}
    runs = pd.read_parquet(tmp_path / "train" / "runs.parquet")
    assert len(runs) == len(CONDITIONS) * 2 and metrics["n_runs"] == len(runs)
    for _, run in runs.iterrows():
        ids = set(run["train_ids"])
        assert not ids & held_out  # val and test never trained on
        expected = {
            "real": subset,
            "real+synthetic": subset | gated,
            "real+ungated": subset | every,
            "real+classical": subset,
        }.get(run["condition"])
        if expected is not None:
            assert ids == expected, run["condition"]
    n_train = {r["label"]: 0 for r in rows}
    for r in rows:
        n_train[r["label"]] += r["split"] == "train" and not r["in_subset"]
    sub = runs[runs["condition"] == "substitution"].iloc[0]
    # horizontal: its removed train images replaced by gate-passed ones (as many as exist)
    assert sub["n_synthetic"] == min(n_train["horizontal"], len(gated))
    assert set(sub["train_ids"]) - subset <= gated
    classical = runs[runs["condition"] == "real+classical"].iloc[0]
    assert classical["n_classical"] == len(gated) and classical["n_synthetic"] == 0
    counts = json.loads(classical["n_train"])
    real_counts = json.loads(runs[runs["condition"] == "real"].iloc[0]["n_train"])
    assert counts["horizontal"] == real_counts["horizontal"] + len(gated)
    assert counts["vertical"] == real_counts["vertical"]

    report = json.loads((tmp_path / "train" / "eval.json").read_text())
    assert report["labels"] == ["horizontal", "vertical"] and report["skipped"] == {}
    entries = report["models"]["resnet18"]
    assert set(entries) == set(CONDITIONS)
    assert entries["real"]["accuracy_delta"] == 0.0 and entries["real"]["n_seeds"] == 2
    for entry in entries.values():
        assert 0.0 <= entry["accuracy_mean"] <= 1.0 and entry["accuracy_std"] >= 0.0
        assert set(entry["recall_mean"]) == {"horizontal", "vertical"}
    confusion = json.loads((tmp_path / "train" / "confusion.json").read_text())
    n_test = sum(r["split"] == "test" for r in rows)
    assert np.sum(confusion["resnet18"]["real"]) == 2 * n_test  # summed over 2 seeds
    assert "resnet18/real_synthetic/accuracy_mean" in metrics  # MLflow-safe key
    plot = pd.read_csv(tmp_path / "train" / "comparison.csv")
    assert set(plot["condition"]) == set(CONDITIONS)


def test_nothing_to_add_is_skipped_and_reported(dataset, tmp_path):
    empty = tmp_path / "empty_gate"
    manifest.write_manifest([], empty / manifest.MANIFEST_NAME)
    run_train(dataset, tmp_path / "train", gated=empty, seeds=[0], conditions=CONDITIONS)
    report = json.loads((tmp_path / "train" / "eval.json").read_text())
    assert report["skipped"] == {
        "real+synthetic": "the gate passed no synthetic image",
        "substitution": "the gate passed no synthetic image",
        "real+classical": "real+synthetic adds no image to match",
    }
    assert set(report["models"]["resnet18"]) == {"real", "real+ungated"}


def test_synthetic_images_from_held_out_parents_are_refused(dataset, tmp_path):
    tmp = dataset["tmp"]
    test_row = next(r for r in dataset["rows"] if r["split"] == "test")
    bad = tmp_path / "gen"
    rows = synthetic_rows(bad, [test_row], 500)
    manifest.write_manifest(rows, bad / manifest.MANIFEST_NAME)
    with pytest.raises(DataError, match=r"synthetic images may only derive from train"):
        train.run(
            params_for(tmp / "raw"),
            preprocessed=tmp / "pre",
            generated=bad,
            gated=tmp / "gated",
            out_dir=tmp_path / "train",
        )
