"""The masks stage on a small image + mask dataset built with PIL, and on one without masks."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from defectgen import manifest
from defectgen.core import masks as core_masks
from defectgen.core.images import decode_image
from defectgen.stages import masks
from tests.conftest import make_params, run_stage, save, texture

TOY = {
    "methods": ["hmi", "perturb", "ddpm"],
    "per_class": 6,
    "data": "train",
    "hmi_between": 3,
    "ddpm": {"size": 16, "channels": [8, 16], "steps": 15, "batch_size": 8, "sample_steps": 4},
}
# every mask made is used: the test of what each method makes
USE_ALL = {"range_factor": 100.0, "min_accepted": 0.0, "max_distance_ratio": 1e6}


def _dataset(root: Path) -> Path:
    """images/<Cls>_<n>.png + masks/: "Sc" thin diagonal strokes (small: HMI in image
    space), "Pa" large squares (HMI in the producer's latent space)."""
    for i in range(16):
        rng = np.random.default_rng(i)
        stroke = np.zeros((32, 32), np.uint8)
        r, c = rng.integers(2, 12, 2)
        for k in range(14):
            stroke[r + k, c + k // 2] = 255
        square = np.zeros((32, 32), np.uint8)
        r, c = rng.integers(0, 14, 2)
        square[r : r + 14, c : c + 14] = 255
        for cls, m in (("Sc", stroke), ("Pa", square)):
            save(
                texture(i + (0 if cls == "Sc" else 50), (32, 32)),
                root / "images" / f"{cls}_{i}.png",
            )
            save(m, root / "masks" / f"{cls}_{i}.png")
    return root


def _prepare(root: Path, tmp: Path, **sections):
    params = make_params(
        "image_mask", root, data={"label_from": "prefix", "masks_required": True},
        preprocess={"image_size": 32, "split": {"train": 0.6, "val": 0.3, "test": 0.1}},
        gate={"extractor": "effnet-lite0"}, **sections,
    )  # fmt: skip
    run_stage("ingest", params, out_dir=tmp / "ingested")
    run_stage("preprocess", params, ingested=tmp / "ingested", out_dir=tmp / "pre")
    return params


def test_every_method_makes_binary_masks_from_train_masks_only(tmp_path: Path):
    params = _prepare(_dataset(tmp_path / "ds"), tmp_path, masks=TOY | {"accept": USE_ALL})
    out = tmp_path / "masks"
    metrics = run_stage("masks", params, preprocessed=tmp_path / "pre", out_dir=out)
    rows = manifest.read_rows(tmp_path / "pre")
    train_ids = {r["id"] for r in rows if r["split"] == "train"}
    held_out = {r["id"] for r in rows if r["split"] != "train"}

    record = json.loads((out / "masks.json").read_text())
    assert record["extractor"] == "effnet-lite0" and record["fd_name"] == "fd_effnet_lite0"
    assert record["classes"]["Sc"]["hmi_space"] == "image"  # thin strokes: < tau
    assert record["classes"]["Pa"]["hmi_space"] == "latent"  # 14x14 of 32x32: > tau
    table = pd.read_parquet(out / "masks.parquet")
    assert metrics["n_masks"] == len(table) > 0
    for label, entry in record["classes"].items():
        assert entry["reference"] == "val masks" and entry["fd_effnet_lite0_real"] > 0
        for method in TOY["methods"]:
            stats = entry["methods"][method]
            assert stats["n"] == TOY["per_class"]  # every method made its masks
            assert stats["n"] == ((table.label == label) & (table.method == method)).sum()
            assert stats["fd_effnet_lite0"] > 0
    for row in table.itertuples():
        mask, _ = decode_image((out / row.path).read_bytes())
        assert mask.shape == (32, 32) and set(np.unique(mask)) <= {0, 255} and mask.any()
        parents = json.loads(row.parents)
        assert set(parents) <= train_ids and not set(parents) & held_out
        assert len(parents) == {"hmi": 2, "perturb": 1, "ddpm": 0}[row.method]
    assert sorted(p.name for p in (out / "grids").iterdir()) == ["Pa.png", "Sc.png"]
    grid, _ = decode_image((out / "grids" / "Sc.png").read_bytes())
    assert grid.shape == (4 * 32, 8 * 32)  # real row + one per method
    assert sorted(p.name for p in (out / "curves").iterdir()) == ["Pa.ddpm.csv", "Sc.ddpm.csv"]

    # the same params reproduce the same masks
    again = run_stage("masks", params, preprocessed=tmp_path / "pre", out_dir=tmp_path / "again")
    assert again == metrics
    first = sorted((out / "masks").rglob("*.png"))
    assert [p.read_bytes() for p in first] == [
        (tmp_path / "again" / p.relative_to(out)).read_bytes() for p in first
    ]


def test_pairs_get_only_masks_in_the_real_range_of_methods_the_class_keeps(tmp_path: Path):
    """With the default acceptance: a 15-step DDPM makes noise, not strokes or squares;
    its masks are counted, shown in grey, and never written for pairs."""
    params = _prepare(_dataset(tmp_path / "ds"), tmp_path, masks=TOY)
    out = tmp_path / "masks"
    metrics = run_stage("masks", params, preprocessed=tmp_path / "pre", out_dir=out)
    record = json.loads((out / "masks.json").read_text())
    table = pd.read_parquet(out / "masks.parquet")
    real_rows = [r for r in manifest.read_rows(tmp_path / "pre") if r["split"] == "train"]
    for label, entry in record["classes"].items():
        real = [decode_image((tmp_path / "pre" / r["mask_path"]).read_bytes())[0]
                for r in real_rows if r["label"] == label]  # fmt: skip
        fit = core_masks.MaskRange.of(real, params.masks.accept.range_factor)
        assert entry["range"]["area_max"] == pytest.approx(fit.area_max)
        for method, m in entry["methods"].items():
            mine = table[(table.label == label) & (table.method == method)]
            assert m["n"] == len(mine) == metrics[f"{label}/{method}/n"]
            assert metrics[f"{label}/{method}/out_of_range"] == m["made"] - m["accepted"]
            if "dropped" in m:
                assert m["n"] == 0
            else:
                assert m["n"] == m["accepted"] >= 0.5 * m["made"]
            for row in mine.itertuples():  # what pairs read lies in the real range
                assert fit.accepts(decode_image((out / row.path).read_bytes())[0])
        assert "dropped" in entry["methods"]["ddpm"], entry["methods"]["ddpm"]
    assert metrics["n_masks"] == len(table) > 0
    run_stage("report", params, out_dir=tmp_path / "report", masks=out)
    md = (tmp_path / "report" / "report.md").read_text()
    assert "ddpm" in md and "dropped: " in md and "out of range" in md


def test_without_masks_the_stage_says_so_and_the_report_notes_it(folders_dataset, tmp_path):
    params = make_params("folders", folders_dataset)
    run_stage("ingest", params, out_dir=tmp_path / "ingested")
    run_stage("preprocess", params, ingested=tmp_path / "ingested", out_dir=tmp_path / "pre")
    metrics = run_stage("masks", params, preprocessed=tmp_path / "pre", out_dir=tmp_path / "masks")
    assert metrics == {"n_masks": 0.0, "skipped": 1.0}
    record = json.loads((tmp_path / "masks" / "masks.json").read_text())
    assert record == {"skipped": masks.NO_MASKS}
    assert pd.read_parquet(tmp_path / "masks" / "masks.parquet").empty
    run_stage("report", params, out_dir=tmp_path / "report", masks=tmp_path / "masks")
    md = (tmp_path / "report" / "report.md").read_text()
    assert "The mask branch was skipped: no masks" in md
