"""Sweep: choose strength and guidance per class before the full generation.

StableSDG tunes image-oriented generation's strength s and guidance w per class by FID
(III-C, Tables I and IV). For every class with an adapter, every cell of
sweep.strengths x sweep.guidances generates sweep.probe_images probes (the same seeds
and parents in every cell, so cells differ only by their settings; the seeds differ
from the full batch's) and measures them against the class's val images with the
gate's extractor (defectgen.reference). The cell with the lowest sweep.metric wins among
those whose probes are not mostly near-copies of their parents (core.sweep.choose).

Selection uses one half of the class's val images and the gate judges on the other
(defectgen.reference), and the full batch is generated afresh, so no val image both
picks the settings and judges their outcome.

sweep.enabled false: no probes; chosen.json records generate.strength / guidance /
per_class, so the generate stage reads its settings from one place either way.

Writes under `out_dir`:
    chosen.json          per class: strength, guidance, distances, reason (generate's input)
    sweep.parquet        one row per (class, cell): distances, duplicate fraction, chosen
    heatmaps/<class>.png the distance per cell, chosen cell outlined (report, MLflow)
    heatmaps/<class>.csv the same as data for the DVC plot (dvc plots show)
    probes/<class>.png   one probe image per cell, laid out like the heatmap
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from defectgen import manifest
from defectgen.artifacts import (
    BASE_JSON,
    CELLS_JSON,
    CHOSEN_JSON,
    FEATURES_DIR,
    FINETUNE_JSON,
    HEATMAPS_DIR,
    PROBES_DIR,
    SWEEP_PARQUET,
)
from defectgen.atomic import atomic_dir, atomic_write_json, write_file
from defectgen.config import Params
from defectgen.core import distances
from defectgen.core import sweep as sweep_core
from defectgen.core.diffusion import models, sample
from defectgen.core.images import decode_image, encode_png, resize
from defectgen.errors import DataError
from defectgen.prior import open_class
from defectgen.progress import Units
from defectgen.real_images import train_images
from defectgen.reference import Reference, pick
from defectgen.resume import Resume, file_digest
from defectgen.seeds import derive_seed, parent_order


def _probe_class(
    unit: Path,
    params: Params,
    ref: Reference,
    base: Path,
    adapter_dir: Path,
    parents: list[tuple[dict, np.ndarray]],
    rt: models.Runtime,
) -> None:
    """Score every cell for one class; writes cells.json and probes.png into `unit`."""
    cfg, gen = params.sweep, params.generate
    sampler, adapter = open_class(params, base, adapter_dir, rt, mode=params.generate.mode)
    label, size = adapter["label"], adapter["resolution"]
    channels = 1 if parents[0][1].ndim == 2 else 3
    n = cfg.probe_images
    order = parent_order(params.seed, label, len(parents))
    chosen = [parents[order[i % len(parents)]] for i in range(n)]
    seeds = [derive_seed(params.seed, "sweep", label, i) for i in range(n)]
    probe_rows = [{"parent_id": row["id"] if gen.mode == "img2img" else None} for row, _ in chosen]
    seed = derive_seed(params.seed, "gate", label)
    f_ref = ref.real_features(pick(ref.val(label, "sweep"), params.gate.max_images, seed), size)
    f_train = ref.real_features(pick(ref.train(label), n, seed), size)
    gap = ref.gap(label, size)

    scored, shown = [], []
    for cell in sweep_core.grid(cfg.strengths, cfg.guidances, gen.mode):
        batches = sample.in_batches(
            sampler,
            prompt=adapter["prompt"],
            seeds=seeds,
            parents=[resize(px, size) for _, px in chosen] if gen.mode == "img2img" else None,
            batch_size=gen.batch_size,
            strength=cell.strength or 1.0,
            guidance=cell.guidance,
            steps=gen.steps,
            size=size,
            channels=channels,
        )
        images = [image for _, batch in batches for image in batch]
        f_syn = ref.features(images)
        dup = ref.near_duplicates(label, probe_rows, f_syn, size=size, gap=gap)
        numbers = sweep_core.score(
            f_syn, f_ref, dup, subsets=params.gate.kid_subsets, seed=seed % 2**31
        )
        scored.append({"strength": cell.strength, "guidance": cell.guidance, **numbers})
        shown.append(images[0])
    record = {
        "label": label,
        "n_probe": n,
        "n_reference": len(f_ref),
        "fd_real": distances.frechet(f_train, f_ref),
        "cells": scored,
    }
    atomic_write_json(unit / CELLS_JSON, record)
    columns = len(cfg.guidances)
    rows = [np.concatenate(shown[i : i + columns], axis=1) for i in range(0, len(shown), columns)]
    write_file(unit / "probes.png", encode_png(np.concatenate(rows, axis=0)))


def _pictures(
    tmp: Path, done: Path, record: dict, best: dict, *, metric: str, names: tuple[str, str]
) -> None:
    """One class's heatmap (PNG, and CSV for the DVC plot) and probe grid into `tmp`."""
    fd, kd = names
    label, cells = record["label"], record["cells"]
    metric_name = fd if metric == "fd" else kd
    title = (
        f"{label}: {metric_name} of {record['n_probe']} probes vs "
        f"{record['n_reference']} val images\n"
        f"real-vs-real ({record['n_probe']} train images vs val) {fd} {record['fd_real']:.1f}"
    )
    png = sweep_core.heatmap(
        cells, metric=metric, metric_name=metric_name, title=title, chosen=best
    )
    write_file(tmp / HEATMAPS_DIR / f"{label}.png", png)
    plot = pd.DataFrame(
        {
            "strength": [c["strength"] for c in cells],
            "guidance": [c["guidance"] for c in cells],
            "distance": [c[metric] for c in cells],
            "metric": metric_name,
        }
    )
    write_file(tmp / HEATMAPS_DIR / f"{label}.csv", plot.to_csv(index=False).encode())
    tiles, _ = decode_image((done / "probes.png").read_bytes())
    write_file(tmp / PROBES_DIR / f"{label}.png", sweep_core.probe_grid(tiles, cells, best))


