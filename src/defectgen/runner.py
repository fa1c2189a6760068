"""The one way to execute a stage (used by the CLI and KFP components); the stages are
declared in defectgen.declarations.

`execute` runs stages.<name>.run with MLflow tracking around it when enabled;
the CLI and the KFP components only translate their arguments into a call here.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from defectgen.config import Params
from defectgen.declarations import STAGES, Stage, get_stage  # noqa: F401  (the registry)


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


def run_from_yaml(
    stage_name: str,
    params_yaml: str,
    *,
    out_dir: str,
    inputs: dict[str, str],
    track: bool = True,
    log_metric: Callable[[str, float], None] | None = None,
    only_class: str = "",
) -> dict[str, float]:
    """Entry point for KFP components: params as YAML text, paths as strings.

    Empty input strings mean "not given". The MLflow pipeline key that groups a run's
    stages under one parent comes from $DEFECTGEN_PIPELINE_KEY, which the compiled
    pipeline sets from the pod's `pipeline/runid` label (not a task input, so KFP's
    cache key does not change with every run). `log_metric` receives
    every metric (a KFP Metrics artifact's log_metric). `only_class` runs the stage for
    one class (the per-class fan-out): finetune adapts only it, and the stages after
    finetune follow their inputs, which then hold only that class.
    """
    where = f"{stage_name} component params"
    params = params_from_yaml(params_yaml, where, only_class)
    if track and params.tracking.enabled and not os.environ.get(PIPELINE_KEY_ENV):
        # No run-id label (kfp.local): every task of the run derives one key from the
        # whole params, before a per-class task narrows them to its class.
        from defectgen import tracking

        os.environ[PIPELINE_KEY_ENV] = tracking.pipeline_key(params_from_yaml(params_yaml, where))
    paths = {k: Path(v) for k, v in inputs.items() if v}
    metrics, _ = execute(
        get_stage(stage_name), params, out_dir=Path(out_dir), inputs=paths, track=track
    )
    if log_metric is not None:
        for key, value in metrics.items():
            log_metric(key, value)
    return metrics


def params_from_yaml(params_yaml: str, where: str, only_class: str = "") -> Params:
    """Params from YAML text (a KFP pipeline parameter), optionally narrowed to one class."""
    import yaml

    from defectgen.config import parse_params

    raw = yaml.safe_load(params_yaml)
    if only_class:
        raw.setdefault("finetune", {})["classes"] = [only_class]
    return parse_params(raw, where)
