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
        "ingest", "preprocess", "base", "finetune", "sweep", "generate", "gate", "train",
        "report",
    ]  # fmt: skip
    for stage, result in record["stages"].items():
        assert not result.get("cut") and not result.get("skipped"), (stage, result)
        assert result["wall_s"] > 0 and result["per_s"] > 0
    assert set(record["gate"]["classes"]) == {"crazing", "scratches"}
    conditions = record["eval"]["models"]["squeezenet1_1"]
    assert {"real", "real+ungated"} <= set(conditions)
    md = (smoke / "gpu_pipeline-smoke.md").read_text()
    assert "| gate |" in md and "| squeezenet1_1 | real |" in md


def test_gpu_run_plan_fits_one_device_call():
    """The plan, with the DAG's stages estimated from the last card run and the profile,
    fits one call; gpu_run.sh --plan says so (exit 0)."""
    proc = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_run.sh"), "--plan"],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    import gpu_plan

    assert gpu_plan.SETUP_S + gpu_plan.ROWS_S + gpu_plan.DAG_S <= gpu_plan.CALL_S <= 480
    stages = gpu_plan.dag_estimate()
    import gpu_pipeline

    assert [s for s, _, _ in stages] == [name for name, _ in gpu_pipeline.DAG]  # the same DAG
    assert sum(seconds for _, seconds, _ in stages) <= gpu_plan.DAG_S
    assert "fits" in proc.stdout.splitlines()[-1]


def test_a_row_past_its_hard_limit_is_cut():
    import time

    with pytest.raises(gpu_diffusion.RowCut, match="limit"), gpu_diffusion.hard_limit(0.2):
        time.sleep(5)


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
    expected = {  # the smoke run leaves out the compiled rows (minutes on a CPU)
        *(f"img2img 4 steps, batch 2, {v}" for v in gpu_diffusion.GENERATION_VARIANTS[:3]),
        *(f"{p} train, {v}" for p in ("ti", "lora") for v in gpu_diffusion.TRAIN_VARIANTS[:2]),
    }
    assert set(rows) == expected
    for row in rows.values():
        assert "error" not in row, row
        assert row["per_s"] > 0 and row["gflop_per_unit"] > 0 and row["fraction_of_peak"] > 0
        floor = record["peak_tflops"] * 1e12 / (row["gflop_per_unit"] * 1e9)
        assert row["floor_per_s"] == pytest.approx(floor)
    # fusing changes how the adapted weights are applied, not the work per image
    unfused, fused = (rows[f"img2img 4 steps, batch 2, LoRA {v}"] for v in ("unfused", "fused"))
    assert fused["gflop_per_unit"] <= unfused["gflop_per_unit"]
    for name, row in rows.items():  # the first call (compile, warm-up) is reported apart
        assert row.get("first_step_s", row.get("first_call_s", 0)) > 0, name
    assert len(record["papers"]) == 2
    assert (tmp_path / "gpu_diffusion-smoke.md").read_text().startswith("# GPU benchmark")
