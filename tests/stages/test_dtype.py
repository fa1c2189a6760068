"""The device/dtype policy (core/device.py) end to end: the DAG at toy size with
`model.dtype: bfloat16` on CPU, where autocast runs the same casts a CUDA bf16 run does."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from defectgen import manifest
from defectgen.config import ModelConfig
from defectgen.core.device import CPU, LossBuffer, Runtime, runtime
from defectgen.core.diffusion import adapt
from defectgen.core.images import decode_image
from defectgen.prior import open_base
from tests.conftest import run_stage
from tests.stages.test_masks import _dataset
from tests.stages.test_pairs import SECTIONS, make_params

BF16 = {
    **SECTIONS,
    "model": {"device": "cpu", "dtype": "bfloat16"},
    "finetune": {"batch_size": 2, "ti": {"steps": 3, "lr": 5e-2}, "lora": {"steps": 2, "lr": 1e-2}},
    "sweep": {"strengths": [0.5], "guidances": [2.0], "probe_images": 2},
    "generate": {"images_per_class": 3, "steps": 4, "batch_size": 3},
    "train": {"models": ["squeezenet1_1"], "seeds": [0], "steps": 2, "evals": 1,
              "conditions": ["real+ungated"]},
}  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("bf16")
    params = make_params("image_mask", _dataset(tmp / "ds"), **BF16)
    d = {k: tmp / k for k in ("ing", "pre", "base", "ft", "sw", "gen", "masks", "pairs", "gate")}
    run_stage("ingest", params, out_dir=d["ing"])
    run_stage("preprocess", params, ingested=d["ing"], out_dir=d["pre"])
    d["base_m"] = run_stage("base", params, preprocessed=d["pre"], out_dir=d["base"])
    run_stage("finetune", params, preprocessed=d["pre"], base=d["base"], out_dir=d["ft"])
    run_stage(
        "sweep", params, preprocessed=d["pre"], base=d["base"], adapters=d["ft"], out_dir=d["sw"]
    )
    run_stage("generate", params, preprocessed=d["pre"], base=d["base"], adapters=d["ft"],
                 sweep=d["sw"], out_dir=d["gen"])  # fmt: skip
    run_stage("masks", params, preprocessed=d["pre"], out_dir=d["masks"])
    d["pairs_m"] = run_stage("pairs", params, preprocessed=d["pre"], base=d["base"],
                             masks=d["masks"], out_dir=d["pairs"])  # fmt: skip
    run_stage("gate", params, preprocessed=d["pre"], generated=d["gen"], out_dir=d["gate"])
    d["train_m"] = run_stage("train", params, preprocessed=d["pre"], generated=d["gen"],
                             gated=d["gate"], out_dir=tmp / "train")  # fmt: skip
    d["params"], d["tmp"] = params, tmp
    return d


def test_the_runtime_autocasts_every_non_float32_dtype_on_cpu_too():
    cfg = ModelConfig(device="cpu", dtype="bfloat16")
    assert runtime(cfg) == Runtime(torch.device("cpu"), torch.bfloat16)
    with Runtime(torch.device("cpu"), torch.bfloat16).autocast:
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16
        assert torch.is_autocast_enabled("cpu")
    with CPU.autocast:
        assert not torch.is_autocast_enabled("cpu")


def test_bf16_run_trains_float32_weights_and_loads_the_base_in_bf16(run):
    assert all(math.isfinite(v) for v in run["base_m"].values())
    saved = load_file(run["base"] / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors")
    assert {t.dtype for t in saved.values()} == {torch.float32}  # trained in float32
    pipe = open_base(run["base"], run["params"], runtime(run["params"].model))
    assert {p.dtype for p in pipe.unet.parameters()} == {torch.bfloat16}  # frozen: bf16
    for adapter in sorted(run["ft"].glob("*/" + adapt.EMBEDS_NAME)):
        (row,) = load_file(adapter).values()
        assert row.dtype == torch.float32 and torch.isfinite(row).all()


def test_bf16_run_generates_images_and_pairs_and_trains_classifiers(run):
    rows = manifest.read_rows(run["gen"])
    assert len(rows) == 6  # 3 per class, 2 classes
    for row in rows:
        pixels, _ = decode_image((run["gen"] / row["path"]).read_bytes())
        assert pixels.std() > 0  # not a constant (NaN -> black) image
    assert run["pairs_m"]["n_pairs"] == 10
    evaluation = json.loads((run["tmp"] / "train" / "eval.json").read_text())
    conditions = evaluation["models"]["squeezenet1_1"]
    # the classical arm matched to real+ungated trains whatever the gate passed
    assert {"real", "real+ungated", "real+classical-ungated"} <= set(conditions)
    assert all(0.0 <= e["accuracy_mean"] <= 1.0 for e in conditions.values())


def test_loss_buffer_reads_back_every_step_in_order_once_per_interval():
    seen: list[tuple[int, float]] = []
    with LossBuffer(lambda s, v: seen.append((s, v)), every=3) as losses:
        for step in range(7):
            losses.add(step, torch.tensor(float(step) / 2))
            assert len(seen) == (step + 1) // 3 * 3  # nothing read between intervals
    assert seen == [(s, s / 2) for s in range(7)]  # the tail is flushed on exit
    assert np.allclose([v for _, v in seen], np.arange(7) / 2)
