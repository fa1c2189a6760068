"""What stages write and read of each other: every output file name, in one place, and
typed readers for the records one stage hands to another (base.json, adapter.json,
chosen.json, gate.json).

A stage never imports another stage: it imports the names and readers here. The readers
check that the file is there and has the keys its readers use, and otherwise say which
stage's output folder is wrong and how to fix it. Light on purpose (json, pathlib): the
classifier stages import it without loading torch's diffusion stack.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypedDict, cast

from defectgen.errors import DataError

# Written by more than one stage, or read across stages.
CURVES_DIR = "curves"  # <series>.csv with columns step, loss (DVC plots, MLflow)
FEATURES_DIR = ".features"  # beside a stage's output folder: the real-feature cache
GRIDS_DIR = "grids"  # per class <label>.png (masks, pairs)
SAMPLES_PNG = "samples.png"  # real (top) vs generated (bottom): base, generate
COMPARISON_CSV = "comparison.csv"  # one row per condition (DVC plots): train, segment, detect
RUNS_PARQUET = "runs.parquet"  # one row per trained model: train, segment, detect
RECORD_JSON = "record.json"  # one trained model, a resume unit: train, segment, detect
# train: one row per (model, condition, seed, test image): the class it predicted
TEST_PREDICTIONS_PARQUET = "test_predictions.parquet"
# segment: one row per (condition, seed, test image): its S-measure, MAE, IoU and Dice
TEST_SCORES_PARQUET = "test_scores.parquet"

# One per stage.
INGEST_JSON = "ingest_report.json"
SPLIT_COUNTS_JSON = "split_counts.json"  # preprocess
PREPROCESS_REPORT_JSON = "preprocess_report.json"  # preprocess: what the resize did to labels
MASKS_JSON, MASKS_PARQUET = "masks.json", "masks.parquet"
BASE_JSON = "base.json"
FINETUNE_JSON = "finetune.json"  # the summary over classes
ADAPTER_JSON = "adapter.json"  # one per class adapter folder
PRIOR_DIR, PRIOR_JSON = "prior", "prior.json"  # finetune.mode dreambooth's prior images
CHOSEN_JSON = "chosen.json"  # the sweep stage's per-class strength and guidance
SWEEP_PARQUET, CELLS_JSON = "sweep.parquet", "cells.json"
HEATMAPS_DIR, PROBES_DIR = "heatmaps", "probes"
GENERATE_JSON = "generate.json"
GATE_JSON, GATE_CSV = "gate.json", "gate.csv"  # gate and pairs_gate
PAIRS_JSON = "pairs.json"
SEGMENT_JSON = "segment.json"
EVAL_JSON, CONFUSION_JSON = "eval.json", "confusion.json"  # train
DETECT_JSON, BOXES_PNG = "detect.json", "boxes.png"
REGISTRY_JSON = "registry.json"
REPORT_HTML, REPORT_MD = "report.html", "report.md"
PARENT_JSON = "parent.json"  # the report's {metrics, tags} for the pipeline's parent run


class BaseRecord(TypedDict, total=False):
    """base.json: which prior every later stage loads, and its weights' fingerprint."""

    profile: str  # tiny | sd15
    source: str  # tiny: a folder inside the base stage's output; sd15: folder or hub id
    revision: str | None
    fingerprint: str  # sha256 over every weight
    latent_factor: int
    image_size: int
    trained_on: dict[str, Any]  # tiny: {data, n_images}


class AdapterRecord(TypedDict, total=False):
    """adapter.json: one class's adapter (finetune), read by sweep, generate and register."""

    adapter_id: str
    label: str
    token: str
    prompt: str
    resolution: int
    mode: str
    files: list[str]
    base: dict[str, Any]  # the base record it was trained on
    data: dict[str, Any]  # which train images (selection, n_images, ids_sha256)
    phases: dict[str, Any]  # per phase: steps, lr, loss summary


class ChosenCell(TypedDict, total=False):
    """chosen.json's entry for one class: the sweep's cell and why."""

    strength: float
    guidance: float
    reason: str
    duplicate_fraction: float


class GateClass(TypedDict, total=False):
    """gate.json's entry for one class (the distance keys are named after the extractor)."""

    passed: bool
    verdict: str  # pass | fail | inconclusive (core.no_harm.VERDICTS)
    rule: str  # which check decided: floor | class | pooled | fidelity
    reason: str
    change: str  # what would change the verdict
    superior: bool  # better than the classical copies on val: promotes its adapter
    ratio: float
    n_synthetic: int
    n_kept: int
    no_harm: dict[str, Any] | None  # core.no_harm.check with the class's images added


class GateReport(TypedDict, total=False):
    """gate.json: the extractor, and per class the verdict and its measurements."""

    extractor: str
    note: str
    reference: str
    judge: str | None
    margin: float
    pooled: dict[str, Any] | None  # core.no_harm.check with every floor-passing class added
    classes: dict[str, GateClass]
    tags: dict[str, str]  # the gate's MLflow run tags (verdict and rule per class)


def read_json(path: Path, *, stage: str, option: str, keys: tuple[str, ...] = ()) -> Any:
    """A stage's JSON record: a DataError naming the file and the fix if it is missing,
    unreadable or lacks one of `keys` (the folder passed as `option` is not `stage`'s)."""
    path = Path(path)
    fix = f"pass the {stage} stage's output folder as --{option} (or re-run the {stage} stage)"
    if not path.is_file():
        raise DataError(f"{path}: missing; {fix}")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable ({exc}); {fix}") from None
    missing = [k for k in keys if k not in record]
    if missing:
        raise DataError(f"{path}: lacks {missing}; {fix}")
    return record


def read_base(base_dir: Path) -> BaseRecord:
    """The base stage's record: profile, source, revision, fingerprint, image size."""
    keys = ("profile", "source", "fingerprint")
    return cast(
        BaseRecord, read_json(Path(base_dir) / BASE_JSON, stage="base", option="base", keys=keys)
    )


def read_adapter(adapter_dir: Path) -> AdapterRecord:
    """A saved class adapter's record (one folder of the finetune stage's adapters)."""
    keys = ("adapter_id", "label", "token", "prompt", "resolution")
    path = Path(adapter_dir) / ADAPTER_JSON
    return cast(AdapterRecord, read_json(path, stage="finetune", option="adapters", keys=keys))


def read_chosen(sweep_dir: Path, labels: list[str]) -> dict[str, ChosenCell]:
    """The sweep stage's chosen (strength, guidance) per class; every label must be there."""
    path = Path(sweep_dir) / CHOSEN_JSON
    classes = read_json(path, stage="sweep", option="sweep", keys=("classes",))["classes"]
    missing = sorted(set(labels) - set(classes))
    if missing:
        raise DataError(
            f"{path}: no chosen settings for classes {missing}; re-run the sweep stage on "
            "the same adapters"
        )
    return cast(dict[str, ChosenCell], classes)


def read_masks_table(masks_dir: Path) -> list[dict[str, Any]]:
    """The masks stage's table (masks.parquet): one row per new mask, with its parents."""
    import pandas as pd

    path = Path(masks_dir) / MASKS_PARQUET
    if not path.is_file():
        raise DataError(
            f"{path}: missing; pass the masks stage's output folder as --masks (or re-run "
            "the masks stage)"
        )
    return pd.read_parquet(path).to_dict("records")


def read_gate(gated_dir: Path, *, option: str = "gated") -> GateReport:
    """The gate's (or pairs_gate's) verdicts per class."""
    path = Path(gated_dir) / GATE_JSON
    return cast(GateReport, read_json(path, stage="gate", option=option, keys=("classes",)))
