"""The benchmark harnesses stay runnable: the GPU harness's --smoke mode runs its whole
measurement path on this CPU at toy size. (Nothing here is timed: the figures a smoke
run writes mean nothing.)"""

import json
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))

import gpu_diffusion  # noqa: E402


def test_gpu_harness_smoke_measures_every_row(tmp_path: Path):
    assert gpu_diffusion.main(["--smoke", "--out", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "gpu_diffusion-smoke.json").read_text())
    rows = {r["name"]: r for r in record["rows"]}
    expected = {
        *(f"img2img {s} steps, batch {b}" for s in (20, 50) for b in (1, 2)),
        *(f"{p} train, {v}" for p in ("ti", "lora") for v in ("sdpa", "sdpa+checkpointing")),
        "gate features, EfficientNet-Lite0 (224 px, fp32)",
        "gate features, Inception-v3 architecture (299 px, float32)",
    }
    assert set(rows) == expected
    for row in rows.values():
        assert "error" not in row, row
        assert row["per_s"] > 0 and row["gflop_per_unit"] > 0 and row["fraction_of_peak"] > 0
        floor = record["peak_tflops"] * 1e12 / (row["gflop_per_unit"] * 1e9)
        assert row["floor_per_s"] == pytest.approx(floor)
    # CFG doubles the UNet batch and 50 steps run 2.5x the UNet calls of 20
    assert rows["img2img 50 steps, batch 1"]["gflop_per_unit"] > (
        2 * rows["img2img 20 steps, batch 1"]["gflop_per_unit"]
    )
    assert len(record["papers"]) == 2
    assert (tmp_path / "gpu_diffusion-smoke.md").read_text().startswith("# GPU benchmark")
