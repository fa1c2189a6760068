"""The compiled KFP pipeline's exit handler on a run that fails part-way, run with
kfp.local (its own file: pytest-xdist hands whole files to its workers, and the two
kfp.local runs are the suite's longest after the dvc one)."""

from pathlib import Path

import mlflow
import pytest
from kfp import local

from tests.conftest import toy_repo_params
from tests.e2e.test_kfp_local import _dataset, _one, compiled
from tests.reports.test_page import check_self_contained

pytestmark = pytest.mark.slow


def test_exit_handler_reports_a_failed_run(tmp_path: Path, monkeypatch):
    """A run that fails part-way (base: a checkpoint that is not there) still ends with
    its status page and a report of what finished, rendered by the exit handler; the
    failing GPU task is retried as params cluster says (kfp.local honours retry policies;
    compiled here with a 1 s backoff instead of the default minute)."""
    params = toy_repo_params("broken", "overridden", images_per_class=2)
    params["cluster"] = {"retries": 1, "backoff": "1s"}
    params["model"].update({"profile": "sd15", "base": str(tmp_path / "no-checkpoint")})
    db = tmp_path / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    pipeline_root = tmp_path / "root"
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(pipeline_root),
        raise_on_error=False,
    )
    pipeline = compiled(params, tmp_path, "broken")
    pipeline(source=str(_dataset(tmp_path / "ds")), track=True)
    run = _one(pipeline_root, "defectgen-*")
    assert not list(run.glob("report/html"))  # the report task never ran
    summary = _one(run, "status/summary").read_text()
    assert "# defectgen run FAILED: broken" in summary
    assert "| ingest | FINISHED |" in summary
    assert summary.count("| base | FAILED |") == 2  # the first try and one retry
    assert "| finetune |" not in summary
    assert "- report: rendered from the finished stages' MLflow runs (2 of 6" in summary

    html = _one(run, "status/report").read_text(encoding="utf-8")
    check_self_contained(html)
    assert "defectgen report: broken" in html and "Dataset" in html
    assert "No output from: sweep, generate, gate, train." in html
    assert "Quality gate" not in html

    client = mlflow.MlflowClient(f"sqlite:///{db}")
    parent = client.search_runs(
        [client.get_experiment_by_name("defectgen").experiment_id],
        filter_string="tags.`defectgen.run_status` = 'FAILED'",
    )
    assert len(parent) == 1 and parent[0].info.status == "FAILED"
