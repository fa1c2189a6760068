"""Train: defect classifiers on real vs real+synthetic data (StableSDG III-D, IV-C).

Conditions (train.conditions), each per model in train.models and seed in train.seeds:
    real             the few-shot subset: the real images the generator learned from
    real+synthetic   the subset plus the gate-passed synthetic images (expansion)
    real+ungated     the subset plus every generated image, ignoring the gate: does the
                     gate's verdict predict whether synthetic images help or hurt?
    substitution     the subset plus synthetic images standing in for the train images
                     outside it (Fig. 9): per class min(#train - #subset, #gate-passed)
    real+classical   the subset plus as many classically augmented subset images per
                     class as real+synthetic adds: does generation beat augmentation?
A condition that would add no image (e.g. the gate passed none) is skipped with the
reason: it would only repeat `real`. Every condition is scored on the same frozen real
test split; the val split picks the epoch. Synthetic images enter training only: their
rows are split train and their parents are train images (checked here again).

Writes under `out_dir`:
    eval.json        per model and condition: mean and std over seeds of accuracy,
                     macro-F1 and per-class recall, delta vs real, train counts; skips
    runs.parquet     one row per (model, condition, seed): numbers, best epoch, counts,
                     the training ids and their sha256
    comparison.csv   model, condition, accuracy and macro-F1 means (the DVC plot)
    confusion.json   per model and condition: test confusion matrix summed over seeds
    curves/<model>.<condition>.<seed>.csv   training loss per epoch ('+' written '_')
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from defectgen import manifest
from defectgen.config import Params, metric_name
from defectgen.core import classify
from defectgen.core.device import runtime
from defectgen.errors import DataError
from defectgen.io import Resume, atomic_dir, atomic_write_json, file_digest, write_file
from defectgen.stages.diffusion_common import CURVES_DIR, Curves, derive_seed, load_images

REPORT_NAME = "eval.json"
RUNS_NAME = "runs.parquet"
PLOT_NAME = "comparison.csv"
CONFUSION_NAME = "confusion.json"


class _Data:
    """Real rows by split and synthetic rows (gated / all generated), with pixels."""

    def __init__(self, params: Params, preprocessed: Path, generated: Path, gated: Path):
        self.params = params
        self.folders = {"real": Path(preprocessed), "synthetic": Path(generated)}
        rows = manifest.read_rows(preprocessed)
        self.labels = sorted({r["label"] for r in rows})
        self.split = {s: [r for r in rows if r["split"] == s] for s in ("train", "val", "test")}
        self.subset = [r for r in self.split["train"] if r["in_subset"]]
        self.gated = manifest.read_rows(gated)
        self.generated = manifest.read_rows(generated)
        held_out = {r["id"] for r in self.split["val"] + self.split["test"]}
        for row in self.generated:
            if row["split"] != "train" or row["parent_id"] in held_out:
                raise DataError(
                    f"{generated}: synthetic image {row['path']} is split {row['split']!r} "
                    f"with parent {row['parent_id']}; synthetic images may only derive from "
                    "train images and enter training: re-run generate"
                )
        self.size = params.train.image_size or rows[0]["width"]
        self._pixels: dict[str, np.ndarray] = {}

    def pixels(self, rows: list[dict]) -> list[np.ndarray]:
        missing = [r for r in rows if r["id"] not in self._pixels]
        for kind in ("real", "synthetic"):
            part = [r for r in missing if (r["origin"] == "real") == (kind == "real")]
            for r, px in zip(part, load_images(self.folders[kind], part, self.size), strict=True):
                self._pixels[r["id"]] = px
        return [self._pixels[r["id"]] for r in rows]

    def condition(self, name: str, seed: int) -> tuple[list[dict], list[np.ndarray], str | None]:
        """(training rows, extra classical images, reason to skip or None) for a condition.

        Classical images have no manifest rows: they are returned as pixels with
        rows naming their source image.
        """
        base = list(self.subset)
        if name == "real":
            return base, [], None
        by_label = {c: [r for r in self.gated if r["label"] == c] for c in self.labels}
        if name == "real+synthetic":
            added = self.gated
            return base + added, [], None if added else "the gate passed no synthetic image"
        if name == "real+ungated":
            added = self.generated
            return base + added, [], None if added else "no generated images"
        if name == "substitution":
            added = []
            for c in self.labels:
                removed = sum(1 for r in self.split["train"] if r["label"] == c) - sum(
                    1 for r in self.subset if r["label"] == c
                )
                added += by_label[c][:removed]
            return base + added, [], None if added else "the gate passed no synthetic image"
        if name == "real+classical":
            rng = np.random.default_rng(derive_seed(self.params.seed, "classical", seed))
            rows, extra = [], []
            for c in self.labels:
                own = [r for r in self.subset if r["label"] == c]
                picks = rng.integers(0, len(own), len(by_label[c]))
                for i in picks:
                    rows.append({**own[i], "origin": "classical"})
                    extra.append(classify.classical_augment(self.pixels([own[i]])[0], rng))
            reason = None if rows else "real+synthetic adds no image to match"
            return base + rows, extra, reason
        raise ValueError(name)


def _tensors(data: _Data, rows: list[dict], extra: list[np.ndarray]) -> tuple:
    plain = [r for r in rows if r["origin"] != "classical"]
    images = data.pixels(plain) + extra
    labels = [data.labels.index(r["label"]) for r in plain]
    labels += [data.labels.index(r["label"]) for r in rows if r["origin"] == "classical"]
    return classify.to_batch(images), torch.tensor(labels)


def _train_one(params: Params, data: _Data, model_name: str, condition: str, seed: int) -> dict:
    """Train and score one (model, condition, seed); returns its record (JSON-able)."""
    cfg = params.train
    rt = runtime(params.model)
    rows, extra, _ = data.condition(condition, seed)
    ids = sorted(r["id"] for r in rows if r["origin"] != "classical")
    held_out = {r["id"] for r in data.split["val"] + data.split["test"]}
    leaked = set(ids) & held_out
    if leaked:  # cannot happen by construction; the invariant that matters most
        raise DataError(f"val/test images in the training set of {condition}: {sorted(leaked)[:3]}")
    train = _tensors(data, rows, extra)
    val = _tensors(data, data.split["val"], [])
    test_x, test_y = _tensors(data, data.split["test"], [])
    with torch.random.fork_rng():
        torch.manual_seed(derive_seed(params.seed, "init", model_name, seed) % 2**63)
        model = classify.build(model_name, len(data.labels))
    fit = classify.fit(
        model,
        train,
        val,
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        augment=classify.protocol_augment(cfg.rotation, cfg.flips),
        # the same init, shuffling and augmentation in every condition (common random
        # numbers): a delta vs real reflects the training images, not the draw
        seed=derive_seed(params.seed, "fit", model_name, seed) % 2**63,
        rt=rt,
    )
    preds = classify.predict(fit.model, test_x, rt)
    scores = classify.evaluate(test_y.tolist(), preds, data.labels)
    counts = {c: int((train[1] == i).sum()) for i, c in enumerate(data.labels)}
    return {
        "model": model_name,
        "condition": condition,
        "seed": seed,
        "accuracy": scores.accuracy,
        "macro_f1": scores.macro_f1,
        "recall": scores.recall,
        "confusion": scores.confusion,
        "best_epoch": fit.best_epoch,
        "val_accuracy": fit.val_accuracy,
        "train_loss": fit.losses,
        "n_train": counts,
        "n_real": sum(1 for r in rows if r["origin"] == "real"),
        "n_synthetic": sum(1 for r in rows if r["origin"] == "synthetic"),
        "n_classical": len(extra),
        "train_ids_sha256": hashlib.sha256("\n".join(ids).encode()).hexdigest(),
        "train_ids": ids,  # real and synthetic manifest ids (classical copies have none)
    }


def _summarise(records: list[dict], labels: list[str]) -> tuple[dict, dict]:
    """eval.json's per (model, condition) means/stds and deltas, and summed confusions."""
    summary: dict[str, dict] = {}
    confusion: dict[str, dict] = {}
    for model in sorted({r["model"] for r in records}):
        summary[model], confusion[model] = {}, {}
        mine = [r for r in records if r["model"] == model]
        for condition in dict.fromkeys(r["condition"] for r in mine):
            runs = [r for r in mine if r["condition"] == condition]
            acc = np.array([r["accuracy"] for r in runs])
            f1 = np.array([r["macro_f1"] for r in runs])
            summary[model][condition] = {
                "accuracy_mean": float(acc.mean()),
                "accuracy_std": float(acc.std(ddof=1)) if len(runs) > 1 else 0.0,
                "macro_f1_mean": float(f1.mean()),
                "macro_f1_std": float(f1.std(ddof=1)) if len(runs) > 1 else 0.0,
                "recall_mean": {c: float(np.mean([r["recall"][c] for r in runs])) for c in labels},
                "n_seeds": len(runs),
                "n_train": runs[0]["n_train"],
                "n_synthetic": runs[0]["n_synthetic"],
                "n_classical": runs[0]["n_classical"],
            }
            confusion[model][condition] = np.sum([r["confusion"] for r in runs], axis=0).tolist()
        if "real" in summary[model]:
            base = summary[model]["real"]
            for entry in summary[model].values():
                entry["accuracy_delta"] = entry["accuracy_mean"] - base["accuracy_mean"]
                entry["macro_f1_delta"] = entry["macro_f1_mean"] - base["macro_f1_mean"]
    return summary, confusion


