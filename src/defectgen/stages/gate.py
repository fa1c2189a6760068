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
         real        train images vs reference: the real-vs-real baseline
         blur/noise  blurred / noised train images vs reference: obvious damage
         synthetic   the remaining synthetic images vs reference
Distances come from defectgen.reference (Inception FID when its weights are available,
else the offline EfficientNet-Lite0 distance; gate.json says which).
    4. the fidelity floors (core.gate.floors): a distance beyond gate.max_ratio x
       real-vs-real, or worse than blurred or noised real images, fails;
    5. no harm on val (core.no_harm): for every class past the floors, real + its
       candidates against real + as many classical copies of its train images, scored
       on the gate's half of val over gate.seeds paired seeds; and once pooled, with every
       such class's candidates added at once (the dataset-level answer a class gets when
       its own check is inconclusive);
    6. the verdict: core.gate.decide, the rule's one statement; gate.json carries its
       verdict, the rule that decided, the reason and what would change it per class.
Failed classes contribute no image. The test split is never read.

Writes under `out_dir`:
    manifest.parquet   the synthetic rows that passed (the training stage's input)
    gate.json          extractor, the no-harm judge, the pooled check, per class:
                       distances, baselines, k-NN precision/recall, the class's no-harm
                       check, verdict, rule, reason, change, superior, counts and the
                       fraction of generated images kept; `tags` (the gate's MLflow run)
    gate.csv           the same per class, one row each (a table for the report)
Real-image features are cached in `.features` beside `out_dir` (shared with the sweep).
"""

from __future__ import annotations

import csv
import hashlib
import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from defectgen import manifest
from defectgen.artifacts import FEATURES_DIR, GATE_CSV, GATE_JSON
from defectgen.atomic import atomic_dir, atomic_write_json
from defectgen.config import Params
from defectgen.core import augment, classify, distances, neighbours, no_harm
from defectgen.core import gate as gate_core
from defectgen.progress import Units
from defectgen.real_images import load_images
from defectgen.reference import Reference, pick
from defectgen.seeds import derive_seed


class _Judge:
    """The no-harm check's fixed inputs (core.no_harm): every class's real train
    features (the images generation learned from) and the gate's half of every class's
    val images, featurised once (cached by defectgen.reference)."""

    def __init__(self, params: Params, ref: Reference, size: int):
        self.params, self.ref, self.size = params, ref, size
        self.labels = sorted({r["label"] for r in ref.rows})
        train = [r for c in self.labels for r in ref.train(c)]
        val = [r for c in self.labels for r in ref.val(c, "gate")]
        self.real_y = np.array([self.labels.index(r["label"]) for r in train], dtype=int)
        self.val_y = np.array([self.labels.index(r["label"]) for r in val], dtype=int)
        self.real_x = ref.real_features(train, size).numpy() if train else np.zeros((0, 1))
        self.val_x = ref.real_features(val, size).numpy() if val else np.zeros((0, 1))
        self.metric = classify.primary_metric(
            params.train.primary, self.val_y.tolist(), len(self.labels)
        )

    def missing(self) -> str | None:
        """Why no check can run here, or None."""
        if len(set(self.real_y.tolist())) < 2:
            return "fewer than 2 classes with real train images"
        if len(set(self.val_y.tolist())) < 2:
            return "fewer than 2 classes with val images in the gate's half"
        return None

    def added(self, label: str, f_syn: torch.Tensor) -> no_harm.Added:
        """Class `label`'s synthetic features and a pool of classical copies of its train
        images twice their count (each seed draws its copies from it)."""
        rng = np.random.default_rng(derive_seed(self.params.seed, "gate-classical", label))
        own = self.ref.images(self.ref.train(label), self.size)
        each = math.ceil(2 * len(f_syn) / max(1, len(own)))
        copies = [
            augment.classical_copy(self.params.classical, px, rng).image
            for px in own
            for _ in range(each)
        ]
        return no_harm.Added(f_syn.numpy(), self.ref.features(copies).numpy())

    def check(self, added: dict[str, no_harm.Added], key: str) -> dict:
        cfg = self.params.gate
        return no_harm.check(
            self.real_x,
            self.real_y,
            self.val_x,
            self.val_y,
            {self.labels.index(c): a for c, a in added.items()},
            metric=self.metric,
            n_classes=len(self.labels),
            seeds=cfg.seeds,
            components=cfg.judge_components,
            seed=derive_seed(self.params.seed, "gate-judge", key),
        )


def run(params: Params, *, preprocessed: Path, generated: Path, out_dir: Path) -> dict[str, float]:
    """Judge every class in the generate stage's output at `generated`.

    Returns:
        Metrics per class: <class>/<fd>, <class>/<fd>_real, _blur, _noise, <class>/<kd>,
        <class>/passed, <class>/near_duplicates, <class>/knn_precision, _recall,
        <class>/no_harm_delta, _lower, _upper (synthetic - classical on val, primary
        metric); pooled/no_harm_delta, _lower, _upper; totals n_kept, n_passed_classes.
    """
    cfg = params.gate
    preprocessed, generated, out_dir = Path(preprocessed), Path(generated), Path(out_dir)
    ref = Reference(params, preprocessed, out_dir.parent / FEATURES_DIR)
    extractor = ref.extractor
    fd, kd = extractor.fd_name, extractor.kd_name
    synthetic = manifest.read_rows(generated)
    labels = sorted({r["label"] for r in synthetic})

    report: dict[str, dict] = {}
    evidence: dict[str, gate_core.Evidence] = {}
    candidates: dict[str, list[dict]] = {}
    added: dict[str, no_harm.Added] = {}
    metrics_out: dict[str, float] = {}
    judge = _Judge(params, ref, synthetic[0]["width"]) if synthetic else None
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
        precision, recall, inside = neighbours.precision_recall(
            f_learned, f_syn_all[keep], cfg.knn_k
        )
        if cfg.manifold_filter:
            keep[keep.clone()] = inside
        candidates[label] = [r for r, k in zip(syn_rows, keep.tolist(), strict=True) if k]
        n = min(cfg.max_images, len(candidates[label]), len(train))
        entry: dict = {
            "n_synthetic": len(syn_rows),
            "near_duplicates": int(dup.sum()),
            "knn_precision": precision,
            "knn_recall": recall,
            "knn_k": cfg.knn_k,
            "outside_manifold": int((~inside).sum()),
            "manifold_filter": cfg.manifold_filter,
            "n_candidates": len(candidates[label]),
            "n_compared": n,
        }
        # 3. distances, taken on the images that would pass, against the gate's half of val
        measured: dict = {}
        ref_rows: list[dict] = []
        if n >= 2 and len(val) >= 2:
            ref_rows = pick(val, cfg.max_images, seed)
            train_rows = pick(train, n, seed)
            train_px = ref.images(train_rows, size)
            f_ref = ref.real_features(ref_rows, size)
            rng = np.random.default_rng(seed)
            f_syn = f_syn_all[keep][rng.permutation(len(candidates[label]))[:n]]
            kd_mean, kd_std = distances.kernel(
                f_syn, f_ref, subsets=cfg.kid_subsets, seed=seed % 2**31
            )
            noisy = gate_core.noised(train_px, cfg.noise_sigma, np.random.default_rng(seed))
            measured = {
                fd: distances.frechet(f_syn, f_ref),
                f"{fd}_real": distances.frechet(ref.real_features(train_rows, size), f_ref),
                f"{fd}_blur": distances.frechet(
                    ref.features(gate_core.blurred(train_px, cfg.blur_radius)), f_ref
                ),
                f"{fd}_noise": distances.frechet(ref.features(noisy), f_ref),
                kd: kd_mean,
                f"{kd}_std": kd_std,
            }
        evidence[label] = gate_core.Evidence(
            n_compared=n,
            n_reference=len(ref_rows),
            distance=measured.get(fd),
            baseline=measured.get(f"{fd}_real"),
            blur=measured.get(f"{fd}_blur"),
            noise=measured.get(f"{fd}_noise"),
        )
        # 4. the floors; 5. what the no-harm check adds for a class past them
        if gate_core.floors(evidence[label], cfg)[0] and cfg.decide_by == "no_harm":
            added[label] = judge.added(label, f_syn_all[keep])
        base = measured.get(f"{fd}_real")
        entry.update(
            **measured,
            n_reference=len(ref_rows),
            reference_sha256=hashlib.sha256(
                "\n".join(sorted(r["id"] for r in ref_rows)).encode()
            ).hexdigest(),
            ratio=measured[fd] / base if base else None,
        )
        report[label] = entry
        units.tick(f"{label}: measured", time.perf_counter() - started)
        for key in (*measured, "near_duplicates", "knn_precision", "knn_recall"):
            if not key.endswith("_std"):
                metrics_out[f"{label}/{key}"] = float(entry[key])

    # 5. no harm on val: pooled over every class past the floors, then each on its own
    missing = judge.missing() if judge is not None else "no synthetic image"
    owns = {c: judge.check({c: a}, c) for c, a in added.items()} if missing is None else {}
    pooled = None
    if len(owns) > 1:
        pooled = judge.check(added, "pooled")
    elif owns:  # one class past the floors: pooling it is its own check, not run twice
        pooled = next(iter(owns.values()))
    kept: list[dict] = []
    for label in labels:
        own = owns.get(label)
        decision = gate_core.decide(
            replace(evidence[label], own=own, pooled=pooled, missing=missing), cfg
        )
        if decision.passed:
            kept.extend(candidates[label])
        report[label].update(
            no_harm=own,
            fidelity_passed=decision.fidelity_passed,
            fidelity_reason=decision.fidelity_reason,
            passed=decision.passed,
            verdict=decision.verdict,
            rule=decision.rule,
            reason=decision.reason,
            change=decision.change,
            superior=decision.superior,
            n_kept=len(candidates[label]) if decision.passed else 0,
        )
        report[label]["fraction_kept"] = report[label]["n_kept"] / report[label]["n_synthetic"]
        metrics_out[f"{label}/passed"] = float(decision.passed)
        metrics_out.update(_check_metrics(f"{label}/", own))
    metrics_out.update(_check_metrics("pooled/", pooled))

    tags = {f"defectgen.verdict.{c}": e["verdict"] for c, e in report.items()}
    tags.update({f"defectgen.rule.{c}": e["rule"] for c, e in report.items()})
    with atomic_dir(out_dir) as tmp:
        manifest.write_manifest(kept, tmp / manifest.MANIFEST_NAME)
        atomic_write_json(
            tmp / GATE_JSON,
            {
                "extractor": extractor.name,
                "note": ref.note,
                "reference": "the gate's half of each class's val images (the sweep chose "
                "its cell on the other half)",
                "judge": no_harm.judge_words(cfg, judge.metric) if judge else None,
                "margin": cfg.margin,
                "pooled": pooled,
                "classes": report,
                "tags": tags,
            },
        )
        columns = ["label", "verdict", "rule", "reason", "change", "n_synthetic", "n_compared"]
        columns += ["n_reference", fd, f"{fd}_real", f"{fd}_blur", f"{fd}_noise", kd]
        columns += ["near_duplicates", "knn_precision", "knn_recall", "n_kept"]
        with (tmp / GATE_CSV).open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            for label, entry in report.items():
                writer.writerow({"label": label, **entry})
    metrics_out["n_kept"] = len(kept)
    metrics_out["n_passed_classes"] = sum(1 for e in report.values() if e["passed"])
    return metrics_out


def _check_metrics(prefix: str, result: dict | None) -> dict[str, float]:
    """A no-harm check's difference and interval as MLflow metrics (synthetic - classical
    on val, in the primary metric's units)."""
    if result is None:
        return {}
    out = {f"{prefix}no_harm_delta": result["delta"]}
    if result["ci"] is not None:
        out[f"{prefix}no_harm_lower"], out[f"{prefix}no_harm_upper"] = result["ci"]
    return out
