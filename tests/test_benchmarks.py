"""The GPU run stays runnable: `benchmarks/gpu_run.sh --smoke` runs its whole path (the
SD1.5-architecture rows and the DAG on NEU-DET) on this CPU at toy size. Nothing here
is timed: the figures a smoke run writes mean nothing."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, shared_data

sys.path.insert(0, str(REPO / "benchmarks"))

import gpu_diffusion  # noqa: E402


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> Path:
    shared_data("neu-det")
    out = tmp_path_factory.mktemp("gpu_run")
    env = {**os.environ, "PYTHON": sys.executable, "WORK": str(out.parent / "gpu_run_work")}
    env.pop("OUT", None)
    proc = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_run.sh"), "--smoke", "--budget", "900", str(out)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


@pytest.mark.slow
def test_gpu_run_smoke_writes_at_most_eight_result_files(smoke: Path):
    files = sorted(p.name for p in smoke.iterdir())
    assert files == [
        "env.txt",
        "gpu_diffusion-smoke.json",
        "gpu_diffusion-smoke.md",
        "gpu_pipeline-smoke-samples.png",
        "gpu_pipeline-smoke.json",
        "gpu_pipeline-smoke.md",
        "log.txt",
    ]
    assert "torchvision import:" in (smoke / "env.txt").read_text()


@pytest.mark.slow
def test_gpu_run_smoke_runs_the_whole_dag_on_neu_det(smoke: Path):
    record = json.loads((smoke / "gpu_pipeline-smoke.json").read_text())
    assert list(record["stages"]) == [
        "ingest", "preprocess", "base", "finetune", "sweep", "generate", "gate", "train"
    ]  # fmt: skip
    for stage, result in record["stages"].items():
        assert not result.get("cut") and not result.get("skipped"), (stage, result)
        assert result["wall_s"] > 0 and result["per_s"] > 0
    assert set(record["gate"]["classes"]) == {"crazing", "scratches"}
    conditions = record["eval"]["models"]["squeezenet1_1"]
    assert {"real", "real+ungated"} <= set(conditions)
    md = (smoke / "gpu_pipeline-smoke.md").read_text()
    assert "| gate |" in md and "| squeezenet1_1 | real |" in md


def test_gpu_harness_stops_starting_rows_at_its_deadline(tmp_path: Path):
    args = ["--smoke", "--out", str(tmp_path), "--only", "generate", "--deadline", "0"]
    assert gpu_diffusion.main(args) == 0
    record = json.loads((tmp_path / "gpu_diffusion-smoke.json").read_text())
    assert record["rows"] and all(r["error"] == "not run: deadline" for r in record["rows"])


@pytest.mark.slow
def test_gpu_harness_smoke_measures_every_row(smoke: Path):
    tmp_path = smoke
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