def _from_params(params: Params, labels: list[str]) -> dict[str, dict]:
    chosen = {}
    for label in labels:
        strength, guidance = params.generate.settings(label)
        chosen[label] = {
            "strength": strength if params.generate.mode == "img2img" else None,
            "guidance": guidance,
            "reason": "sweep disabled: generate.per_class / strength / guidance",
        }
    return chosen


def run(
    params: Params,
    *,
    preprocessed: Path,
    base: Path,
    adapters: Path,
    out_dir: Path,
    params_key: str,
) -> dict[str, float]:
    """Choose (strength, guidance) for every class that has an adapter.

    Returns:
        Metrics per class: <class>/strength, <class>/guidance, <class>/<fd>, <class>/<kd>
        of the chosen cell and <class>/<fd>_real (train vs val at the probe count);
        n_cells (+ time/<class>_s for MLflow only).
    """
    cfg = params.sweep
    preprocessed, base, adapters = Path(preprocessed), Path(base), Path(adapters)
    out_dir = Path(out_dir)
    summary_path = adapters / FINETUNE_JSON
    if not summary_path.is_file():
        raise DataError(f"{summary_path}: missing; pass the finetune stage's output as --adapters")
    labels = sorted(json.loads(summary_path.read_text(encoding="utf-8")))
    if not cfg.enabled:
        with atomic_dir(out_dir) as tmp:
            atomic_write_json(
                tmp / CHOSEN_JSON, {"source": "params", "classes": _from_params(params, labels)}
            )
            pd.DataFrame(columns=["label", "strength", "guidance"]).to_parquet(tmp / SWEEP_PARQUET)
        return {"n_cells": 0.0}

    ref = Reference(params, preprocessed, out_dir.parent / FEATURES_DIR)
    fd, kd = ref.extractor.fd_name, ref.extractor.kd_name
    rt = models.runtime(params.model)
    per_class = train_images(preprocessed, data=params.finetune.data, classes=labels)
    key = file_digest(preprocessed / manifest.MANIFEST_NAME, base / BASE_JSON, summary_path)[:16]
    key += params_key
    resume = Resume(out_dir, key)
    fallback = _from_params(params, labels)
    metrics_out: dict[str, float] = {}
    chosen: dict[str, dict] = {}
    table: list[dict] = []
    units = Units("sweep", "class", len(labels))
    with atomic_dir(out_dir) as tmp:
        for label in labels:
            if len(ref.val(label, "sweep")) < 2:
                chosen[label] = {
                    **fallback[label],
                    "reason": "fewer than 2 images in the sweep's half of val to measure "
                    "against: params settings",
                }
                continue
            done, seconds = resume.ensure(
                label,
                _probe_class,
                params,
                ref,
                base,
                adapters / "adapters" / label,
                per_class[label],
                rt,
            )
            units.tick(label, seconds)
            if seconds is not None:
                metrics_out[f"time/{label}_s"] = seconds
            record = json.loads((done / CELLS_JSON).read_text(encoding="utf-8"))
            best, reason = sweep_core.choose(
                record["cells"],
                metric=cfg.metric,
                max_duplicate_fraction=cfg.max_duplicate_fraction,
            )
            for cell in record["cells"]:
                cell["eligible"] = cell["duplicate_fraction"] <= cfg.max_duplicate_fraction
                table.append(
                    {
                        "label": label,
                        "strength": cell["strength"],
                        "guidance": cell["guidance"],
                        fd: cell["fd"],
                        f"{fd}_spread": cell.get("fd_spread"),
                        f"{kd}_spread": cell.get("kd_spread"),
                        kd: cell["kd"],
                        f"{kd}_std": cell["kd_std"],
                        "duplicate_fraction": cell["duplicate_fraction"],
                        "eligible": cell["eligible"],
                        "chosen": cell is best,
                        "n_probe": record["n_probe"],
                        "n_reference": record["n_reference"],
                    }
                )
            chosen[label] = {
                "strength": best["strength"],
                "guidance": best["guidance"],
                fd: best["fd"],
                f"{fd}_spread": best.get("fd_spread"),
                kd: best["kd"],
                f"{fd}_real": record["fd_real"],
                "duplicate_fraction": best["duplicate_fraction"],
                "reason": reason,
            }
            _pictures(tmp, done, record, best, metric=cfg.metric, names=(fd, kd))
            metrics_out[f"{label}/guidance"] = best["guidance"]
            if best["strength"] is not None:
                metrics_out[f"{label}/strength"] = best["strength"]
            metrics_out[f"{label}/{fd}"] = best["fd"]
            metrics_out[f"{label}/{kd}"] = best["kd"]
            metrics_out[f"{label}/{fd}_real"] = record["fd_real"]
        atomic_write_json(
            tmp / CHOSEN_JSON,
            {
                "source": "sweep",
                "metric": cfg.metric,
                "extractor": ref.extractor.name,
                "note": ref.note,
                "reference": "the sweep's half of each class's val images (the gate judges "
                "on the other half)",
                "classes": chosen,
            },
        )
        pd.DataFrame(table).to_parquet(tmp / SWEEP_PARQUET, index=False)
    resume.finish()
    metrics_out["n_cells"] = float(len(table))
    return metrics_out
