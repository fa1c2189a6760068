"""MLflow tracking: with registry.py (and its adapter_model.py), the only modules that
import mlflow.

- Tracking URI: $MLFLOW_TRACKING_URI if set, else `sqlite:///<cwd>/mlflow.db`
  (MLflow 3 refuses the file store).
- One parent run per pipeline run, one nested run per stage. Stages of one
  pipeline run are separate processes (dvc repro, KFP pods), so they find their
  parent by the tag `defectgen.pipeline_key`: $DEFECTGEN_PIPELINE_KEY when the
  orchestrator sets it (make demo, the KFP pipeline), else git sha + params hash.
- The parent carries the git sha, the params hash and all params, and what the
  report stage hands it (StageRun.to_parent: the answer, the gate's verdicts, the
  report); each stage run its own sections' params, its metrics and its report files.
"""

from __future__ import annotations

import contextlib
import csv
import os
import subprocess
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from defectgen.config import ALL, Params

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

import mlflow  # noqa: E402  (the environment above must be set first)
import pandas as pd  # noqa: E402
from mlflow.entities import DatasetInput, InputTag  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

KEY_TAG = "defectgen.pipeline_key"
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"


def tracking_uri() -> str:
    """$MLFLOW_TRACKING_URI, or the embedded default: sqlite in the current directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def _run_outputs() -> list[str]:
    """What `dvc repro` writes in the checkout (each stage's folder and metrics file, and
    dvc.lock), as git pathspecs that leave them out: their changes are not the code's."""
    from defectgen.declarations import STAGES

    paths = ["dvc.lock", *(s.folder for s in STAGES), *(s.metrics_file for s in STAGES)]
    return [f":(top,exclude){p}" for p in paths if p]


def git_sha(cwd: Path | None = None) -> str:
    """The checkout's commit, with '-dirty' when tracked files other than a run's own
    outputs (dvc.lock, the stages' folders and metrics files) changed, or 'unknown'
    outside git."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ":/", *_run_outputs()],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha


def _flatten(obj: Any, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}{k}."))
    else:
        out[prefix.rstrip(".")] = str(obj)
    return out


def _pipeline_key(params: Params, sha: str) -> str:
    return os.environ.get("DEFECTGEN_PIPELINE_KEY") or f"{sha}:{params.section_hash()}"


def pipeline_key(params: Params) -> str:
    """The key that groups one pipeline run's stages (and dedups its registry versions)."""
    return _pipeline_key(params, git_sha())


def artifact_root(uri: str) -> str | None:
    """Where a new experiment keeps its artifacts: beside a sqlite store's file
    (`<its folder>/mlruns`, so the default store's are ./mlruns and a store in a temp
    folder keeps them there too; MLflow's own default is ./mlruns of whatever folder the
    process runs in); None for a server, which decides."""
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlruns").as_uri()


def _experiment(params: Params):
    """The pipeline's experiment, marked as model development (not GenAI), so the MLflow
    UI opens it on its training runs."""
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    name = params.tracking.experiment
    if mlflow.get_experiment_by_name(name) is None:
        with contextlib.suppress(MlflowException):  # another stage's process made it first
            mlflow.create_experiment(name, artifact_location=artifact_root(uri))
    experiment = mlflow.set_experiment(name)
    if experiment.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
        MlflowClient().set_experiment_tag(
            experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND
        )
    return experiment


