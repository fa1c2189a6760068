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
    4. the utility (core.value_proxy): the class's candidates against as many classical
       copies of its real train images, cross-fitted over every real train image
       (gate.utility_folds x gate.utility_repeats), with its interval and the smallest
       effect that evidence resolves; estimated even where a floor decides;
    5. the verdict: core.gate.decide, the rule's one statement; gate.json carries its
       reason per class.
Failed classes contribute no image. The test split is never read.

Writes under `out_dir`:
    manifest.parquet   the synthetic rows that passed (the training stage's input)
    gate.json          extractor, the utility's model, per class: distances, baselines,
                       k-NN precision/recall, utility, verdict, reason, counts and the
                       fraction of generated images kept
    gate.csv           the same per class, one row each (a table for the report)
Real-image features are cached in `.features` beside `out_dir` (shared with the sweep).
"""

from __future__ import annotations

import csv
import hashlib
import time
from pathlib import Path

import numpy as np
import torch

from defectgen import manifest
from defectgen.artifacts import FEATURES_DIR, GATE_CSV, GATE_JSON
from defectgen.atomic import atomic_dir, atomic_write_json
from defectgen.config import Params
from defectgen.core import augment, metrics, value_proxy
from defectgen.core import gate as gate_core
from defectgen.progress import Units
from defectgen.real_images import load_images
from defectgen.reference import Reference, pick
from defectgen.seeds import derive_seed


class _Proxy:
    """The utility estimate's fixed inputs (core.value_proxy): every class's real train
    features (the images generation learned from), featurised once (cached by
    defectgen.reference), and the row index of each train id."""

    def __init__(self, ref: Reference, size: int):
        self.ref, self.size = ref, size
        self.labels = sorted({r["label"] for r in ref.rows})
        rows = [r for c in self.labels for r in ref.train(c)]
        self.index = {r["id"]: i for i, r in enumerate(rows)}
        self.real_y = np.array([self.labels.index(r["label"]) for r in rows], dtype=int)
        self.real_x = ref.real_features(rows, size).numpy() if rows else np.zeros((0, 1))

    def missing(self, params: Params) -> str | None:
        """Why no estimate can be made here, or None."""
        if len(set(self.real_y.tolist())) < 2:
            return "fewer than 2 classes with real train images"
        if not value_proxy.folds_for(self.real_y, params.gate.utility_folds):
            return "a class has fewer than 2 real train images to cross-fit"
        return None

    def utility(self, params: Params, label: str, rows: list[dict], f_syn: torch.Tensor) -> dict:
        """Class `label`'s synthetic images (`rows`, features `f_syn`) against classical
        copies of its real train images, cross-fitted over every real train image."""
        cfg = params.gate
        rng = np.random.default_rng(derive_seed(params.seed, "gate-classical", label))
        own = self.ref.train(label)
        copies_each = value_proxy.pool_size(len(rows), len(own), cfg.utility_folds)
        images = self.ref.images(own, self.size)
        copies = [augment.classical_copy(params.classical, px, rng).image
                  for px in images for _ in range(copies_each)]  # fmt: skip
        sources = np.repeat([self.index[r["id"]] for r in own], copies_each)
        parents = np.array([self.index.get(r.get("parent_id") or "", value_proxy.NO_PARENT)
                            for r in rows], dtype=int)  # fmt: skip
        return value_proxy.crossfit(
            self.real_x, self.real_y, f_syn.numpy(), parents,
            self.ref.features(copies).numpy(), sources, self.labels.index(label),
            folds=cfg.utility_folds, repeats=cfg.utility_repeats,
            components=cfg.proxy_components,
            seed=derive_seed(params.seed, "gate-utility", label) % 2**32,
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
    units = Units("gate", "class", len(labels))
    for label in labels:
        started = time.perf_counter()
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
        # 3. distances, taken on the images that would pass, against the gate's half of val
        measured: dict = {}
        ref_rows: list[dict] = []
        if n >= 2 and len(val) >= 2:
            ref_rows = pick(val, cfg.max_images, seed)
            train_rows = pick(train, n, seed)
            train_px = ref.images(train_rows, size)
            f_ref = ref.real_features(ref_rows, size)
            rng = np.random.default_rng(seed)
            f_syn = f_syn_all[keep][rng.permutation(len(candidates))[:n]]
            kd_mean, kd_std = metrics.kernel(
                f_syn, f_ref, subsets=cfg.kid_subsets, seed=seed % 2**31
            )
            noisy = gate_core.noised(train_px, cfg.noise_sigma, np.random.default_rng(seed))
            measured = {
                fd: metrics.frechet(f_syn, f_ref),
                f"{fd}_real": metrics.frechet(ref.real_features(train_rows, size), f_ref),
                f"{fd}_blur": metrics.frechet(
                    ref.features(gate_core.blurred(train_px, cfg.blur_radius)), f_ref
                ),
                f"{fd}_noise": metrics.frechet(ref.features(noisy), f_ref),
                kd: kd_mean,
                f"{kd}_std": kd_std,
            }
        # 4. the utility, cross-fitted on train (reported even where a floor decides)
        missing = proxy.missing(params) if candidates else "no synthetic image left"
        if missing is None:
            entry["utility"] = proxy.utility(params, label, candidates, f_syn_all[keep])
        decision = gate_core.decide(
            gate_core.Evidence(
                n_compared=n, n_reference=len(ref_rows), distance=measured.get(fd),
                baseline=measured.get(f"{fd}_real"), blur=measured.get(f"{fd}_blur"),
                utility=entry.get("utility"), missing=missing,
            ),
            cfg,
        )  # fmt: skip
        passed = decision.passed
        if passed:
            kept.extend(candidates)
        base = measured.get(f"{fd}_real")
        entry.update(
            **measured,
            n_reference=len(ref_rows),
            reference_sha256=hashlib.sha256(
                "\n".join(sorted(r["id"] for r in ref_rows)).encode()
            ).hexdigest(),
            ratio=measured[fd] / base if base else None,
            fidelity_passed=decision.fidelity_passed,
            fidelity_reason=decision.fidelity_reason,
            passed=passed,
            verdict=decision.verdict,
            utility_verdict=decision.utility_verdict,
            reason=decision.reason,
            n_kept=len(candidates) if passed else 0,
        )  # fmt: skip
        entry["fraction_kept"] = entry["n_kept"] / len(syn_rows)
        report[label] = entry
        units.tick(f"{label}: {decision.verdict}", time.perf_counter() - started)
        for key in (*measured, "near_duplicates", "knn_precision", "knn_recall"):
            if not key.endswith("_std"):
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
                "utility_model": value_proxy.describe(cfg),
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
