"""The stage registry and the one way to execute a stage (used by the CLI and KFP components).

`execute` runs stages.<name>.run with MLflow tracking around it when enabled;
the CLI and the KFP components only translate their arguments into a call here.
"""

from __future__ import annotations

import importlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from defectgen.config import Params


@dataclass(frozen=True)
class Stage:
    """One stage as the CLI and KFP see it: inputs, params sections it reads, report files."""

    name: str
    help: str
    inputs: tuple[tuple[str, bool, str], ...]  # (option name, required, help)
    sections: tuple[str, ...]
    reports: tuple[str, ...]  # files under --out logged to MLflow as artifacts
    runner: Callable[..., dict[str, float]]
    curves: tuple[str, ...] = ()  # folders of <series>.csv (step, loss): MLflow step metrics


def _run_of(name: str) -> Callable[..., dict[str, float]]:
    """stages.<name>.run, imported on the first call: the CLI starts without loading
    torch or diffusers for a stage it does not run."""

    def run(params: Params, **kw) -> dict[str, float]:
        return importlib.import_module(f"defectgen.stages.{name}").run(params, **kw)

    return run


PREPROCESSED = ("preprocessed", True, "the preprocess stage's output folder")
BASE = ("base", True, "the base stage's output folder")
ADAPTERS = ("adapters", True, "the finetune stage's output folder")

