"""defectgen.runner: the entry point KFP components call (the task's own keys in, its
metrics logged and written as the Metrics artifact's file) and the MLflow key of a
kfp.local run."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from defectgen import manifest
from defectgen.declarations import get_stage
from defectgen.errors import ConfigError
from defectgen.runner import local_run_key, run_task
from defectgen.scoped import task_params
from tests.conftest import make_params


def test_a_task_runs_its_stage_on_its_keys_and_writes_its_metrics(folders_dataset, tmp_path):
    params = make_params("folders", folders_dataset)
    logged: dict[str, float] = {}
    metrics = SimpleNamespace(path=str(tmp_path / "metrics"), log_metric=logged.__setitem__)
    out = tmp_path / "ingested"
    values = run_task(
        "ingest",
        task_params(params, get_stage("ingest").reads),
        out_dir=str(out),
        inputs={"source": str(folders_dataset)},
        track=False,
        metrics=metrics,
    )
    assert len(manifest.read_rows(out)) == 36  # 3 classes x 12 images
    assert values["n_images"] == 36 and logged == values
    assert json.loads(Path(metrics.path).read_text()) == values


def test_a_task_handed_too_few_keys_fails_naming_the_key(folders_dataset, tmp_path):
    params = make_params("folders", folders_dataset)
    with pytest.raises(ConfigError, match="lack ingest, which the stage reads.*recompile"):
        run_task(
            "ingest",
            task_params(params, ("data",)),  # ingest also reads the ingest section
            out_dir=str(tmp_path / "out"),
            inputs={"source": str(folders_dataset)},
            track=False,
        )


def test_a_kfp_local_run_s_tasks_share_one_mlflow_key(tmp_path: Path):
    """Every task of a kfp.local run, in the loop or not, gets the key of its run folder;
    another run another key."""
    run = tmp_path / "root" / "defectgen-2026-12-08-01-02-03-456789"
    other = tmp_path / "root" / "defectgen-2026-12-08-01-09-03-000001"
    keys = {
        local_run_key(str(run / "for-loop-2-iteration-0" / "finetune" / "adapters")),
        local_run_key(str(run / "status" / "summary")),
        local_run_key(str(run / "report" / "html")),
    }
    assert len(keys) == 1
    assert local_run_key(str(other / "base" / "base")) not in keys