def _find_or_create_parent(client: MlflowClient, experiment_id: str, params: Params) -> str:
    sha = git_sha()
    key = _pipeline_key(params, sha)
    found = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{KEY_TAG}` = '{key}'",
        max_results=1,
        order_by=["attributes.start_time DESC"],
    )
    if found:
        return found[0].info.run_id
    run = client.create_run(
        experiment_id,
        run_name=f"pipeline {params.data.name}",
        tags={KEY_TAG: key, "mlflow.source.git.commit": sha, "defectgen.dataset": params.data.name},
    )
    _log_parent_params(client, run.info.run_id, params)
    return run.info.run_id  # RUNNING until its first stage ends (stage_run)


def _log_parent_params(client: MlflowClient, parent_id: str, params: Params) -> None:
    """The params the parent run does not have yet, and with all of them their hash: a
    params file gives every one; a KFP task carries only its stage's keys, so its run's
    parent gets the rest (and the hash) from the exit handler (finish_pipeline)."""
    if ALL in params.given:
        client.set_tag(parent_id, "defectgen.params_hash", params.section_hash())
    logged = client.get_run(parent_id).data.params
    flat = _flatten(params.keyed(*params.given))
    items = [(k, v) for k, v in flat.items() if k not in logged]
    for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
        client.log_batch(
            parent_id,
            params=[mlflow.entities.Param(k, v[:6000]) for k, v in items[i : i + 100]],
        )


class StageRun:
    """Handle given to the CLI inside `stage_run`: logs metrics, artifacts and tags."""

    def __init__(self, run_id: str, parent_id: str):
        self.run_id = run_id
        self.parent_id = parent_id

    def log_metrics(self, metrics: dict[str, float]) -> None:
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()})

    def log_artifact(self, path: Path) -> None:
        """A file, or a folder (logged under its own name)."""
        path = Path(path)
        if path.is_file():
            mlflow.log_artifact(str(path))
        elif path.is_dir():
            mlflow.log_artifacts(str(path), artifact_path=path.name)

    def log_curves(self, folder: Path) -> None:
        """Every `<series>.csv` (step, loss) in `folder` as the step-wise metric curve/<series>."""
        client = MlflowClient()
        now = int(time.time() * 1000)
        for path in sorted(Path(folder).glob("*.csv")):
            with path.open(encoding="utf-8") as fh:
                points = [
                    mlflow.entities.Metric(
                        f"curve/{path.stem}", float(r["loss"]), now, int(r["step"])
                    )
                    for r in csv.DictReader(fh)
                ]
            for start in range(0, len(points), 1000):  # MLflow's per-batch limit
                client.log_batch(self.run_id, metrics=points[start : start + 1000])

    def set_tags(self, tags: dict[str, str]) -> None:
        mlflow.set_tags(tags)

    def to_parent(self, metrics: dict[str, float], tags: dict[str, str], files: list[Path]):
        """Metrics, tags and files on the pipeline's parent run: what the MLflow UI's run
        list shows for the pipeline (the answer, the verdicts, the report)."""
        client = MlflowClient()
        now = int(time.time() * 1000)
        points = [mlflow.entities.Metric(k, float(v), now, 0) for k, v in metrics.items()]
        labels = [mlflow.entities.RunTag(k, v[:5000]) for k, v in tags.items()]
        for start in range(0, max(len(points), len(labels)), 100):  # MLflow's tag limit
            client.log_batch(
                self.parent_id,
                metrics=points[start : start + 100],
                tags=labels[start : start + 100],
            )
        for path in files:
            if Path(path).is_file():
                client.log_artifact(self.parent_id, str(path))

    def log_manifest(
        self, folder: Path, *, name: str, context: str, on_parent: bool = False
    ) -> None:
        """A stage folder's manifest.parquet as an MLflow dataset of this run (the run
        page's Datasets), named `name` ("<name> (empty)" when it has no rows, so empty
        artifacts, which share one digest, are not read as data), with the file's sha256
        as its digest; `context`: "input" or "output"; `on_parent`: on the pipeline's
        parent run as well (the data the whole run read). Nothing when the folder has no
        manifest."""
        from defectgen.manifest import MANIFEST_NAME
        from defectgen.resume import file_digest

        path = Path(folder) / MANIFEST_NAME
        if not path.is_file():
            return
        frame = pd.read_parquet(path)
        with warnings.catch_warnings():
            # MLflow registers the local artifact source under two schemes ("" and file)
            # and warns that a path matches both; its integer-column hint is about model
            # signatures. Neither concerns a dataset record: both would print per stage.
            warnings.filterwarnings("ignore", message="The specified dataset source can be")
            warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer")
            dataset = mlflow.data.from_pandas(
                frame,
                source=str(path.resolve()),
                name=name + (" (empty)" if frame.empty else ""),
                digest=file_digest(path)[:16],
            )
            mlflow.log_input(dataset, context=context)
            if on_parent:
                entry = DatasetInput(
                    dataset._to_mlflow_entity(), [InputTag("mlflow.data.context", context)]
                )
                MlflowClient().log_inputs(self.parent_id, datasets=[entry])


def active_run_ids() -> dict[str, str] | None:
    """The active stage run's id and its pipeline parent's, or None outside a run."""
    run = mlflow.active_run()
    if run is None:
        return None
    return {"run": run.info.run_id, "parent": run.data.tags.get("mlflow.parentRunId", "")}


@contextlib.contextmanager
def stage_run(stage: str, params: Params, keys: tuple[str, ...]) -> Iterator[StageRun]:
    """A nested MLflow run for one stage under the pipeline's parent run.

    Args:
        stage: the stage name (the nested run's name).
        params: the validated parameters.
        keys: the params sections and dotted keys this stage reads (its declaration in
            runner.STAGES); logged as the run's params.
    """
    experiment = _experiment(params)
    client = MlflowClient()
    parent_id = _find_or_create_parent(client, experiment.experiment_id, params)
    stage_params = _flatten(params.keyed(*keys))
    with mlflow.start_run(
        run_name=stage,
        experiment_id=experiment.experiment_id,
        tags={"mlflow.parentRunId": parent_id, "defectgen.stage": stage},
    ) as run:
        mlflow.log_params(stage_params)
        try:
            yield StageRun(run.info.run_id, parent_id)
        except BaseException as exc:
            _close_parent(client, parent_id, "FAILED", f"{stage}: {type(exc).__name__}: {exc}")
            raise
    _close_parent(client, parent_id, "FINISHED")


def _close_parent(client: MlflowClient, parent_id: str, status: str, error: str = "") -> None:
    """The parent run spans its stages: it ends when the latest stage ended, FAILED when
    that stage failed (a `dvc repro` that stops at a failing stage leaves it FAILED; the
    rerun that gets past it makes it FINISHED again)."""
    client.set_tag(parent_id, "defectgen.last_stage_status", status)
    if error:
        client.set_tag(parent_id, "defectgen.run_error", error[:5000])
    elif "defectgen.run_error" in client.get_run(parent_id).data.tags:
        client.delete_tag(parent_id, "defectgen.run_error")  # a rerun got past the failure
    client.set_terminated(parent_id, status)


def finish_pipeline(params: Params, state: str, error: str = "") -> list[dict[str, str]]:
    """Mark the pipeline's parent run with the orchestrator's final state.

    The parent gets the tag `defectgen.run_status` (and `defectgen.run_error`); a state
    other than SUCCEEDED also marks it FAILED, so failed nightly runs stand out in the
    MLflow UI. Returns the stage runs under it: name, status, wall seconds.
    """
    experiment = _experiment(params)
    client = MlflowClient()
    parent_id = _find_or_create_parent(client, experiment.experiment_id, params)
    _log_parent_params(client, parent_id, params)
    client.set_tag(parent_id, "defectgen.run_status", state)
    if error:
        client.set_tag(parent_id, "defectgen.run_error", error[:5000])
    client.set_terminated(parent_id, "FINISHED" if state == "SUCCEEDED" else "FAILED")
    children = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'",
        order_by=["attributes.start_time ASC"],
    )
    return [
        {
            "stage": r.info.run_name,
            "status": r.info.status,
            "wall_s": f"{r.data.metrics['wall_s']:.0f}" if "wall_s" in r.data.metrics else "-",
        }
        for r in children
    ]


def finished_stage_artifacts(params: Params, stages: tuple[str, ...], dest: Path) -> dict:
    """Download the logged report files of every FINISHED stage run under this pipeline
    run's parent, for the stages named: `dest/<stage>/<run id>/` each.

    Returns:
        {stage: [one folder per finished run, in start order]}; a stage without a
        finished run is absent. (A stage fanned out per class has one run per class.)
    """
    experiment = _experiment(params)
    client = MlflowClient()
    parent_id = _find_or_create_parent(client, experiment.experiment_id, params)
    children = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}' and "
        "attributes.status = 'FINISHED'",
        order_by=["attributes.start_time ASC"],
    )
    found: dict[str, list[Path]] = {}
    for r in children:
        stage = r.data.tags.get("defectgen.stage", r.info.run_name)
        if stage not in stages:
            continue
        folder = Path(dest) / stage / r.info.run_id
        folder.mkdir(parents=True, exist_ok=True)
        mlflow.artifacts.download_artifacts(run_id=r.info.run_id, dst_path=str(folder))
        found.setdefault(stage, []).append(folder)
    return found