STAGES = (
    Stage(
        "ingest",
        "read a raw dataset (folders, image+mask, VOC, COCO, ELPV) into a manifest",
        (("source", False, "raw dataset folder (default: params data.root)"),),
        ("data", "ingest"),
        ("ingest_report.json",),
        _run_of("ingest"),
    ),
    Stage(
        "preprocess",
        "ROI crop/tile, resize, colour, stable split, few-shot subset",
        (("ingested", True, "the ingest stage's output folder"),),
        ("seed", "preprocess"),
        ("split_counts.json",),
        _run_of("preprocess"),
    ),
    Stage(
        "masks",
        "per class: new defect masks from the real train masks (hybrid interpolation, "
        "perturbation, a DDPM producer) and their quality; a record saying so without masks",
        (PREPROCESSED,),
        ("seed", "masks", "gate"),
        ("masks.json", "grids"),
        _run_of("masks"),
        curves=("curves",),
    ),
    Stage(
        "base",
        "the diffusion prior: pretrain the tiny profile, or check and record an sd15 checkpoint",
        (PREPROCESSED,),
        ("seed", "model", "base", "preprocess"),
        ("base.json", "samples.png"),
        _run_of("base"),
        curves=("curves",),
    ),
    Stage(
        "finetune",
        "per class: textual inversion, then LoRA (StableSDG), into diffusers adapter files",
        (PREPROCESSED, BASE),
        ("seed", "model", "finetune", "preprocess"),
        ("finetune.json",),
        _run_of("finetune"),
        curves=("curves",),
    ),
    Stage(
        "sweep",
        "per class: probe a strength x guidance grid, choose the cell closest to held-out "
        "real images",
        (PREPROCESSED, BASE, ADAPTERS),
        ("seed", "model", "finetune", "sweep", "generate", "gate"),
        ("chosen.json", "sweep.parquet", "heatmaps", "probes"),
        _run_of("sweep"),
    ),
    Stage(
        "generate",
        "per class: image-oriented (img2img) or txt2img generation with the class's adapter",
        (
            PREPROCESSED,
            BASE,
            ADAPTERS,
            ("sweep", False, "the sweep stage's output folder (default: generate.per_class)"),
        ),
        ("seed", "model", "finetune", "generate"),
        ("generate.json", "samples.png"),
        _run_of("generate"),
    ),
    Stage(
        "gate",
        "per class: Frechet/kernel distance of synthetic vs held-out real images, judged "
        "against real-vs-real; keeps the passing classes' images minus near-duplicates",
        (PREPROCESSED, ("generated", True, "the generate stage's output folder")),
        ("seed", "gate"),
        ("gate.json", "gate.csv"),
        _run_of("gate"),
    ),
    Stage(
        "pairs",
        "per class: a ControlNet from the base UNet trained on real (mask, image) pairs, then "
        "self-annotated image + mask pairs from the masks stage's masks",
        (PREPROCESSED, BASE, ("masks", True, "the masks stage's output folder")),
        ("seed", "model", "pairs"),
        ("pairs.json", "grids"),
        _run_of("pairs"),
        curves=("curves",),
    ),
    Stage(
        "pairs_gate",
        "the gate, unchanged, on the pairs stage's images: per class distance to held-out "
        "real images against real-vs-real",
        (PREPROCESSED, ("generated", True, "the pairs stage's output folder")),
        ("seed", "gate"),
        ("gate.json", "gate.csv"),
        _run_of("gate"),
    ),
    Stage(
        "segment",
        "COCO export of real + synthetic pairs, and a U-Net per condition (real vs "
        "real+synthetic) scored on the real test split",
        (
            PREPROCESSED,
            ("pairs", True, "the pairs stage's output folder"),
            ("gated", True, "the pairs_gate stage's output folder"),
        ),
        ("seed", "segment"),
        ("segment.json", "comparison.csv"),
        _run_of("segment"),
        curves=("curves",),
    ),
    Stage(
        "train",
        "classifiers on real vs real+synthetic (and the other conditions in params), "
        "best epoch on val, scored on the real test split",
        (
            PREPROCESSED,
            ("generated", True, "the generate stage's output folder (the images)"),
            ("gated", True, "the gate stage's output folder (which images passed)"),
        ),
        ("seed", "train"),
        ("eval.json", "comparison.csv", "confusion.json", "runs.parquet"),
        _run_of("train"),
        curves=("curves",),
    ),
    Stage(
        "detect",
        "detectors (Faster R-CNN / Mask R-CNN) on real vs real+synthetic with the matched "
        "controls, scored on the real test split with COCOeval; skipped without masks or boxes",
        (
            PREPROCESSED,
            ("generated", True, "the generate stage's output folder (the images)"),
            ("gated", True, "the gate stage's output folder (which images passed)"),
            ("pairs", True, "the pairs stage's output folder (image+mask pairs)"),
            ("pairs_gated", True, "the pairs_gate stage's output folder"),
        ),
        ("seed", "detect"),
        ("detect.json", "comparison.csv", "runs.parquet", "boxes.png"),
        _run_of("detect"),
        curves=("curves",),
    ),
    Stage(
        "register",
        "every class adapter into the MLflow model registry; champion/challenger by the gate",
        (
            BASE,
            ADAPTERS,
            ("sweep", True, "the sweep stage's output folder (the chosen settings)"),
            ("gated", True, "the gate stage's output folder (the verdicts)"),
        ),
        ("data", "tracking"),
        ("registry.json",),
        _run_of("register"),
    ),
    Stage(
        "report",
        "one self-contained HTML page and a markdown summary of the run",
        (
            ("ingested", True, "the ingest stage's output folder"),
            PREPROCESSED,
            ("sweep", True, "the sweep stage's output folder"),
            ("generated", True, "the generate stage's output folder"),
            ("gated", True, "the gate stage's output folder"),
            ("train", True, "the train stage's output folder"),
            ("masks", False, "the masks stage's output folder"),
            ("pairs", False, "the pairs stage's output folder"),
            ("pairs_gated", False, "the pairs_gate stage's output folder"),
            ("segment", False, "the segment stage's output folder"),
            ("detect", False, "the detect stage's output folder"),
        ),
        ("data", "tracking"),
        ("report.html", "report.md"),
        _run_of("report"),
    ),
)


def get_stage(name: str) -> Stage:
    for stage in STAGES:
        if stage.name == name:
            return stage
    raise KeyError(f"unknown stage {name!r}; stages: {[s.name for s in STAGES]}")


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
        metrics = stage.runner(params, out_dir=out_dir, **inputs)
        return _reproducible(metrics), time.perf_counter() - started
    from defectgen import tracking

    with tracking.stage_run(stage.name, params, stage.sections) as run:
        metrics = stage.runner(params, out_dir=out_dir, **inputs)
        wall_s = time.perf_counter() - started
        run.log_metrics({**metrics, "wall_s": wall_s})
        for report in stage.reports:
            run.log_artifact(Path(out_dir) / report)
        for curve in stage.curves:
            run.log_curves(Path(out_dir) / curve)
    return _reproducible(metrics), wall_s


def _reproducible(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if not k.startswith("time/")}


CLUSTER_ENV = "DEFECTGEN_CLUSTER"  # set on every task of the compiled KFP pipeline
PIPELINE_KEY_ENV = "DEFECTGEN_PIPELINE_KEY"  # groups a run's stages in MLflow (tracking.py)


def in_cluster() -> bool:
    """Whether this process is a task of the compiled pipeline (a pod, or kfp.local)."""
    return os.environ.get(CLUSTER_ENV) == "1"


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
