"""Segment: do the self-annotated pairs help a segmentation model? And the COCO export.

DefFiller's evaluation (4.4.3): a saliency / segmentation model, one for all
classes, trained on the real pairs alone and on real + synthetic pairs, scored on real
held-out pairs. Here:
    train   the real train pairs the generator learned from (pairs.data: the few-shot
            subset or all of train), plus, per condition (core.arms):
              real                     nothing
              real+synthetic           the pairs of classes that passed the pairs_gate
              real+ungated             every pair, ignoring the gate
              real+classical[-ungated] as many classically augmented real pairs per class
                                       (core.augment's recipe) as the arm adds
              real+copy-paste[-ungated] as many real defects cut from subset pairs by
                                       their masks and pasted onto defect-free (or other
                                       subset) images (core.copypaste): the model-free
                                       synthesis control
              real+oracle[-ungated]    as many real train pairs from outside the subset
              all-train                every real train pair
            segment.conditions lists the synthetic arms; the controls run with them.
            Every U-Net trains segment.steps optimizer steps, seeds paired across
            conditions (the same init, batch order and flips per seed); a condition's
            seeds train segment.workers at a time, one CPU thread each.
    test    the real test split (never seen by any generator)
DefFiller's 1:5 train:test scarcity is a split choice (preprocess.split; the
SD-Saliency-900 profile in the README sets it). Each condition trains one U-Net per
seed (core.segment); its probability maps on the test pairs give S-measure (alpha 0.5),
MAE, max E-measure, max F-measure, IoU, Dice and pixel AUROC/AP (core.segmetrics),
reported as mean and sample std over the seeds, overall and per class (Dice), with
paired differences (95 % t interval, p) between the conditions that answer a question.

COCO export (core.coco): the real pairs of every split plus the synthetic pairs
(segment.export: the gated ones, or all) in train, RLE instances per 8-connected region,
with the images copied beside the JSON so the folder is self-contained.

Writes under `out_dir`:
    segment.json        per condition: metrics mean/std, per class; counts; the paired
                        comparisons and the headline (pairs vs classical augmentation)
    comparison.csv      condition, metric, mean, std (a table for the report)
    runs.parquet        one row per (condition, seed): every metric
    coco/{train,val,test}.json, coco/images/{real,synthetic}/...
    curves/<condition>.seed<k>.csv   training loss, 20 points (real_ungated.seed0.csv)
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd

from defectgen import artifacts, manifest
from defectgen.artifacts import (
    COMPARISON_CSV,
    CURVES_DIR,
    PAIRS_JSON,
    RECORD_JSON,
    RUNS_PARQUET,
    SEGMENT_JSON,
    TEST_SCORES_PARQUET,
)
from defectgen.atomic import atomic_dir, atomic_write_json, write_file
from defectgen.config import Params
from defectgen.core import arms, coco, harness, stats, validity
from defectgen.core.images import decode_image
from defectgen.curves import Curves
from defectgen.errors import DataError
from defectgen.metric_keys import comparison_metrics, metric_name
from defectgen.progress import Units
from defectgen.resume import Resume, file_digest
from defectgen.seeds import derive_seed

METRICS = (
    "s_measure",
    "mae",
    "max_e_measure",
    "max_f_measure",
    "iou",
    "dice",
    "pixel_auroc",
    "pixel_ap",
)


def _load(folder: Path, rows: list[dict]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    images, masks = [], []
    for row in rows:
        for rel, out in ((row["path"], images), (row["mask_path"], masks)):
            try:
                px, _ = decode_image((folder / rel).read_bytes())
            except OSError as exc:
                raise DataError(f"{folder / rel}: cannot read ({exc}); re-run its stage") from None
            out.append(px if out is images or px.ndim == 2 else px[..., 0])
    return images, masks


def _export(
    tmp: Path,
    preprocessed: Path,
    pairs_dir: Path,
    real: list[dict],
    synthetic: list[dict],
    labels: list[str],
) -> dict[str, int]:
    """COCO JSON per split with the images copied under coco/images; instance counts."""
    samples = []
    for folder, rows, origin in ((preprocessed, real, "real"), (pairs_dir, synthetic, "synthetic")):
        for row in rows:
            rel = f"images/{origin}/{row['path']}"
            write_file(tmp / "coco" / rel, (folder / row["path"]).read_bytes())
            mask, _ = decode_image((folder / row["mask_path"]).read_bytes())
            samples.append(
                coco.Sample(
                    file_name=rel,
                    label=row["label"],
                    split=row["split"],
                    origin=origin,
                    mask=mask if mask.ndim == 2 else mask[..., 0],
                    defectgen_id=row["id"],
                    parent_id=row["parent_id"],
                    extra={"generator": row["generator"]} if origin == "synthetic" else {},
                )
            )
    counts = {}
    for split in ("train", "val", "test"):
        data = coco.build(samples, labels, split)
        write_file(tmp / "coco" / f"{split}.json", json.dumps(data).encode())
        counts[f"coco_{split}_images"] = len(data["images"])
        counts[f"coco_{split}_instances"] = len(data["annotations"])
    return counts


def _fit_score(
    params: Params,
    seed: int,
    train_set,
    val_set,
    test_set,
    labels_test,
    classes: list[str] | None = None,
):
    """One U-Net: metrics overall, Dice per class, its loss curve and val checks (the best
    val Dice weights are scored). The seed is the same for every condition (paired:
    init, batch order and flips drawn alike)."""
    from defectgen.core import segment, segmetrics  # torch: not loaded by a skipped run
    from defectgen.core.device import runtime

    cfg = params.segment
    rt = runtime(params.model)
    images, masks = train_set
    fit = segment.fit(
        images,
        masks,
        steps=cfg.steps,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        seed=derive_seed(params.seed, "segment", seed),
        widths=tuple(cfg.widths),
        val=val_set,
        evals=cfg.evals,
        weight_decay=cfg.weight_decay,
        schedule_kind=cfg.schedule,
        warmup=cfg.warmup,
        classes=None if classes is None else [sorted(set(classes)).index(c) for c in classes],
        rt=rt,
    )
    preds = segment.predict(fit.model, test_set[0], rt)
    scores = segmetrics.evaluate(preds, test_set[1])
    each = segmetrics.per_image(preds, test_set[1])
    per_class = {}
    for label in sorted(set(labels_test)):
        idx = [i for i, lab in enumerate(labels_test) if lab == label]
        per_class[label] = float(
            np.mean([segmetrics.iou_dice(preds[i], test_set[1][i])[1] for i in idx])
        )
    checks = {
        "best_step": fit.best_step,
        "eval_steps": fit.eval_steps,
        "val_dice": fit.val_dice,
        "test_scores": each,
    }
    return scores, per_class, fit.losses, checks


class _Conditions:
    """The training pairs of each condition: the harness's draw (core.harness.Pool)
    made into pairs: real and synthetic pairs as they are, classical copies of subset
    pairs, copy-paste pastes."""

    def __init__(self, params, preprocessed, pairs_dir, real_train, outside, added):
        self.params, self.pairs_dir = params, pairs_dir
        self.plan = arms.plan(
            params.segment.conditions,
            oracle=params.segment.oracle,
            copy_paste=params.copy_paste.enabled,
        )
        self.pool = harness.Pool(
            self.plan,
            real_train,
            outside,
            added,
            normal_classes=tuple(params.data.normal_classes),
            items="synthetic pairs",
            item="pair",
        )
        both = real_train + outside
        self.label = {r["id"]: r["label"] for r in both}
        images, masks = _load(preprocessed, both)
        self.pixels = {
            r["id"]: p for r, p in zip(both, zip(images, masks, strict=True), strict=True)
        }

    def pairs(self, name: str, seed: int) -> tuple[list, list, int, dict, list[str]]:
        """(images, masks, number of added pairs, provenance, each pair's class) for one
        condition and seed; provenance: for copy-paste, each pasted defect's source and
        background row and offset, and the counts of core.copypaste.make."""
        from defectgen.core import copypaste, segment

        rng = np.random.default_rng(derive_seed(self.params.seed, "segment", name, seed))
        drawn = self.pool.draw(name, rng)
        real = [r for r in drawn.rows if r["id"] in self.pixels]
        made = [r for r in drawn.rows if r["id"] not in self.pixels]  # synthetic pairs
        extra = [self.pixels[r["id"]] for r in real]
        extra += list(zip(*_load(self.pairs_dir, made), strict=True)) if made else []
        cfg = self.params.classical
        extra += [segment.classical_pair(cfg, *self.pixels[r["id"]], rng) for r in drawn.copies]
        classes = [r["label"] for r in self.pool.subset + real + made + drawn.copies]
        provenance: dict = {}
        if drawn.pastes is not None:
            pasted, counts = copypaste.make(self.params.copy_paste, drawn.pastes, self.pixels, rng)
            extra += [(p.image, p.mask) for p in pasted]
            classes += [self.label[p.source] for p in pasted]
            provenance = copypaste.record(pasted, counts)
        both = [self.pixels[r["id"]] for r in self.pool.subset] + extra
        return [p[0] for p in both], [p[1] for p in both], len(extra), provenance, classes


# the unit record's format, part of the resume key: records written before it stored
# per-image test scores are retrained, not read
RECORD_FORMAT = "p2"


def _test_scores(scores: dict[str, dict[int, dict]], test: list[dict]) -> pd.DataFrame:
    """Every unit's score: one row per (condition, seed, test image) with its per-image
    metrics, from which every comparison of segment.json recomputes."""
    return pd.DataFrame(
        [
            {
                "condition": c,
                "seed": seed,
                "image_id": t["id"],
                "label": t["label"],
                **{m: each[m][i] for m in each},
            }
            for c, by_seed in scores.items()
            for seed, each in by_seed.items()
            for i, t in enumerate(test)
        ]
    )


# Compared between conditions (paired over seeds and test images); MAE is better when lower.
COMPARED = {"s_measure": True, "dice": True, "iou": True, "mae": False}


METRIC_NAMES = {"s_measure": "S-measure", "dice": "Dice"}


def headline(comparisons: list[dict], check: dict, metric: str = "s_measure") -> str:
    """Synthetic pairs vs classically augmented real pairs, on the primary `metric`
    (segmetrics.primary_metric), in one line; or, when the validity check failed, that
    this budget cannot say."""
    line = harness.headline(
        comparisons,
        check,
        metric,
        "Synthetic pairs vs classical augmentation",
        shown=METRIC_NAMES[metric],
        points=False,
    )
    return (
        line
        or "No synthetic pairs were trained on, so pairs vs classical augmentation is unanswered."
    )


def _record_unit(
    unit: Path,
    params: Params,
    conds,
    condition: str,
    seed: int,
    val_set,
    test_set,
    test_labels: list[str],
) -> None:
    """One segmenter trained and scored, as a resume unit."""
    images, masks, n_added, provenance, classes = conds.pairs(condition, seed)
    balance = classes if params.segment.class_balance == "sampler" else None
    scores, per_class, losses, checks = _fit_score(
        params, seed, (images, masks), val_set, test_set, test_labels, balance
    )
    record = {
        "scores": scores,
        "per_class_dice": per_class,
        "losses": losses,
        **checks,
        "n_train": len(images),
        "n_added": n_added,
        **provenance,
    }
    atomic_write_json(unit / RECORD_JSON, record)


def run(
    params: Params,
    *,
    preprocessed: Path,
    pairs: Path,
    pairs_gated: Path,
    out_dir: Path,
    params_key: str,
) -> dict[str, float]:
    """Export COCO, then train and score one U-Net per (condition, seed).

    Returns:
        per condition <condition>/<metric> (mean over seeds; "+" written "_", as MLflow
        names allow) for every metric, and
        n_train_real, n_synthetic, n_gated, coco_<split>_images/_instances; skipped (1.0)
        when the dataset has no masks.
    """
    cfg = params.segment
    preprocessed, pairs_dir, gated = Path(preprocessed), Path(pairs), Path(pairs_gated)
    pairs_report = artifacts.read_json(pairs_dir / PAIRS_JSON, stage="pairs", option="pairs")
    if "skipped" in pairs_report:
        with atomic_dir(out_dir) as tmp:
            atomic_write_json(tmp / SEGMENT_JSON, {"skipped": pairs_report["skipped"]})
        return {"skipped": 1.0}
    # albumentations loads torch: not for a skipped run
    from defectgen.core import augment, copypaste, segmetrics

    everything = manifest.read_rows(preprocessed)
    rows = [r for r in everything if r["origin"] == "real" and r["mask_path"]]
    labels = sorted({r["label"] for r in everything})
    data = params.pairs.data
    real_train = [r for r in rows if r["split"] == "train" and (data == "train" or r["in_subset"])]
    test = sorted((r for r in rows if r["split"] == "test"), key=lambda r: r["id"])
    val = sorted((r for r in rows if r["split"] == "val"), key=lambda r: r["id"])
    if len(real_train) < 2 or len(test) < 1 or len(val) < 1:
        raise DataError(
            f"{preprocessed}: {len(real_train)} real train, {len(val)} val and {len(test)} "
            "test images with masks; segmentation needs at least 2, 1 and 1 (check "
            "preprocess.split)"
        )
    synthetic = manifest.read_rows(pairs_dir)
    passed = {r["id"] for r in manifest.read_rows(gated)}
    added = {arms.GATED: [r for r in synthetic if r["id"] in passed], arms.UNGATED: synthetic}
    real_ids = {r["id"] for r in real_train}
    outside = [r for r in rows if r["split"] == "train" and r["id"] not in real_ids]
    side = int(everything[0]["width"])
    if side % 2 ** (len(cfg.widths) - 1):
        raise DataError(
            f"images of {side} px do not divide by 2 ** {len(cfg.widths) - 1}; "
            "choose segment.widths with fewer levels or another preprocess.image_size"
        )
    conds = _Conditions(params, preprocessed, pairs_dir, real_train, outside, added)
    test_set = _load(preprocessed, test)
    val_set = _load(preprocessed, val)
    key = file_digest(
        preprocessed / manifest.MANIFEST_NAME,
        pairs_dir / manifest.MANIFEST_NAME,
        gated / manifest.MANIFEST_NAME,
    )[:16]
    key += params_key + RECORD_FORMAT
    resume = Resume(out_dir, key)
    report: dict = {
        "n_train_real": len(real_train),
        "n_test": len(test),
        "protocol": {
            "steps": cfg.steps,
            "batch_size": cfg.batch_size,
            "seeds": cfg.seeds,
            "optimizer": f"AdamW, lr {cfg.lr:g}, weight decay {cfg.weight_decay:g}",
            "schedule": cfg.schedule,
            "class_balance": cfg.class_balance,
            "selection": f"best of {cfg.evals} val Dice checks",
            "paired": "per seed the same init and RNG stream in every condition: "
            "equal-size conditions see the same batches",
            "interval": "95 % percentile interval of a paired two-level bootstrap: the "
            "seeds resampled, and the test images resampled within each class, shared by "
            "both conditions (core.stats.seed_image_bootstrap on per-image scores), never "
            "narrower than the seeds' t interval; conditional on this run's few-shot draw "
            "and pairs. Verdicts from the synthetic arms' Holm-adjusted p per metric",
            "classical": augment.describe(params.classical),
            "copy_paste": copypaste.describe(params.copy_paste)
            if params.copy_paste.enabled
            else None,
            "matched_to": {k: v for k, v in conds.plan.items() if v is not None},
        },
        "conditions": {},
    }
    runs: list[dict] = []
    val_curves: dict[str, list[list[float]]] = defaultdict(list)  # per condition, per seed
    pasted: dict[str, list[dict]] = defaultdict(list)  # copy-paste records by condition
    curves = Curves()
    metrics_out: dict[str, float] = {}
    to_train, skipped = conds.pool.runnable()
    test_scores: dict[str, dict[int, dict]] = defaultdict(dict)  # condition -> seed -> scores
    with atomic_dir(out_dir) as tmp:
        export = added[arms.GATED if cfg.export == "gated" else arms.UNGATED]
        counts = _export(tmp, preprocessed, pairs_dir, rows, export, labels)
        # every condition's seeds in one pool: cfg.workers stay busy to the last U-Net
        labels_test = [r["label"] for r in test]
        jobs = [
            (
                f"{condition}.seed{seed}",
                _record_unit,
                (params, conds, condition, seed, val_set, test_set, labels_test),
            )
            for condition in to_train
            for seed in cfg.seeds
        ]
        units = Units("segment", "U-Net", len(jobs))
        made = iter(resume.ensure_many(jobs, workers=cfg.workers, tick=units.tick))
        for condition in conds.plan:
            if condition == arms.MAJORITY:  # a classifier baseline; no pixel-level analogue
                continue
            if condition in skipped:
                report["conditions"][condition] = {"skipped": skipped[condition]}
                continue
            for seed in cfg.seeds:
                folder, _ = next(made)
                done = json.loads((folder / RECORD_JSON).read_text("utf-8"))
                if condition in arms.COPY_PASTE:  # a copy-paste arm's provenance
                    pasted[condition].append(done)
                curves.series[f"{metric_name(condition)}.seed{seed}"] = done["losses"]
                val_curves[condition].append(done["val_dice"])
                test_scores[condition][seed] = done["test_scores"]
                per_class_dice = {f"dice/{k}": v for k, v in done["per_class_dice"].items()}
                runs.append(
                    {
                        "condition": condition,
                        "seed": seed,
                        "n_train": done["n_train"],
                        "n_added": done["n_added"],
                        "best_step": done["best_step"],
                        **done["scores"],
                        **per_class_dice,
                    }
                )
            mine = pd.DataFrame([r for r in runs if r["condition"] == condition])
            entry = {
                "n_train": int(mine["n_train"].iloc[0]),
                "n_added": int(mine["n_added"].iloc[0]),
            }
            for metric in METRICS:
                s = stats.summary(mine[metric].tolist())
                entry[metric] = {"mean": s["mean"], "std": s["std"]}
                metrics_out[f"{metric_name(condition)}/{metric}"] = entry[metric]["mean"]
            entry["n_seeds"] = len(mine)
            if pasted[condition]:
                entry.update(copypaste.summarise(pasted[condition]))
            entry["best_steps"] = [int(v) for v in mine["best_step"]]
            entry["budget_bound"] = validity.budget_bound(val_curves[condition])
            entry["dice_per_class"] = {
                c[5:]: float(mine[c].mean()) for c in mine.columns if c.startswith("dice/")
            }
            report["conditions"][condition] = entry
        trained = {r["condition"] for r in runs}
        primary, why = segmetrics.primary_metric(test_set[1])
        empty = [np.zeros(m.shape, np.float32) for m in test_set[1]]  # all background
        strata = [labels.index(r["label"]) for r in test]  # images resampled within class

        def difference(metric: str, arm: str, control: str) -> dict:
            seeds = sorted(set(test_scores[arm]) & set(test_scores[control]))
            a, c = (np.array([test_scores[k][s][metric] for s in seeds]) for k in (arm, control))
            return stats.seed_image_bootstrap(a, c, strata, metric)

        comparisons, check = harness.analyse(
            {
                m: {c: {r["seed"]: r[m] for r in runs if r["condition"] == c} for c in trained}
                for m in COMPARED
            },
            conds.plan,
            primary=primary,
            higher=COMPARED,
            constant=segmetrics.evaluate(empty, test_set[1])[primary],
            bound={c: report["conditions"][c]["budget_bound"] for c in trained},
            difference=difference,
        )
        report["primary_metric"], report["primary_metric_reason"] = primary, why
        report["validity"] = check
        report["order"] = [c for c in conds.plan if c in report["conditions"]]
        report["comparisons"] = comparisons
        report["headline"] = headline(comparisons, check, primary)
        metrics_out.update(comparison_metrics(None, comparisons))
        report.update(counts)
        atomic_write_json(tmp / SEGMENT_JSON, report)
        pd.DataFrame(runs).to_parquet(tmp / RUNS_PARQUET, index=False)
        _test_scores(test_scores, test).to_parquet(tmp / TEST_SCORES_PARQUET, index=False)
        with (tmp / COMPARISON_CSV).open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["condition", "metric", "mean", "std"])
            for condition, entry in report["conditions"].items():
                for metric in METRICS:
                    if metric in entry:
                        writer.writerow(
                            [
                                condition,
                                metric,
                                f"{entry[metric]['mean']:.6g}",
                                f"{entry[metric]['std']:.6g}",
                            ]
                        )
        curves.write(tmp / CURVES_DIR)
    resume.finish()
    metrics_out.update({k: float(v) for k, v in counts.items()})
    metrics_out.update(
        n_train_real=float(len(real_train)),
        n_synthetic=float(len(synthetic)),
        n_gated=float(len(added[arms.GATED])),
    )
    return metrics_out
