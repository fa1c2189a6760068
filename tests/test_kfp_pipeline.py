"""The compiled KFP pipeline: not stale, and run end to end with kfp.local (no cluster)."""

import json
from pathlib import Path

import pytest
import yaml
from kfp import components, local

from defectgen import manifest
from pipelines.compile import DEFAULT_OUT, compile_pipeline
from tests.conftest import REPO, toy_repo_params
from tests.test_core_report import check_self_contained

pytestmark = pytest.mark.slow


def test_committed_yaml_is_up_to_date(tmp_path: Path):
    fresh = compile_pipeline(REPO / "params.yaml", tmp_path / "defectgen.yaml")
    assert DEFAULT_OUT.read_text() == fresh.read_text(), (
        "pipelines/build/defectgen.yaml is stale: run `python -m pipelines.compile`"
    )


def test_compiled_pipeline_runs_locally(folders_dataset: Path, tmp_path: Path):
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"))
    pipeline = components.load_component_from_file(str(DEFAULT_OUT))
    # data.root is required by the folders layout; the pipeline's source_path overrides it.
    params = toy_repo_params("kfp", "overridden", images_per_class=2)
    task = pipeline(
        params_yaml=yaml.safe_dump(params), source_path=str(folders_dataset), track=False
    )
    rows = manifest.read_rows(Path(task.outputs["generated"].path))
    assert len(rows) == 3 * 2
    assert {r["label"] for r in rows} == {"crack", "dent", "scratch"}
    assert {(r["origin"], r["split"]) for r in rows} == {("synthetic", "train")}
    assert all(r["parent_id"] and r["generator"] for r in rows)
    gated = Path(task.outputs["gated"].path)
    verdicts = json.loads((gated / "gate.json").read_text())["classes"]
    assert set(verdicts) == {"crack", "dent", "scratch"}
    kept = manifest.read_rows(gated)
    assert {r["label"] for r in kept} == {c for c, v in verdicts.items() if v["passed"]}
    evaluation = json.loads((Path(task.outputs["evaluation"].path) / "eval.json").read_text())
    assert evaluation["labels"] == ["crack", "dent", "scratch"]
    assert "real" in evaluation["models"]["resnet18"]
    html = Path(task.outputs["report"].path).read_text(encoding="utf-8")
    assert "tracking off" in html  # track=False: no MLflow run ids, nothing registered
    assert "defectgen report: kfp" in html and "Quality gate" in html
    check_self_contained(html)