def run(
    params: Params, *, preprocessed: Path, generated: Path, gated: Path, out_dir: Path
) -> dict[str, float]:
    """Train every (model, condition, seed) and score it on the real test split.

    Returns:
        Metrics <model>/<condition>/accuracy_mean, _std, macro_f1_mean, _std,
        accuracy_delta (vs real), with '+' in condition names written '_'
        (+ time/... for MLflow only).
    """
    cfg = params.train
    preprocessed, generated, gated = Path(preprocessed), Path(generated), Path(gated)
    data = _Data(params, preprocessed, generated, gated)
    if not data.split["test"] or not data.split["val"]:
        raise DataError(
            f"{preprocessed}: the classifier needs val and test images; raise "
            "preprocess.split.val / test"
        )
    key = file_digest(*(p / manifest.MANIFEST_NAME for p in (preprocessed, generated, gated)))
    resume = Resume(out_dir, key[:16] + params.section_hash("seed", "train"))
    records: list[dict] = []
    skipped: dict[str, str] = {}
    metrics_out: dict[str, float] = {}
    for condition in cfg.conditions:
        _, _, reason = data.condition(condition, cfg.seeds[0])
        if reason:
            skipped[condition] = reason
            continue
        for model_name in cfg.models:
            for seed in cfg.seeds:
                unit_name = f"{model_name}.{condition}.{seed}"
                done = resume.done(unit_name)
                if done is None:
                    started = time.perf_counter()
                    record = _train_one(params, data, model_name, condition, seed)
                    with resume.unit(unit_name) as unit:
                        atomic_write_json(unit / "record.json", record)
                    elapsed = time.perf_counter() - started
                    metrics_out[f"time/{model_name}/{metric_name(condition)}/{seed}_s"] = elapsed
                    done = resume.done(unit_name)
                records.append(json.loads((done / "record.json").read_text(encoding="utf-8")))
    summary, confusion = _summarise(records, data.labels)
    with atomic_dir(out_dir) as tmp:
        atomic_write_json(
            tmp / REPORT_NAME,
            {
                "labels": data.labels,
                "test_images": len(data.split["test"]),
                "models": summary,
                "skipped": skipped,
            },
        )
        atomic_write_json(tmp / CONFUSION_NAME, confusion)
        table = pd.DataFrame(
            [
                {k: v for k, v in r.items() if k not in ("confusion", "val_accuracy", "train_loss")}
                | {"recall": json.dumps(r["recall"]), "n_train": json.dumps(r["n_train"])}
                for r in records
            ]
        )
        table.to_parquet(tmp / RUNS_NAME, index=False)
        plot = [
            {
                "run": f"{m} {c}",
                "model": m,
                "condition": c,
                "accuracy": e["accuracy_mean"],
                "macro_f1": e["macro_f1_mean"],
            }
            for m, conditions in summary.items()
            for c, e in conditions.items()
        ]
        write_file(tmp / PLOT_NAME, pd.DataFrame(plot).to_csv(index=False).encode())
        curves = Curves()
        for r in records:
            log = curves.logger(f"{r['model']}.{metric_name(r['condition'])}.{r['seed']}")
            for epoch, loss in enumerate(r["train_loss"]):
                log(epoch, loss)
        curves.write(tmp / CURVES_DIR)
    resume.finish()
    for model, conditions in summary.items():
        for condition, entry in conditions.items():
            name = f"{model}/{metric_name(condition)}"
            for key in ("accuracy_mean", "accuracy_std", "macro_f1_mean", "macro_f1_std"):
                metrics_out[f"{name}/{key}"] = entry[key]
            if "accuracy_delta" in entry:
                metrics_out[f"{name}/accuracy_delta"] = entry["accuracy_delta"]
    metrics_out["n_runs"] = float(len(records))
    return metrics_out
