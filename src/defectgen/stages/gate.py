"""Gate: decide, per class, whether its synthetic images may enter training.

For each class with synthetic images, all compared at the same size and count n
(the smaller of gate.max_images, the synthetic count and the train count):
    reference   the class's val images (held out: nothing generated derives from them)
    real        train images vs reference: the real-vs-real floor
    blur/noise  blurred / noised train images vs reference: what obvious damage scores
    synthetic   synthetic images vs reference
Distances and the real sets come from stages.reference (Inception FID when its weights
are available, else the offline EfficientNet-Lite0 distance; gate.json says which).
A class passes within gate.max_ratio x its real-vs-real distance. Near-duplicates of
their parent are dropped and counted. Failed classes contribute no image downstream.

Writes under `out_dir`:
    manifest.parquet   the synthetic rows that passed (the training stage's input)
    gate.json          extractor, per class: distances, baselines, verdict, reason, counts
    gate.csv           the same per class, one row each (a table for the report)
Real-image features are cached in `.features` beside `out_dir` (shared with the sweep).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from defectgen import manifest
from defectgen.config import Params
from defectgen.core import gate as gate_core
from defectgen.core import metrics
from defectgen.io import atomic_dir, atomic_write_json
from defectgen.stages.diffusion_common import derive_seed, load_images
from defectgen.stages.reference import FEATURES_DIR, Reference, pick

REPORT_NAME = "gate.json"
TABLE_NAME = "gate.csv"


def run(params: Params, *, preprocessed: Path, generated: Path, out_dir: Path) -> dict[str, float]:
    """Judge every class in the generate stage's output at `generated`.

    Returns:
        Metrics per class: <class>/<fd>, <class>/<fd>_real, _blur, _noise, <class>/<kd>,
        <class>/passed, <class>/near_duplicates; totals n_kept, n_passed_classes.
    """
    cfg = params.gate
    preprocessed, generated, out_dir = Path(preprocessed), Path(generated), Path(out_dir)
    ref = Reference(params, preprocessed, out_dir.parent / FEATURES_DIR)
    extractor = ref.extractor
    fd, kd = extractor.fd_name, extractor.kd_name
    synthetic = manifest.read_rows(generated)
    labels = sorted({r["label"] for r in synthetic})

    report: dict[str, dict] = {}
    kept: list[dict] = []
    metrics_out: dict[str, float] = {}
    for label in labels:
        syn_rows = [r for r in synthetic if r["label"] == label]
        size = syn_rows[0]["width"]
        train, val = ref.train(label), ref.val(label)
        n = min(cfg.max_images, len(syn_rows), len(train))
        entry: dict = {"n_synthetic": len(syn_rows), "n_compared": n, "n_reference": 0}
        if n < 2 or len(val) < 2:
            entry.update(
                passed=False, reason="fewer than 2 train, val or synthetic images to compare"
            )
            report[label] = entry
            metrics_out[f"{label}/passed"] = 0.0
            continue
        seed = derive_seed(params.seed, "gate", label)
        ref_rows = pick(val, cfg.max_images, seed)
        train_rows = pick(train, n, seed)
        train_px = ref.images(train_rows, size)
        f_ref = ref.real_features(ref_rows, size)
        f_train = ref.real_features(train_rows, size)
        f_blur = ref.features(gate_core.blurred(train_px, cfg.blur_radius))
        f_noise = ref.features(
            gate_core.noised(train_px, cfg.noise_sigma, np.random.default_rng(seed))
        )
        f_syn_all = ref.features(load_images(generated, syn_rows, size))
        f_syn = f_syn_all[np.random.default_rng(seed).permutation(len(syn_rows))[:n]]

        distance = metrics.frechet(f_syn, f_ref)
        baseline = metrics.frechet(f_train, f_ref)
        kd_mean, kd_std = metrics.kernel(f_syn, f_ref, subsets=cfg.kid_subsets, seed=seed % 2**31)
        passed, reason = gate_core.judge(
            distance, baseline, max_ratio=cfg.max_ratio, max_distance=cfg.max_distance
        )
        dup = ref.near_duplicates(syn_rows, f_syn_all, size=size, gap=ref.gap(label, size))
        if passed:
            kept.extend(r for r, d in zip(syn_rows, dup.tolist(), strict=True) if not d)
        entry.update(
            n_reference=len(ref_rows),
            **{fd: distance, f"{fd}_real": baseline, kd: kd_mean, f"{kd}_std": kd_std},
            **{f"{fd}_blur": metrics.frechet(f_blur, f_ref)},
            **{f"{fd}_noise": metrics.frechet(f_noise, f_ref)},
            ratio=distance / baseline if baseline > 0 else None,
            near_duplicates=int(dup.sum()),
            passed=passed,
            reason=reason,
            n_kept=sum(1 for r in kept if r["label"] == label),
        )  # fmt: skip
        report[label] = entry
        for key in (fd, f"{fd}_real", f"{fd}_blur", f"{fd}_noise", kd, "near_duplicates"):
            metrics_out[f"{label}/{key}"] = float(entry[key])
        metrics_out[f"{label}/passed"] = float(passed)

    with atomic_dir(out_dir) as tmp:
        manifest.write_manifest(kept, tmp / manifest.MANIFEST_NAME)
        atomic_write_json(
            tmp / REPORT_NAME, {"extractor": extractor.name, "note": ref.note, "classes": report}
        )
        columns = ["label", "passed", "reason", "n_synthetic", "n_compared", "n_reference"]
        columns += [fd, f"{fd}_real", f"{fd}_blur", f"{fd}_noise", kd, "near_duplicates", "n_kept"]
        with (tmp / TABLE_NAME).open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            for label, entry in report.items():
                writer.writerow({"label": label, **entry})
    metrics_out["n_kept"] = len(kept)
    metrics_out["n_passed_classes"] = sum(1 for e in report.values() if e["passed"])
    return metrics_out
