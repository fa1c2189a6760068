"""Gate: decide, per class, whether its synthetic images may enter training.

Per class, in this order, so that the verdict is taken on the images that would pass:
    1. near-duplicates (closer to the nearest image the generator learned from, its
       parent or any other train image, than gate.near_duplicate x the real
       nearest-neighbour gap) are dropped and counted;
    2. realism per image and coverage per class: k-NN precision and recall against
       the class's train images (core.gate); with gate.manifold_filter, images outside
       the real manifold are dropped too;
    3. the rest are compared at one size and count n (the smaller of gate.max_images,
       the remaining count and the train count):
         reference   the gate's half of the class's val images (the sweep chose its
                     cell on the other half; defectgen.reference)
         real        train images vs reference: the real-vs-real floor
         blur/noise  blurred / noised train images vs reference: obvious damage
         synthetic   the remaining synthetic images vs reference
Distances come from defectgen.reference (Inception FID when its weights are available,
else the offline EfficientNet-Lite0 distance; gate.json says which).
    4. the verdict (gate.decide_by):
         utility    (default) a class worse than blurred real images fails (the fidelity
                    floor); otherwise its synthetic images must lower a proxy
                    classifier's loss on the gate's half of val more than as many
                    classical augmentations of its real images (core.utility: 95 %
                    interval above 0 passes, below fails, else inconclusive, which
                    gate.inconclusive rejects or accepts)
         fidelity   within gate.max_ratio x its real-vs-real distance (reported as
                    `fidelity_passed` under either rule)
Failed classes contribute no image. The test split is never read.

Writes under `out_dir`:
    manifest.parquet   the synthetic rows that passed (the training stage's input)
    gate.json          extractor, per class: distances, baselines, k-NN precision/recall,
                       verdict, reason, counts and the fraction of generated images kept
    gate.csv           the same per class, one row each (a table for the report)
Real-image features are cached in `.features` beside `out_dir` (shared with the sweep).
"""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import torch

from defectgen import manifest
from defectgen.artifacts import FEATURES_DIR, GATE_CSV, GATE_JSON
from defectgen.config import Params
from defectgen.core import arms, augment, metrics, utility
from defectgen.core import gate as gate_core
from defectgen.io import atomic_dir, atomic_write_json
from defectgen.reference import Reference, pick
from defectgen.stagekit import derive_seed, load_images


class _Proxy:
    """The utility proxy's fixed inputs (core.utility): every class's real train
    features and the gate's half of val, featurised once (cached by defectgen.reference)."""

    def __init__(self, ref: Reference, size: int):
        self.ref, self.size = ref, size
        self.labels = sorted({r["label"] for r in ref.rows})
        self.real_x, self.real_y = self._stack([ref.train(c) for c in self.labels])
        self.val_x, self.val_y = self._stack([ref.val(c, "gate") for c in self.labels])

    def _stack(self, per_class: list[list[dict]]) -> tuple[np.ndarray, np.ndarray]:
        """Features and class indices of every class's rows (classes without rows, e.g.
        an empty val half on a tiny dataset, contribute nothing)."""
        feats, ys = [], []
        for i, rows in enumerate(per_class):
            if rows:
                feats.append(self.ref.real_features(rows, self.size).numpy())
                ys.append(np.full(len(rows), i))
        if not feats:
            return np.zeros((0, 1)), np.zeros(0, dtype=int)
        return np.concatenate(feats), np.concatenate(ys)

    def utility(self, params: Params, label: str, f_syn: torch.Tensor, seed: int) -> dict:
        """Class `label`'s synthetic features against as many classical copies of its real
        train images (drawn in whole passes, core.arms), on the gate's half of val."""
        cfg = params.gate
        rng = np.random.default_rng(derive_seed(params.seed, "gate-classical", label))
        own = self.ref.train(label)
        sources = arms.draw_classical(own, {label: len(f_syn)}, rng)
        images = self.ref.images(sources, self.size)
        copies = [augment.classical_copy(params.classical, px, rng).image for px in images]
        f_classical = self.ref.features(copies)
        return utility.utility(
            self.real_x, self.real_y, f_syn.numpy(), f_classical.numpy(),
            self.labels.index(label), self.val_x, self.val_y,
            seeds=cfg.utility_seeds, components=cfg.proxy_components, seed=seed % 2**32,
        )  # fmt: skip


