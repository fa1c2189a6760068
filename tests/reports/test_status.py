"""The run status and the failed run's report (defectgen.reports.status), on MLflow with sqlite.

The kfp.local failure test runs this through a real pipeline; here the per-class stage
runs of a fanned-out run are logged directly, to check the merge and what is named.
"""

import contextlib
import json
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from defectgen import tracking
from defectgen.cli import main
from defectgen.config import Params
from defectgen.reports.status import write_status
from tests.conftest import REPO
from tests.reports.test_page import check_self_contained


def _params(root: Path, tracked: bool) -> Params:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["data"].update({"name": "halfway", "layout": "folders", "root": str(root)})
    raw["ingest"]["min_images_per_class"] = 2
    raw["tracking"] = {"enabled": tracked, "experiment": "status-exp"}
    return Params.model_validate(raw)


def _log_stage(params: Params, stage: str, files: dict, where: Path, fail: bool = False):
    """One stage run under the pipeline's parent that logged `files` (name: JSON content)
    from a fresh folder under `where`, or one that failed."""
    folder = where / str(len(list(where.iterdir())))
    folder.mkdir()
    expect = pytest.raises(RuntimeError) if fail else contextlib.nullcontext()
    with expect, tracking.stage_run(stage, params, ("gate",)) as run:
        if fail:
            raise RuntimeError(f"{stage} broke")
        for name, content in files.items():
            (folder / name).write_text(json.dumps(content))
            run.log_artifact(folder / name)


def _gate_entry(passed: bool, fd: float) -> dict:
    return {
        "passed": passed, "reason": "ratio check", "fd_effnet_lite0": fd,
        "fd_effnet_lite0_real": 10.0, "fd_effnet_lite0_blur": 90.0,
        "fd_effnet_lite0_noise": 80.0, "near_duplicates": 0, "n_kept": 4 if passed else 0,
    }  # fmt: skip


@pytest.fixture
def tracked(tmp_path, monkeypatch) -> tuple[str, Path]:
    """MLflow on sqlite in tmp_path, one pipeline key; (tracking URI, a folder to log from)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("DEFECTGEN_PIPELINE_KEY", f"status-{tmp_path.name}")
    monkeypatch.chdir(tmp_path)
    logged = tmp_path / "logged"
    logged.mkdir()
    return uri, logged


def test_failed_run_report_from_finished_stage_runs(folders_dataset, tmp_path, tracked):
    uri, logged = tracked
    params = _params(folders_dataset, tracked=True)
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params.model_dump(mode="json")))
    # ingest and preprocess for real (they log the files the report reads) ...
    common = ["--params", str(params_file)]
    assert main(["ingest", *common, "--out", str(tmp_path / "ing")]) == 0
    assert main(["preprocess", *common, "--ingested", str(tmp_path / "ing"),
                 "--out", str(tmp_path / "pre")]) == 0  # fmt: skip
    # ... then the fan-out: sweep and gate once per class, the gate of one class failing.
    for label, strength in (("crack", 0.3), ("dent", 0.6)):
        cell = {"strength": strength, "guidance": 2.0}
        _log_stage(
            params, "sweep", {"chosen.json": {"source": "sweep", "classes": {label: cell}}}, logged
        )
    for label, passed in (("crack", True), ("dent", False)):
        gate = {"extractor": "effnet-lite0", "note": "offline", "classes": {
            label: _gate_entry(passed, 25.0 if passed else 300.0)}}  # fmt: skip
        _log_stage(params, "gate", {"gate.json": gate}, logged)
    _log_stage(params, "gate", {}, logged, fail=True)

    report_dir = tmp_path / "report"
    text = write_status(
        params, state="FAILED", job="job-7", error="scratch gate: out of memory",
        out_path=tmp_path / "status.md", track=True, report_dir=report_dir,
    )  # fmt: skip
    assert "- report: rendered from the finished stages' MLflow runs (4 of 6" in text
    assert "| gate | FAILED |" in text and "| preprocess | FINISHED |" in text
    assert "| report | FINISHED |" in text  # the report is its own run under the parent

    html = (report_dir / "report.html").read_text(encoding="utf-8")
    check_self_contained(html)
    md = (report_dir / "report.md").read_text(encoding="utf-8")
    assert "No output from: generate, train." in md
    assert "1 of 2 classes passed the quality gate; 4 synthetic images were kept" in md
    # The per-class runs merged: one gate row per class, with its own chosen cell.
    gate_rows = [line for line in md.splitlines() if line.endswith("ratio check |")]
    assert [r.split(" | ")[0] for r in gate_rows] == ["| crack", "| dent"]
    assert "s 0.3, w 2.0" in gate_rows[0] and "pass: ratio check" in gate_rows[0]
    assert "s 0.6, w 2.0" in gate_rows[1] and "fail: ratio check" in gate_rows[1]
    assert "## Dataset" in md and "## Quality gate" in md
    assert "## Does synthetic data help" not in md and "## Real and synthetic" not in md

    client = MlflowClient(uri)
    parent = client.search_runs(
        [client.get_experiment_by_name("status-exp").experiment_id],
        filter_string="tags.`defectgen.run_status` = 'FAILED'",
    )
    assert len(parent) == 1 and parent[0].info.status == "FAILED"
    assert parent[0].data.tags["defectgen.run_error"] == "scratch gate: out of memory"


def test_untracked_failed_run_says_why_there_is_no_report(tmp_path):
    report_dir = tmp_path / "report"
    text = write_status(
        _params(tmp_path, tracked=False), state="FAILED", job="", error="ingest: no images",
        out_path=tmp_path / "status.md", track=True, report_dir=report_dir,
    )  # fmt: skip
    assert (tmp_path / "status.md").read_text() == text
    assert "- error: ingest: no images" in text
    assert "- report: not rendered; without tracking" in text
    assert not report_dir.exists()


def test_a_broken_artifact_costs_the_report_not_the_status(tmp_path, tracked):
    _, logged = tracked
    params = _params(tmp_path, tracked=True)
    # Two classes' gate runs that disagree on the extractor: the merge must refuse.
    for label, extractor in (("crack", "effnet-lite0"), ("dent", "inception-v3-compat")):
        gate = {"extractor": extractor, "note": "", "classes": {label: _gate_entry(True, 1.0)}}
        _log_stage(params, "gate", {"gate.json": gate}, logged)
    text = write_status(
        params, state="FAILED", job="", error="", out_path=tmp_path / "status.md",
        track=True, report_dir=tmp_path / "report",
    )  # fmt: skip
    assert "- report: not rendered (DataError: gate.json.extractor: the per-class" in text
    assert "| gate | FINISHED |" in text
    assert not (tmp_path / "report").exists()
