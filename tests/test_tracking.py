"""MLflow tracking against real backends: sqlite, and a real `mlflow server` on 127.0.0.1."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from defectgen.cli import main
from defectgen.resume import file_digest
from tests.conftest import REPO


def _params(tmp_path: Path, root: Path) -> Path:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["data"].update({"name": "tracked", "layout": "folders", "root": str(root)})
    raw["ingest"]["min_images_per_class"] = 2
    raw["tracking"] = {"enabled": True, "experiment": "test-exp"}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _runs(uri: str) -> tuple[object, list]:
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("test-exp")
    return client, client.search_runs([exp.experiment_id])


def test_sqlite_parent_and_nested_stage_runs(folders_dataset, tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("DEFECTGEN_PIPELINE_KEY", "test-sqlite-1")
    monkeypatch.chdir(tmp_path)
    params = _params(tmp_path, folders_dataset)
    assert main(["ingest", "--params", str(params), "--out", str(tmp_path / "ing")]) == 0
    assert (
        main(
            [
                "preprocess",
                "--params",
                str(params),
                "--ingested",
                str(tmp_path / "ing"),
                "--out",
                str(tmp_path / "pre"),
            ]
        )
        == 0
    )
    client, runs = _runs(uri)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.data.tags["defectgen.pipeline_key"] == "test-sqlite-1"
    assert parent.data.tags["mlflow.source.git.commit"]
    assert len(parent.data.tags["defectgen.params_hash"]) == 12
    assert parent.data.params["preprocess.image_size"] == "64"
    assert sorted(r.info.run_name for r in children) == ["ingest", "preprocess"]
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in children)
    ing = next(r for r in children if r.info.run_name == "ingest")
    assert ing.data.metrics["n_images"] == 36 and ing.data.metrics["wall_s"] > 0
    assert ing.data.params["data.layout"] == "folders"
    artifacts = [a.path for a in client.list_artifacts(ing.info.run_id)]
    assert "ingest_report.json" in artifacts
    # the manifests are the runs' datasets, with their digests
    pre = next(r for r in children if r.info.run_name == "preprocess")
    inputs = {(d.dataset.name, d.tags[0].value) for d in pre.inputs.dataset_inputs}
    assert ("tracked/ingested", "input") in inputs and ("tracked/preprocessed", "output") in inputs
    digests = {d.dataset.name: d.dataset.digest for d in pre.inputs.dataset_inputs}
    assert digests["tracked/ingested"] == file_digest(tmp_path / "ing" / "manifest.parquet")[:16]
    # one name per artifact: what ingest wrote is what preprocess read, by name and digest
    wrote = {(d.dataset.name, d.dataset.digest) for d in ing.inputs.dataset_inputs}
    assert wrote == {("tracked/ingested", digests["tracked/ingested"])}
    # the pipeline's parent names the data the whole run read: ingest's manifest
    on_parent = client.get_run(parent.info.run_id).inputs.dataset_inputs
    assert {(d.dataset.name, d.dataset.digest) for d in on_parent} == wrote
    # the experiment opens on its runs, not on the GenAI overview
    experiment = client.get_experiment(parent.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    # the parent spans its stages and ends with them
    assert parent.info.status == "FINISHED"
    assert parent.info.start_time <= min(r.info.start_time for r in children)
    assert parent.info.end_time >= max(r.info.end_time for r in children)

    # a stage that fails (dvc repro stops there) leaves the parent FAILED, saying where
    (tmp_path / "empty").mkdir()
    args = ["preprocess", "--params", str(params), "--ingested", str(tmp_path / "empty")]
    assert main([*args, "--out", str(tmp_path / "pre2")]) == 2
    parent = client.get_run(parent.info.run_id)
    assert parent.info.status == "FAILED"
    assert parent.data.tags["defectgen.run_error"].startswith("preprocess: ")
    # the rerun that gets past it makes it FINISHED again
    args = ["preprocess", "--params", str(params), "--ingested", str(tmp_path / "ing")]
    assert main([*args, "--out", str(tmp_path / "pre2")]) == 0
    parent = client.get_run(parent.info.run_id)
    assert parent.info.status == "FINISHED" and "defectgen.run_error" not in parent.data.tags


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    """A real `mlflow server` on 127.0.0.1, in its own process group, stopped afterwards."""
    port = _free_port()
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen(
        [
            str(mlflow_bin),
            "server",
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'srv.db'}",
            "--artifacts-destination",
            str(tmp_path / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                log_text = (tmp_path / "server.log").read_text()[-2000:]
                pytest.fail(f"mlflow server did not become healthy:\n{log_text}")
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


@pytest.mark.slow
def test_real_mlflow_server(mlflow_server, folders_dataset, tmp_path):
    params = _params(tmp_path, folders_dataset)
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": mlflow_server,
        "DEFECTGEN_PIPELINE_KEY": "test-server-1",
    }
    subprocess.run(
        [
            sys.executable,
            "-m",
            "defectgen.cli",
            "ingest",
            "--params",
            str(params),
            "--out",
            str(tmp_path / "ing"),
        ],
        check=True,
        env=env,
        cwd=tmp_path,
        capture_output=True,
    )
    client, runs = _runs(mlflow_server)
    child = next(r for r in runs if r.info.run_name == "ingest")
    parent = next(r for r in runs if r.info.run_id == child.data.tags["mlflow.parentRunId"])
    assert parent.data.tags["defectgen.pipeline_key"] == "test-server-1"
    assert child.data.metrics["count/crack"] == 12
    assert "ingest_report.json" in [a.path for a in client.list_artifacts(child.info.run_id)]
    # The artifact went through the server into its artifact store.
    assert list((tmp_path / "artifacts").rglob("ingest_report.json"))


def test_the_code_is_dirty_only_for_changes_outside_the_run_outputs(tmp_path):
    """dvc.lock and the stages' folders and metrics files are what `dvc repro` writes:
    changed, the commit is still the code that ran; a changed dataset version, source file
    or params.yaml marks it -dirty."""
    import subprocess

    from defectgen.tracking import git_sha

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    made = ("dvc.lock", "metrics/train.json", "data/adapters/x.json", "data/raw/set.dvc")
    for name in (*made, "src/a.py", "params.yaml"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("one\n")
    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x")
    clean = git_sha(tmp_path)
    assert len(clean) == 40
    for name in made[:3]:  # what dvc repro writes
        (tmp_path / name).write_text("two\n")
    assert git_sha(tmp_path) == clean
    assert git_sha(tmp_path / "src") == clean  # from a subfolder too
    (tmp_path / "data/raw/set.dvc").write_text("two\n")  # the dataset's version: an input
    assert git_sha(tmp_path) == f"{clean}-dirty"
    (tmp_path / "data/raw/set.dvc").write_text("one\n")
    (tmp_path / "params.yaml").write_text("two\n")
    assert git_sha(tmp_path) == f"{clean}-dirty"


def test_a_store_elsewhere_keeps_its_artifacts_beside_it_not_in_the_working_folder(
    folders_dataset, tmp_path, monkeypatch
):
    # MLflow's own default puts a sqlite store's artifacts in ./mlruns of whatever folder
    # the process runs in: a run tracked into a temp store wrote into the checkout
    store, work = tmp_path / "store", tmp_path / "work"
    store.mkdir()
    work.mkdir()
    uri = f"sqlite:///{store / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("DEFECTGEN_PIPELINE_KEY", "test-artifact-root")
    monkeypatch.chdir(work)
    params = _params(tmp_path, folders_dataset)
    assert main(["ingest", "--params", str(params), "--out", str(tmp_path / "ing")]) == 0
    assert not (work / "mlruns").exists() and list(work.iterdir()) == []
    client, runs = _runs(uri)
    assert runs and all(r.info.artifact_uri.startswith((store / "mlruns").as_uri()) for r in runs)
    assert list((store / "mlruns").rglob("*.json"))  # the stage's report files are there


def test_an_empty_manifest_is_logged_marked_empty(tmp_path, monkeypatch):
    from defectgen import manifest
    from defectgen.config import parse_params
    from defectgen.tracking import stage_run

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("DEFECTGEN_PIPELINE_KEY", "test-empty")
    raw = {"data": {"name": "tracked", "layout": "folders", "root": "x"},
           "tracking": {"enabled": True, "experiment": "test-exp"}}  # fmt: skip
    params = parse_params(raw, "t")
    manifest.write_manifest([], tmp_path / "gated" / manifest.MANIFEST_NAME)
    with stage_run("gate", params, ("gate",)) as run:
        run.log_manifest(tmp_path / "gated", name="tracked/gated", context="output")
    _, runs = _runs(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (gate,) = [r for r in runs if r.info.run_name == "gate"]
    assert [d.dataset.name for d in gate.inputs.dataset_inputs] == ["tracked/gated (empty)"]
