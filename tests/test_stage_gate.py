"""The gate on real NEU-DET steel images: a faithful class passes, a pure-noise class
fails and contributes nothing, copies of their parent are dropped as near-duplicates."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from defectgen import manifest
from defectgen.core import gate as gate_core
from defectgen.core.images import encode_png, pixel_id
from defectgen.stages import gate, ingest, preprocess
from tests.conftest import make_params, shared_data

SPLIT = {"train": 0.5, "val": 0.4, "test": 0.1}


@pytest.fixture(scope="module")
def steel(tmp_path_factory) -> tuple[Path, Path, object]:
    """NEU-DET scratches and patches (40 each) -> ingest -> preprocess at 64 px."""
    tmp = tmp_path_factory.mktemp("gate")
    images = shared_data("neu-det") / "images"
    for cls in ("scratches", "patches"):
        for path in sorted(images.glob(f"{cls}_*.jpg"))[:40]:
            (tmp / "raw" / cls).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, tmp / "raw" / cls / path.name)
    params = make_params(
        "folders",
        tmp / "raw",
        preprocess={"image_size": 64, "split": SPLIT, "subset": {"alpha": 1.0}},
        gate={"max_ratio": 2.0, "kid_subsets": 10},
    )
    ingest.run(params, out_dir=tmp / "ingested")
    preprocess.run(params, ingested=tmp / "ingested", out_dir=tmp / "pre")
    return tmp, tmp / "pre", params


def _synthetic_row(folder: Path, label: str, pixels: np.ndarray, parent: str | None) -> dict:
    oid = pixel_id(pixels)
    rel = f"images/{label}/{oid[:16]}.png"
    (folder / rel).parent.mkdir(parents=True, exist_ok=True)
    (folder / rel).write_bytes(encode_png(pixels))
    return manifest.make_row(
        id=oid, path=rel, label=label, split="train", width=64, height=64, channels=1,
        origin="synthetic", parent_id=parent, generator="test", gen_params="{}", source="test",
    )  # fmt: skip


def test_noise_fails_faithful_passes_copies_are_dropped(steel):
    tmp, pre, params = steel
    rows = manifest.read_rows(pre)
    train = [r for r in rows if r["label"] == "scratches" and r["split"] == "train"]
    rng = np.random.default_rng(0)
    gen = tmp / "generated"
    synthetic = []
    for r in train:  # faithful: mildly noised train images, no parent recorded
        px = np.asarray(Image.open(pre / r["path"])).astype(float)
        faithful = np.clip(px + rng.normal(0, 2, px.shape), 0, 255).astype(np.uint8)
        synthetic.append(_synthetic_row(gen, "scratches", faithful, None))
    copies = train[:5]  # img2img that returned its parent unchanged
    for r in copies:
        px = np.asarray(Image.open(pre / r["path"]))
        synthetic.append(_synthetic_row(gen, "scratches", px, r["id"]))
    for _ in range(20):  # a generator that learned nothing
        noise = rng.integers(0, 256, (64, 64), dtype=np.uint8)
        synthetic.append(_synthetic_row(gen, "patches", noise, None))
    manifest.write_manifest(synthetic, gen / manifest.MANIFEST_NAME)

    metrics = gate.run(params, preprocessed=pre, generated=gen, out_dir=tmp / "gate")
    report = json.loads((tmp / "gate" / "gate.json").read_text())
    assert report["extractor"] == "effnet-lite0" and "offline" in report["note"]
    sc, pa = report["classes"]["scratches"], report["classes"]["patches"]
    assert sc["passed"] and not pa["passed"]
    assert "real-vs-real" in pa["reason"]
    # the baselines order as they should: real < blurred/noised, and noise-only is worst
    assert sc["fd_effnet_lite0_real"] < sc["fd_effnet_lite0_blur"]
    assert sc["fd_effnet_lite0_real"] < sc["fd_effnet_lite0_noise"]
    assert pa["fd_effnet_lite0"] > pa["fd_effnet_lite0_noise"]
    assert sc["near_duplicates"] == len(copies)
    kept = manifest.read_rows(tmp / "gate")
    assert {r["label"] for r in kept} == {"scratches"}  # the failed class contributes nothing
    assert len(kept) == len(train)  # the faithful images, none of the copies
    assert not {r["id"] for r in copies} & {r["id"] for r in kept}
    assert metrics["patches/passed"] == 0.0 and metrics["n_passed_classes"] == 1
    table = (tmp / "gate" / "gate.csv").read_text().splitlines()
    assert table[0].startswith("label,passed,reason") and len(table) == 3
    assert any((tmp / ".features").iterdir())  # real features cached for the next run


def test_judge_and_near_duplicates():
    assert gate_core.judge(90.0, 50.0, max_ratio=2.0, max_distance=None)[0]
    passed, reason = gate_core.judge(120.0, 50.0, max_ratio=2.0, max_distance=None)
    assert not passed and "2.40x" in reason
    passed, reason = gate_core.judge(90.0, 50.0, max_ratio=2.0, max_distance=80.0)
    assert not passed and "ceiling 80" in reason
    real = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    assert gate_core.nearest_gap(real) == 10.0
    synth = torch.tensor([[1.0, 0.0], [5.0, 5.0]])
    parents = real[:2]
    assert gate_core.near_duplicates(synth, parents, gap=10.0, ratio=0.25).tolist() == [True, False]
