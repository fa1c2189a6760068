"""The one way to execute a stage (used by the CLI and KFP components); the stages are
declared in defectgen.declarations.

`execute` runs stages.<name>.run with MLflow tracking around it when enabled;
the CLI and the KFP components only translate their arguments into a call here.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

from defectgen.atomic import atomic_write_json
from defectgen.config import Params
from defectgen.declarations import STAGES, Stage, get_stage  # noqa: F401  (the stage table)
from defectgen.errors import ConfigError


def execute(
    stage: Stage, params: Params, *, out_dir: Path, inputs: dict[str, Path], track: bool = True
) -> tuple[dict[str, float], float]:
    """Run one stage, tracked in MLflow when params.tracking.enabled and `track`.

    Returns:
        (metrics, wall seconds). Timings (wall time, and the stage's own `time/...`
        metrics) go to MLflow only, so the returned metrics reproduce run to run.
    """
    started = time.perf_counter()
    if not (params.tracking.enabled and track):
        metrics = _run(stage, params, out_dir, inputs)
        return _reproducible(metrics), time.perf_counter() - started
    from defectgen import tracking

    with tracking.stage_run(stage.name, params, stage.reads) as run:
        metrics = _run(stage, params, out_dir, inputs)
        wall_s = time.perf_counter() - started
        run.log_metrics({**metrics, "wall_s": wall_s})
        for report in stage.reports:
            run.log_artifact(Path(out_dir) / report)
        if stage.tags and (Path(out_dir) / stage.tags).is_file():
            record = json.loads((Path(out_dir) / stage.tags).read_text(encoding="utf-8"))
            run.set_tags(record.get("tags", {}))
        if stage.parent and (Path(out_dir) / stage.parent).is_file():
            record = json.loads((Path(out_dir) / stage.parent).read_text(encoding="utf-8"))
            files = [Path(out_dir) / r for r in stage.reports if r != stage.parent]
            run.to_parent(record["metrics"], record["tags"], files)
        for curve in stage.curves:
            run.log_curves(Path(out_dir) / curve)
        # the manifests it read and the one it wrote, each under its artifact's one name
        for name, folder in inputs.items():
            run.log_manifest(folder, name=f"{params.data.name}/{name}", context="input")
        # the data the pipeline read: ingest's manifest, on the parent run too
        run.log_manifest(
            out_dir,
            name=f"{params.data.name}/{stage.output}",
            context="output",
            on_parent=stage.name == "ingest",
        )
    return _reproducible(metrics), wall_s


def _run(stage: Stage, params: Params, out_dir: Path, inputs: dict[str, Path]) -> dict:
    metrics = stage.runner(params, out_dir=out_dir, **inputs)
    for curve in stage.curves:  # a stage that trained nothing (a skipped branch) leaves an
        (Path(out_dir) / curve).mkdir(exist_ok=True)  # empty folder: dvc plots reads it
    return metrics


def _reproducible(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if not k.startswith("time/")}


PIPELINE_KEY_ENV = "DEFECTGEN_PIPELINE_KEY"  # groups a run's stages in MLflow (tracking.py)
PIPELINE_NAME = "defectgen"  # the KFP pipeline's name (pipelines.defectgen_pipeline)
# kfp.local names a run's folder <pipeline name>-<%Y-%m-%d-%H-%M-%S-%f>
_LOCAL_RUN = re.compile(rf"^{PIPELINE_NAME}-\d{{4}}(-\d{{2}}){{5}}-\d{{6}}$")


def run_task(
    stage_name: str,
    params: str,
    *,
    out_dir: str,
    inputs: dict[str, str],
    track: bool = True,
    metrics: Any = None,
    only_class: str = "",
) -> dict[str, float]:
    """Entry point for KFP components: the task's params (the keys its stage reads, as
    scoped.task_params renders them), paths as strings.

    Empty input strings mean "not given". The MLflow pipeline key that groups a run's
    stages under one parent comes from $DEFECTGEN_PIPELINE_KEY, which the compiled
    pipeline sets from the pod's `pipeline/runid` label (not a task input, so KFP's
    cache key does not change with every run); under kfp.local from the run's folder
    (`local_run_key`). `metrics`, a KFP Metrics artifact, gets every metric, logged and
    as a JSON file at its path (a Metrics artifact without its file is a cache miss for
    kfp.local, so the task would never be reused). `only_class` runs the stage for one
    class (the per-class fan-out): finetune adapts only it, and the stages after
    finetune follow their inputs, which then hold only that class.
    """
    from defectgen.scoped import from_task_params

    stage = get_stage(stage_name)
    handed = from_task_params(params, f"{stage_name} component params", only_class)
    if lacking := [k for k in stage.reads if not handed.carries(k)]:
        raise ConfigError(
            f"{stage_name} component params lack {', '.join(lacking)}, which the stage "
            "reads: the pipeline was compiled by another version; recompile it "
            "(python -m pipelines.compile --params FILE)"
        )
    if track and handed.tracking.enabled:
        key_by_run(out_dir)
    paths = {k: Path(v) for k, v in inputs.items() if v}
    values, _ = execute(stage, handed, out_dir=Path(out_dir), inputs=paths, track=track)
    if metrics is not None:
        for key, value in values.items():
            metrics.log_metric(key, value)
        atomic_write_json(Path(metrics.path), values)
    return values


def key_by_run(out_path: str) -> None:
    """$DEFECTGEN_PIPELINE_KEY, where no run-id label set it (kfp.local), from the run
    folder that `out_path` (one of the task's outputs) lies in."""
    os.environ.setdefault(PIPELINE_KEY_ENV, local_run_key(out_path))


def local_run_key(out_path: str) -> str:
    """The MLflow pipeline key of a task without a run-id label (kfp.local): its run's
    folder, under which every task writes (<root>/<run>/[<loop iteration>/]<task>/
    <output>). A task is handed only its own keys, so no hash of the params is the same
    in every task. Outside that layout: the parent of the output's task folder."""
    path = Path(out_path).resolve()
    run = next((p for p in path.parents if _LOCAL_RUN.match(p.name)), path.parents[1])
    return f"local:{run}"