def run(params: Params, *, preprocessed: Path, generated: Path, out_dir: Path) -> dict[str, float]:
    """Judge every class in the generate stage's output at `generated`.

    Returns:
        Metrics per class: <class>/<fd>, <class>/<fd>_real, _blur, _noise, <class>/<kd>,
        <class>/passed, <class>/near_duplicates, <class>/knn_precision, _recall; totals
        n_kept, n_passed_classes.
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
    proxy = _Proxy(ref, synthetic[0]["width"]) if synthetic else None
    for label in labels:
        syn_rows = [r for r in synthetic if r["label"] == label]
        size = syn_rows[0]["width"]
        train, val = ref.train(label), ref.val(label, "gate")
        seed = derive_seed(params.seed, "gate", label)
        f_syn_all = ref.features(load_images(generated, syn_rows, size))
        # 1. near-copies of anything the generator learned from go first ...
        dup = ref.near_duplicates(label, syn_rows, f_syn_all, size=size, gap=ref.gap(label, size))
        keep = ~dup
        # 2. ... then realism per image: inside the manifold of the class's train images
        f_learned = ref.real_features(train, size)
        precision, recall, inside = gate_core.precision_recall(
            f_learned, f_syn_all[keep], cfg.knn_k
        )
        if cfg.manifold_filter:
            keep[keep.clone()] = inside
        candidates = [r for r, k in zip(syn_rows, keep.tolist(), strict=True) if k]
        n = min(cfg.max_images, len(candidates), len(train))
        entry: dict = {
            "n_synthetic": len(syn_rows), "near_duplicates": int(dup.sum()),
            "knn_precision": precision, "knn_recall": recall, "knn_k": cfg.knn_k,
            "outside_manifold": int((~inside).sum()), "manifold_filter": cfg.manifold_filter,
            "n_candidates": len(candidates), "n_compared": n, "n_reference": 0,
        }  # fmt: skip
        # 3. the verdict is taken on the images that would pass, against the gate's half of val
        if n < 2 or len(val) < 2:
            why = "fewer than 2 train, gate-half val or synthetic images (after dropping "
            entry.update(passed=False, reason=why + "near-duplicates) to compare", n_kept=0)
            report[label] = entry
            metrics_out[f"{label}/passed"] = 0.0
            metrics_out[f"{label}/near_duplicates"] = float(entry["near_duplicates"])
            continue
        ref_rows = pick(val, cfg.max_images, seed)
        train_rows = pick(train, n, seed)
        train_px = ref.images(train_rows, size)
        f_ref = ref.real_features(ref_rows, size)
        f_train = ref.real_features(train_rows, size)
        f_blur = ref.features(gate_core.blurred(train_px, cfg.blur_radius))
        f_noise = ref.features(
            gate_core.noised(train_px, cfg.noise_sigma, np.random.default_rng(seed))
        )
        f_syn = f_syn_all[keep][np.random.default_rng(seed).permutation(len(candidates))[:n]]

        distance = metrics.frechet(f_syn, f_ref)
        baseline = metrics.frechet(f_train, f_ref)
        blur = metrics.frechet(f_blur, f_ref)
        kd_mean, kd_std = metrics.kernel(f_syn, f_ref, subsets=cfg.kid_subsets, seed=seed % 2**31)
        fidelity, fidelity_reason = gate_core.judge(
            distance, baseline, max_ratio=cfg.max_ratio, max_distance=cfg.max_distance
        )
        entry.update(fidelity_passed=fidelity, fidelity_reason=fidelity_reason)
        if cfg.decide_by == "fidelity":
            passed, reason = fidelity, fidelity_reason
        elif distance > blur:
            passed, reason = (
                False,
                (
                    f"distance {distance:.1f} is worse than blurred real images' {blur:.1f} "
                    "(the fidelity floor)"
                ),
            )
        elif len(proxy.val_y) < 2 or len(set(proxy.real_y.tolist())) < 2:
            passed, reason = (
                False,
                (
                    "utility not measurable: fewer than 2 images in the gate's half of val or "
                    "fewer than 2 classes with real train images; kept out"
                ),
            )
        else:
            u = proxy.utility(params, label, f_syn_all[keep], seed)
            entry["utility"] = u
            passed = u["verdict"] == "pass" or (
                u["verdict"] == "inconclusive" and cfg.inconclusive == "accept"
            )
            reason = gate_core.utility_reason(u, accepted=passed)
        entry["verdict"] = (
            entry["utility"]["verdict"] if "utility" in entry else ("pass" if passed else "fail")
        )
        if passed:
            kept.extend(candidates)
        entry.update(
            n_reference=len(ref_rows),
            reference_sha256=hashlib.sha256(
                "\n".join(sorted(r["id"] for r in ref_rows)).encode()
            ).hexdigest(),
            **{fd: distance, f"{fd}_real": baseline, kd: kd_mean, f"{kd}_std": kd_std},
            **{f"{fd}_blur": blur},
            **{f"{fd}_noise": metrics.frechet(f_noise, f_ref)},
            ratio=distance / baseline if baseline > 0 else None,
            passed=passed,
            reason=reason,
            n_kept=len(candidates) if passed else 0,
        )  # fmt: skip
        entry["fraction_kept"] = entry["n_kept"] / len(syn_rows)
        report[label] = entry
        for key in (fd, f"{fd}_real", f"{fd}_blur", f"{fd}_noise", kd, "near_duplicates",
                    "knn_precision", "knn_recall"):  # fmt: skip
            metrics_out[f"{label}/{key}"] = float(entry[key])
        metrics_out[f"{label}/passed"] = float(passed)

    with atomic_dir(out_dir) as tmp:
        manifest.write_manifest(kept, tmp / manifest.MANIFEST_NAME)
        atomic_write_json(
            tmp / GATE_JSON,
            {
                "extractor": extractor.name,
                "note": ref.note,
                "reference": "the gate's half of each class's val images (the sweep chose "
                "its cell on the other half)",
                "classes": report,
            },
        )
        columns = ["label", "passed", "reason", "n_synthetic", "n_compared", "n_reference"]
        columns += [fd, f"{fd}_real", f"{fd}_blur", f"{fd}_noise", kd, "near_duplicates"]
        columns += ["knn_precision", "knn_recall", "n_kept"]
        with (tmp / GATE_CSV).open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            for label, entry in report.items():
                writer.writerow({"label": label, **entry})
    metrics_out["n_kept"] = len(kept)
    metrics_out["n_passed_classes"] = sum(1 for e in report.values() if e["passed"])
    return metrics_out
