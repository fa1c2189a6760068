"""Gate: decide, per class, whether its synthetic images may enter training.

For each class with synthetic images, all compared at the same size and count n
(the smaller of gate.max_images, the synthetic count and the train count):
    reference   the class's val images (held out: nothing generated derives from them)
    real        train images vs reference: the real-vs-real floor
    blur/noise  blurred / noised train images vs reference: what obvious damage scores
    synthetic   synthetic images vs reference
Distances come from core.metrics (torch-fidelity): Inception FID when its weights are
available (gate.inception_weights or torch's cache), else the offline EfficientNet-Lite0
Frechet/kernel distances, named fd_effnet_lite0 / kd_effnet_lite0; gate.json says which.
A class passes within gate.max_ratio x its real-vs-real distance. Near-duplicates of
their parent are dropped and counted. Failed classes contribute no image downstream.

Writes under `out_dir`:
    manifest.parquet   the synthetic rows that passed (the training stage's input)
    gate.json          extractor, per class: distances, baselines, verdict, reason, counts
    gate.csv           the same per class, one row each (a table for the report)
Real-image features are cached beside `out_dir` per (extractor, ids, size).
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from defectgen import manifest
from defectgen.config import Params
from defectgen.core import gate as gate_core
from defectgen.core import metrics
from defectgen.io import atomic_dir, atomic_write_json
from defectgen.stages.diffusion_common import derive_seed, load_images

REPORT_NAME = "gate.json"
TABLE_NAME = "gate.csv"


def _choose_extractor(params: Params, device: torch.device) -> tuple[metrics.Extractor, str]:
    """The extractor gate.extractor asks for, and a note on why (shown in gate.json)."""
    cfg = params.gate
    if cfg.extractor == metrics.EFFNET:
        return metrics.make_extractor(metrics.EFFNET, weights=None, device=device), "requested"
    weights = metrics.inception_weights(cfg.inception_weights)
    if weights is not None or cfg.extractor == metrics.INCEPTION:
        ext = metrics.make_extractor(metrics.INCEPTION, weights=weights, device=device)
        return ext, f"Inception weights {weights}"
    note = (
        "Inception FID weights are not available offline (set gate.inception_weights to a "
        "local copy for standard FID); using the offline EfficientNet-Lite0 distance"
    )
    return metrics.make_extractor(metrics.EFFNET, weights=None, device=device), note


class _Features:
    """Features of images, cached on disk per (extractor, ids, size) for real images."""

    def __init__(self, extractor: metrics.Extractor, cache_dir: Path):
        self.extractor = extractor
        self.cache_dir = cache_dir

    def of(self, images: list[np.ndarray], ids: list[str] | None = None) -> torch.Tensor:
        if ids is None:
            return metrics.extract(self.extractor, images)
        key = hashlib.sha256(
            json.dumps([self.extractor.name, images[0].shape, ids]).encode()
        ).hexdigest()[:24]
        path = self.cache_dir / f"{key}.pt"
        if path.is_file():
            return torch.load(path, weights_only=True)
        feats = metrics.extract(self.extractor, images)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(feats, tmp)
        tmp.replace(path)
        return feats


def _pick(rows: list[dict], n: int, seed: int) -> list[dict]:
    """n rows, chosen by a seeded permutation of the id-sorted rows."""
    rows = sorted(rows, key=lambda r: r["id"])
    order = np.random.default_rng(seed).permutation(len(rows))[:n]
    return [rows[i] for i in sorted(order)]


def run(params: Params, *, preprocessed: Path, generated: Path, out_dir: Path) -> dict[str, float]:
    """Judge every class in the generate stage's output at `generated`.

    Returns:
        Metrics per class: <class>/<fd>, <class>/<fd>_real, _blur, _noise, <class>/<kd>,
        <class>/passed, <class>/near_duplicates; totals n_kept, n_passed_classes.
    """
    cfg = params.gate
    preprocessed, generated, out_dir = Path(preprocessed), Path(generated), Path(out_dir)
    device = torch.device(
        "cuda" if torch.cuda.is_available() and params.model.device != "cpu" else "cpu"
    )
    extractor, note = _choose_extractor(params, device)
    features = _Features(extractor, out_dir.parent / f".{out_dir.name}.features")
    fd, kd = extractor.fd_name, extractor.kd_name
    real_rows = manifest.read_rows(preprocessed)
    by_id = {r["id"]: r for r in real_rows}
    synthetic = manifest.read_rows(generated)
    labels = sorted({r["label"] for r in synthetic})

    report: dict[str, dict] = {}
    kept: list[dict] = []
    metrics_out: dict[str, float] = {}
    for label in labels:
        syn_rows = [r for r in synthetic if r["label"] == label]
        size = syn_rows[0]["width"]
        train = [
            r for r in real_rows if r["label"] == label and r["split"] == "train"
            and (params.finetune.data == "train" or r["in_subset"])
        ]  # fmt: skip
        val = [r for r in real_rows if r["label"] == label and r["split"] == "val"]
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
        ref_rows = _pick(val, cfg.max_images, seed)
        train_rows = _pick(train, n, seed)
        train_px = load_images(preprocessed, train_rows, size)
        f_ref = features.of(load_images(preprocessed, ref_rows, size), [r["id"] for r in ref_rows])
        f_train = features.of(train_px, [r["id"] for r in train_rows])
        f_blur = features.of(gate_core.blurred(train_px, cfg.blur_radius))
        f_noise = features.of(
            gate_core.noised(train_px, cfg.noise_sigma, np.random.default_rng(seed))
        )
        f_syn_all = features.of(load_images(generated, syn_rows, size))
        f_syn = f_syn_all[np.random.default_rng(seed).permutation(len(syn_rows))[:n]]

        distance = metrics.frechet(f_syn, f_ref)
        baseline = metrics.frechet(f_train, f_ref)
        kd_mean, kd_std = metrics.kernel(f_syn, f_ref, subsets=cfg.kid_subsets, seed=seed % 2**31)
        passed, reason = gate_core.judge(
            distance, baseline, max_ratio=cfg.max_ratio, max_distance=cfg.max_distance
        )

        with_parent = [i for i, r in enumerate(syn_rows) if r["parent_id"] in by_id]
        dup = torch.zeros(len(syn_rows), dtype=torch.bool)
        if with_parent:
            parent_rows = [by_id[syn_rows[i]["parent_id"]] for i in with_parent]
            unique = sorted({r["id"]: r for r in parent_rows}.values(), key=lambda r: r["id"])
            f_unique = features.of(
                load_images(preprocessed, unique, size), [r["id"] for r in unique]
            )
            index = {r["id"]: k for k, r in enumerate(unique)}
            f_par = f_unique[[index[r["id"]] for r in parent_rows]]
            gap = gate_core.nearest_gap(f_train)
            dup[with_parent] = gate_core.near_duplicates(
                f_syn_all[with_parent], f_par, gap=gap, ratio=cfg.near_duplicate
            )
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
            tmp / REPORT_NAME, {"extractor": extractor.name, "note": note, "classes": report}
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
