"""Train: defect classifiers on real vs real+synthetic data, against matched controls.

StableSDG III-D / IV-C's protocol (core.classify), under equal budgets: every model,
condition and seed trains for the same `train.steps` optimizer steps, seeds are paired
across conditions (the same initialisation, batch order and augmentation draws), and
every synthetic arm has controls that add as many images per class (core.arms):

    real                     the few-shot subset: the real images the generator learned from
    real+synthetic           + the gate-passed synthetic images
    real+ungated             + every generated image, ignoring the gate
    substitution             the train images outside the subset replaced by gate-passed
                             synthetic ones (Fig. 9): per class min(#outside, #passed)
    real+classical[-ungated] + as many classically augmented subset images per class as
                             real+synthetic [real+ungated] adds (core.augment's recipe)
    real+oracle[-ungated]    + as many real train images from outside the subset (what a
                             perfect generator would add; train.oracle)
    all-train                the whole train split (train.oracle)
    majority                 no training: the constant predictor, the train split's most
                             frequent class
`train.conditions` lists the synthetic arms; the controls always run with them. A
condition that would add no image (e.g. the gate passed none) is skipped with the
reason. Every condition is scored on the same frozen real test split; val picks the
checkpoint by the primary metric (train.primary: accuracy on a balanced test split,
balanced accuracy otherwise). Synthetic images enter training only: their rows are
split train and their parents are train images (checked here again).

End-to-end models train `train.workers` runs at a time in one-thread worker processes;
a probe (effnet_lite2_probe, the default judge, or effnet_lite0_probe) trains in the
stage's process, where its frozen trunk's features of each image (train images with
`train.views` augmented views) are made once and reused by every condition and seed.

Before any verdict, core.validity checks that the comparison can see the value of data
(the class-matched oracle, else all-train, beats real; no condition budget-bound; no arm
degenerate); when it cannot,
eval.json's `validity.statement` says so, the headline gives no verdict and every
comparison's verdict reads "no verdict". Per model and metric, the synthetic arms'
comparisons are one family: their p-values are Holm-adjusted together and their
verdicts read the adjusted ones (the controls' own rows keep their intervals).

Writes under `out_dir`:
    eval.json        the protocol; per model and condition mean and sample std over seeds
                     of accuracy, balanced accuracy, macro-F1 and per-class recall,
                     counts, best steps and whether it is budget-bound; per model the
                     validity record, the paired comparisons (delta, 95 % interval over
                     seeds and test images, p,
                     Holm-adjusted p) and the fraction of the oracle's gain over real
                     each arm captures; per additive arm and class the
                     paired test-F1 difference against its classical arm (the outcome
                     the gate's per-class verdict predicts) and against real (the
                     report's per-class answer); the headline; skips
    runs.parquet     one row per (model, condition, seed): numbers, best step, counts,
                     the training ids and their sha256
    test_predictions.parquet  one row per (model, condition, seed, test image): its true
                     and predicted class, from which every number above recomputes
    comparison.csv   model, condition, accuracy and macro-F1 means (the DVC plot)
    confusion.json   per model and condition: test confusion matrix summed over seeds
    curves/<model>.<condition>.<seed>.csv   mean training loss between val checks and
                     the val score at each check
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from defectgen import manifest
from defectgen.artifacts import (
    COMPARISON_CSV,
    CONFUSION_JSON,
    CURVES_DIR,
    EVAL_JSON,
    RECORD_JSON,
    RUNS_PARQUET,
    TEST_PREDICTIONS_PARQUET,
)
from defectgen.atomic import atomic_dir, atomic_write_json, write_file
from defectgen.config import Params
from defectgen.core import arms, augment, classify, harness, stats, validity
from defectgen.core.device import runtime
from defectgen.curves import Curves
from defectgen.errors import DataError
from defectgen.metric_keys import comparison_metrics, metric_name
from defectgen.progress import Units
from defectgen.real_images import load_images
from defectgen.resume import Resume, file_digest
from defectgen.seeds import derive_seed

METRICS = stats.CLASSIFIER_METRICS
# the unit record's format, part of the resume key: records written before it stored
# per-image test predictions are retrained, not read
RECORD_FORMAT = "p2"


class _Data:
    """Real rows by split and synthetic rows (gated / all generated), with pixels."""

    def __init__(self, params: Params, preprocessed: Path, generated: Path, gated: Path):
        self.params = params
        self.folders = {"real": Path(preprocessed), "synthetic": Path(generated)}
        rows = manifest.read_rows(preprocessed)
        self.labels = sorted({r["label"] for r in rows})
        self.split = {s: [r for r in rows if r["split"] == s] for s in ("train", "val", "test")}
        self.subset = [r for r in self.split["train"] if r["in_subset"]]
        self.outside = [r for r in self.split["train"] if not r["in_subset"]]
        self.plan = arms.plan(params.train.conditions, oracle=params.train.oracle)
        self.matched = {k: v for k, v in self.plan.items() if v is not None}
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
        added = {arms.GATED: self.gated, arms.UNGATED: self.generated}
        self.pool = harness.Pool(self.plan, self.subset, self.outside, added)
        self.size = params.train.image_size or rows[0]["width"]
        test_labels = [self.labels.index(r["label"]) for r in self.split["test"]]
        self.primary = classify.primary_metric(params.train.primary, test_labels, len(self.labels))
        # how close to its best a val curve's last check counts as a tie (budget-bound)
        self.tolerance = validity.val_tolerance(len(self.split["val"]))
        self._pixels: dict[str, np.ndarray] = {}
        # the probes' inputs, by (trunk network, manifest id), and their trunks
        self._features: dict[tuple[str, str], torch.Tensor] = {}
        self._trunks: dict[str, classify.FrozenTrunk] = {}

    def __getstate__(self) -> dict:  # worker processes train end-to-end models only
        return {**self.__dict__, "_features": {}, "_trunks": {}}

    def features(self, rows: list[dict], *, views: int, network: str) -> torch.Tensor:
        """A probe's inputs for manifest rows, on `network`'s frozen trunk: (N, views, D)
        for views > 1 (each image and its augmented copies, drawn under a seed of its
        id), (N, D) for views = 1; computed once per image and kept for every condition
        and seed."""
        missing = [r for r in rows if (network, r["id"]) not in self._features]
        if missing:
            x = classify.to_batch(self.pixels(missing))
            seeds = [derive_seed(self.params.seed, "views", r["id"]) % 2**63 for r in missing]
            for r, f in zip(missing, self.trunk_views(x, views, seeds, network), strict=True):
                self._features[network, r["id"]] = f
        if not rows:
            return torch.zeros(0, *([views] if views > 1 else []), classify.TRUNK_FEATURES)
        return torch.stack([self._features[network, r["id"]] for r in rows])

    def trunk_views(
        self, x: torch.Tensor, views: int, seeds: list[int], network: str
    ) -> torch.Tensor:
        if network not in self._trunks:
            self._trunks[network] = classify.FrozenTrunk(
                runtime(self.params.model), network=network
            )
        cfg = self.params.train
        augment = classify.protocol_augment(cfg.rotation, cfg.flips)
        return self._trunks[network].views(x, augment, views, seeds)

    def pixels(self, rows: list[dict]) -> list[np.ndarray]:
        missing = [r for r in rows if r["id"] not in self._pixels]
        for kind in ("real", "synthetic"):
            part = [r for r in missing if (r["origin"] == "real") == (kind == "real")]
            for r, px in zip(part, load_images(self.folders[kind], part, self.size), strict=True):
                self._pixels[r["id"]] = px
        return [self._pixels[r["id"]] for r in rows]

    def condition(self, name: str, seed: int) -> tuple[list[dict], list[np.ndarray]]:
        """(training rows, extra classical images) for a condition and seed (the
        harness's draw). Classical images have no manifest rows: they are returned as
        pixels, with rows (origin "classical") naming their source image."""
        rng = np.random.default_rng(derive_seed(self.params.seed, name, seed))
        drawn = self.pool.draw(name, rng)
        cfg = self.params.classical
        extra = [augment.classical_copy(cfg, px, rng).image for px in self.pixels(drawn.copies)]
        copies = [{**r, "origin": "classical"} for r in drawn.copies]
        return self.subset + drawn.rows + copies, extra


def _labels(data: _Data, rows: list[dict]) -> torch.Tensor:
    """Labels in _tensors' order: manifest rows, then classical copies."""
    plain = [r for r in rows if r["origin"] != "classical"]
    copies = [r for r in rows if r["origin"] == "classical"]
    return torch.tensor([data.labels.index(r["label"]) for r in plain + copies])


def _tensors(data: _Data, rows: list[dict], extra: list[np.ndarray]) -> tuple:
    images = data.pixels([r for r in rows if r["origin"] != "classical"]) + extra
    return classify.to_batch(images), _labels(data, rows)


def _probe_inputs(data: _Data, rows, extra, condition: str, seed: int, model: str) -> tuple:
    """(train, val, test) feature tensors for a probe: train with its views (classical
    copies' views drawn under seeds of the condition, seed and copy), val/test plain."""
    views, network = data.params.train.views, classify.PROBES[model]
    plain = data.features(
        [r for r in rows if r["origin"] != "classical"], views=views, network=network
    )
    if extra:
        seeds = [
            derive_seed(data.params.seed, "views", condition, seed, i) % 2**63
            for i in range(len(extra))
        ]
        copies = data.trunk_views(classify.to_batch(extra), views, seeds, network)
        plain = torch.cat([plain, copies])
    train = (plain, _labels(data, rows))
    val, test = (data.features(data.split[s], views=1, network=network) for s in ("val", "test"))
    return train, (val, _labels(data, data.split["val"])), (test, _labels(data, data.split["test"]))


def _record_unit(unit: Path, params: Params, data, model: str, condition: str, seed: int) -> None:
    """One trained model's record, as a resume unit."""
    atomic_write_json(unit / RECORD_JSON, _train_one(params, data, model, condition, seed))


def _train_one(params: Params, data: _Data, model_name: str, condition: str, seed: int) -> dict:
    """Train and score one (model, condition, seed); returns its record (JSON-able)."""
    cfg = params.train
    rt = runtime(params.model)
    rows, extra = data.condition(condition, seed)
    ids = sorted(r["id"] for r in rows if r["origin"] != "classical")
    held_out = {r["id"] for r in data.split["val"] + data.split["test"]}
    leaked = set(ids) & held_out
    if leaked:  # cannot happen by construction; the invariant that matters most
        raise DataError(f"val/test images in the training set of {condition}: {sorted(leaked)[:3]}")
    if classify.on_features(model_name):
        train, val, (test_x, test_y) = _probe_inputs(data, rows, extra, condition, seed, model_name)
        augment = classify.probe_augment(cfg.views)
    else:
        train = _tensors(data, rows, extra)
        val = _tensors(data, data.split["val"], []) if condition != arms.MAJORITY else None
        test_x, test_y = _tensors(data, data.split["test"], [])
        augment = classify.protocol_augment(cfg.rotation, cfg.flips)
    counts = {c: int((train[1] == i).sum()) for i, c in enumerate(data.labels)}
    if condition == arms.MAJORITY:  # the train split's frequencies, not the balanced subset's
        whole = [data.labels.index(r["label"]) for r in data.split["train"]]
        preds = classify.majority(whole, len(test_y))
        fit = classify.Fit(None, 0, [], [], [])
        steps = 0
    else:
        with torch.random.fork_rng():
            torch.manual_seed(derive_seed(params.seed, "init", model_name, seed) % 2**63)
            model = classify.build(model_name, len(data.labels))
        fit = classify.fit(
            model,
            train,
            val,
            steps=cfg.steps,
            evals=cfg.evals,
            batch_size=cfg.batch_size,
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            schedule_kind=cfg.schedule,
            warmup=cfg.warmup,
            select_by=data.primary,
            n_classes=len(data.labels),
            class_balance=cfg.class_balance,
            augment=augment,
            # the same init, batch-order and augmentation draws in every condition (common
            # random numbers): a paired delta reflects the training images, not the draw
            seed=derive_seed(params.seed, "fit", model_name, seed) % 2**63,
            rt=rt,
        )
        preds = classify.predict(fit.model, test_x, rt)
        steps = cfg.steps
    scores = classify.evaluate(test_y.tolist(), preds, data.labels)
    return {
        "model": model_name,
        "condition": condition,
        "seed": seed,
        "accuracy": scores.accuracy,
        "balanced_accuracy": scores.balanced_accuracy,
        "macro_f1": scores.macro_f1,
        "recall": scores.recall,
        "f1": scores.f1,
        "confusion": scores.confusion,
        "test_pred": [int(p) for p in preds],  # per test image in data.split["test"] order
        "steps": steps,
        "epochs_equivalent": steps * cfg.batch_size / len(train[1]),
        "best_step": fit.best_step,
        "classes_predicted": len(set(preds)),
        "eval_steps": fit.eval_steps,
        "val_score": fit.val_score,
        "train_loss": fit.losses,
        "n_train": counts,
        "n_real": sum(1 for r in rows if r["origin"] == "real"),
        "n_synthetic": sum(1 for r in rows if r["origin"] == "synthetic"),
        "n_classical": len(extra),
        "train_ids_sha256": hashlib.sha256("\n".join(ids).encode()).hexdigest(),
        "train_ids": ids,  # real and synthetic manifest ids (classical copies have none)
    }


# what a comparison's interval covers (eval.json's protocol.interval; the report quotes it)
INTERVAL = (
    "95 % percentile interval of a paired two-level bootstrap: the seeds resampled, and "
    "the test images resampled within each true class, shared by both conditions "
    "(core.stats.seed_image_bootstrap); it covers the training seeds and the test "
    "images, and is conditional on this run's few-shot draw and generated images. "
    "Verdicts of the synthetic arms from Holm-adjusted p per model and metric"
)


def _test_predictions(records: list[dict], data: _Data) -> pd.DataFrame:
    """Every unit's score: one row per (model, condition, seed, test image) with the true
    and predicted class, from which every metric and interval of eval.json recomputes."""
    test = data.split["test"]
    rows = [
        {
            "model": r["model"],
            "condition": r["condition"],
            "seed": r["seed"],
            "image_id": t["id"],
            "label": t["label"],
            "predicted": data.labels[p],
        }
        for r in records
        for t, p in zip(test, r["test_pred"], strict=True)
    ]
    return pd.DataFrame(rows)


def _by_seed(records: list[dict], model: str, condition: str, metric: str) -> dict[int, float]:
    mine = (r for r in records if (r["model"], r["condition"]) == (model, condition))
    return {r["seed"]: r[metric] for r in mine}


class _Difference:
    """The paired test of two conditions of one model on the test split: the two-level
    bootstrap over seeds and test images (core.stats.seed_image_bootstrap) of the seeds
    both conditions trained, from every model's per-image predictions."""

    def __init__(self, records: list[dict], model: str, test_y: list[int], n_classes: int):
        self.pred = {}  # condition -> {seed: predictions}
        for r in records:
            if r["model"] == model:
                self.pred.setdefault(r["condition"], {})[r["seed"]] = r["test_pred"]
        self.y, self.n_classes = test_y, n_classes

    def __call__(self, metric: str, arm: str, control: str) -> dict:
        seeds = sorted(set(self.pred[arm]) & set(self.pred[control]))
        a, c = (np.array([self.pred[k][s] for s in seeds]) for k in (arm, control))
        return stats.seed_image_bootstrap(a, c, self.y, metric, self.n_classes)


def _per_class(
    records: list[dict], model: str, labels: list[str], control_of=arms.classical_of
) -> dict[str, list[dict]]:
    """Per additive arm and class: the class's test F1 with the arm's synthetic images
    minus with its control (paired over seeds): by default as many classical copies,
    the outcome the gate's per-class verdict predicts (did that class's synthetic images
    do better than plain augmentation of its real images?). (F1, not recall: added
    images of a class raise its recall by shifting predictions towards it; F1 also pays
    for the false positives that shift causes.)"""
    out = {}
    for arm in arms.ADDITIVE:
        control = control_of(arm)
        mine = [r for r in records if r["model"] == model and "f1" in r]
        if not {arm, control} <= {r["condition"] for r in mine}:
            continue
        rows = []
        for label in labels:
            values = {
                c: {r["seed"]: r["f1"][label] for r in mine if r["condition"] == c}
                for c in (arm, control)
            }
            (row,) = stats.compare(values, [(arm, control)], "f1")
            rows.append({"label": label, **row})
        out[arm] = rows
    return out


def _captured(records: list[dict], model: str, metric: str) -> dict[str, dict]:
    """Per additive arm: the fraction of the oracle's gain over real (as many extra real
    images) that the synthetic images capture (core.stats.captured_fraction)."""
    out = {}
    for arm in arms.ADDITIVE:
        series = [
            _by_seed(records, model, c, metric) for c in (arm, arms.REAL, arms.oracle_of(arm))
        ]
        seeds = sorted(set(series[0]) & set(series[1]) & set(series[2]))
        if len(seeds) < 2:
            continue
        out[arm] = stats.captured_fraction(*([s[k] for k in seeds] for s in series))
    return out


def _analyse(records: list[dict], model: str, data: _Data, difference: _Difference) -> tuple:
    """The harness's comparisons and validity record for one model: every condition
    but the constant predictor, which is the degenerate-arm floor."""
    mine = [r for r in records if r["model"] == model]
    runs: dict[str, list[dict]] = {}
    for r in mine:
        if r["condition"] != arms.MAJORITY:
            runs.setdefault(r["condition"], []).append(r)
    constant = [r[data.primary] for r in mine if r["condition"] == arms.MAJORITY]
    return harness.analyse(
        {m: {c: {r["seed"]: r[m] for r in rs} for c, rs in runs.items()} for m in METRICS},
        data.plan,
        primary=data.primary,
        higher=dict.fromkeys(METRICS, True),
        constant=constant[0] if constant else 0.0,
        bound={
            c: validity.budget_bound([r["val_score"] for r in rs], data.tolerance)
            for c, rs in runs.items()
        },
        classes_predicted={c: [r["classes_predicted"] for r in rs] for c, rs in runs.items()},
        difference=difference,
    )


def headline(comparisons: dict[str, list[dict]], checks: dict[str, dict], metric: str) -> str:
    """The answer in one line: synthetic vs classical augmentation, better / worse / not
    distinguishable on the primary metric, with the interval (real+synthetic when it
    trained, else real+ungated; the first model); or, when the first model's validity
    check failed, that this budget cannot say."""
    for model, rows in comparisons.items():
        line = harness.headline(
            rows, checks[model], metric, "Synthetic vs classical augmentation", model=model
        )
        if line:
            return line
    return "No synthetic arm was trained, so synthetic vs classical augmentation is unanswered."


def _summarise(records: list[dict], labels: list[str], tolerance: float) -> tuple[dict, dict]:
    """eval.json's per (model, condition) means/stds and deltas, and summed confusions."""
    summary: dict[str, dict] = {}
    confusion: dict[str, dict] = {}
    for model in sorted({r["model"] for r in records}):
        summary[model], confusion[model] = {}, {}
        mine = [r for r in records if r["model"] == model]
        for condition in dict.fromkeys(r["condition"] for r in mine):
            runs = [r for r in mine if r["condition"] == condition]
            entry = {}
            for metric in METRICS:
                s = stats.summary([r[metric] for r in runs])
                entry[f"{metric}_mean"], entry[f"{metric}_std"] = s["mean"], s["std"]
            summary[model][condition] = {
                **entry,
                "recall_mean": {c: float(np.mean([r["recall"][c] for r in runs])) for c in labels},
                "best_steps": [r["best_step"] for r in runs],
                "budget_bound": condition != arms.MAJORITY  # the constant predictor trains nothing
                and validity.budget_bound([r["val_score"] for r in runs], tolerance),
                "n_seeds": len(runs),
                "n_train": runs[0]["n_train"],
                "n_synthetic": runs[0]["n_synthetic"],
                "n_classical": runs[0]["n_classical"],
                "steps": runs[0]["steps"],
                "epochs_equivalent": runs[0]["epochs_equivalent"],
            }
            confusion[model][condition] = np.sum([r["confusion"] for r in runs], axis=0).tolist()
        if "real" in summary[model]:
            base = summary[model]["real"]
            for entry in summary[model].values():
                for metric in METRICS:
                    entry[f"{metric}_delta"] = entry[f"{metric}_mean"] - base[f"{metric}_mean"]
    return summary, confusion


def run(
    params: Params,
    *,
    preprocessed: Path,
    generated: Path,
    gated: Path,
    out_dir: Path,
    params_key: str,
) -> dict[str, float]:
    """Train every (model, condition, seed) and score it on the real test split.

    Returns:
        Metrics <model>/<condition>/<metric>_mean, _std, _delta (vs real) for accuracy,
        balanced_accuracy and macro_f1; <model>/<arm>/vs_<control>/<metric>_delta,
        _ci_low, _ci_high, _p for every paired comparison; <model>/verdicts_allowed and
        <model>/all_train_minus_real/<primary>_delta (the validity check's reference arm,
        the class-matched oracle where it trained, is a comparison row: vs_real); '+' in
        condition names written '_' (+ time/... for MLflow only).
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
    resume = Resume(out_dir, key[:16] + params_key + RECORD_FORMAT)
    records: list[dict] = []
    metrics_out: dict[str, float] = {}
    to_train, skipped = data.pool.runnable()
    runs = [
        (m, condition, seed)
        for condition in data.plan
        if condition in to_train or condition == arms.MAJORITY
        for m in cfg.models
        for seed in cfg.seeds
    ]
    # a probe's runs take seconds once its features exist: they train here, where the
    # feature cache lives; end-to-end models train cfg.workers at a time in worker processes
    finished: dict[tuple[str, str, int], tuple[Path, float | None]] = {}
    units = Units("train", "run", len(runs))
    for on_features in (True, False):
        mine = [run for run in runs if classify.on_features(run[0]) == on_features]
        jobs = [(f"{m}.{c}.{s}", _record_unit, (params, data, m, c, s)) for m, c, s in mine]
        workers = 1 if on_features else cfg.workers
        made = resume.ensure_many(jobs, workers=workers, tick=units.tick)
        finished.update(zip(mine, made, strict=True))
    for model_name, condition, seed in runs:
        done, seconds = finished[(model_name, condition, seed)]
        if seconds is not None:
            metrics_out[f"time/{model_name}/{metric_name(condition)}/{seed}_s"] = seconds
        records.append(json.loads((done / RECORD_JSON).read_text(encoding="utf-8")))
    summary, confusion = _summarise(records, data.labels, data.tolerance)
    test_y = [data.labels.index(r["label"]) for r in data.split["test"]]
    differences = {m: _Difference(records, m, test_y, len(data.labels)) for m in summary}
    analysed = {m: _analyse(records, m, data, differences[m]) for m in summary}
    comparisons = {m: rows for m, (rows, _) in analysed.items()}
    checks = {m: check for m, (_, check) in analysed.items()}
    captured = {m: _captured(records, m, data.primary) for m in summary}
    per_class = {m: _per_class(records, m, data.labels) for m in summary}
    per_class_real = {m: _per_class(records, m, data.labels, lambda _: arms.REAL) for m in summary}
    short = {
        c: s
        for c in data.matched
        if c in arms.ORACLES and c not in skipped and (s := data.pool.oracle_shortfall(c))
    }
    with atomic_dir(out_dir) as tmp:
        atomic_write_json(
            tmp / EVAL_JSON,
            {
                "headline": headline(comparisons, checks, data.primary),
                "primary_metric": data.primary,
                "validity": checks,
                "labels": data.labels,
                "test_images": len(data.split["test"]),
                "protocol": {
                    "steps": cfg.steps,
                    "batch_size": cfg.batch_size,
                    "val_checks": cfg.evals,
                    "optimizer": f"AdamW, lr {cfg.lr:g}, weight decay {cfg.weight_decay:g}",
                    "schedule": cfg.schedule
                    + (f", warmup {cfg.warmup:g} of the steps" if cfg.schedule == "cosine" else ""),
                    "selection": f"best val {data.primary}",
                    "class_balance": cfg.class_balance,
                    "seeds": cfg.seeds,
                    "paired": "per seed the same init and RNG stream in every condition: "
                    "equal-size conditions see the same batches, others the same draws "
                    "over different images",
                    "interval": INTERVAL,
                    "classical": augment.describe(params.classical),
                    "models": {m: classify.describe(m, cfg.views) for m in cfg.models},
                    "matched_to": data.matched,
                },
                "order": [c for c in data.plan if c not in skipped],  # the table's rows
                "models": summary,
                "comparisons": comparisons,
                "captured": captured,
                "per_class_vs_classical": per_class,
                "per_class_vs_real": per_class_real,
                "oracle_shortfall": short,
                "skipped": skipped,
            },
        )
        atomic_write_json(tmp / CONFUSION_JSON, confusion)
        as_json = ("recall", "f1", "n_train", "eval_steps", "val_score", "train_loss")
        table = pd.DataFrame(
            [
                {k: v for k, v in r.items() if k not in ("confusion", "test_pred", *as_json)}
                | {k: json.dumps(r[k]) for k in as_json if k in r}
                for r in records
            ]
        )
        table.to_parquet(tmp / RUNS_PARQUET, index=False)
        _test_predictions(records, data).to_parquet(tmp / TEST_PREDICTIONS_PARQUET, index=False)
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
        write_file(tmp / COMPARISON_CSV, pd.DataFrame(plot).to_csv(index=False).encode())
        curves = Curves()
        for r in records:
            if not r["train_loss"]:
                continue
            series = f"{r['model']}.{metric_name(r['condition'])}.{r['seed']}"
            log, log_val = curves.logger(series), curves.logger(f"{series}.val_{data.primary}")
            for step, loss, score in zip(
                r["eval_steps"], r["train_loss"], r["val_score"], strict=True
            ):
                log(step, loss)
                log_val(step, score)
        curves.write(tmp / CURVES_DIR)
    resume.finish()
    for model, conditions in summary.items():
        for condition, entry in conditions.items():
            name = f"{model}/{metric_name(condition)}"
            for metric in METRICS:
                for key in (f"{metric}_mean", f"{metric}_std", f"{metric}_delta"):
                    if key in entry:
                        metrics_out[f"{name}/{key}"] = entry[key]
        metrics_out.update(comparison_metrics(model, comparisons[model]))
        metrics_out[f"{model}/verdicts_allowed"] = float(checks[model]["verdicts_allowed"])
        upper = checks[model]["all_train_minus_real"]
        if upper is not None:
            metrics_out[f"{model}/all_train_minus_real/{data.primary}_delta"] = upper["delta"]
    metrics_out["n_runs"] = float(len(records))
    return metrics_out
