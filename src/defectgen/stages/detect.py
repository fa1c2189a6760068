"""Detect: do the synthetic images help a defect detector? (the design card's detector)

Per model (`detect.models`, core.detect: torchvision's Faster R-CNN, or Mask R-CNN where
the data has masks), condition and paired seed, one detector trains for `detect.steps`
optimizer steps and is scored on the real test split with pycocotools' COCOeval:
mAP@[.5:.95], mAP@.5 and per-class AP (bbox; Mask R-CNN also segm), as in Valvano et
al.'s protocol (5). Conditions (core.arms), as the classifier's:

    real                     the few-shot subset's annotated images
    real+synthetic           + gate-passed synthetic images that carry annotations
    real+ungated             + every generated synthetic image that carries them
    real+classical[-ungated] + as many classical copies per class (core.augment's recipe;
                             masks move with the image and give the boxes again, box-only
                             data gets it without the free rotation: boxes stay exact)
    real+oracle[-ungated]    + as many real train images from outside the subset
    all-train                the whole annotated train split
`detect.conditions` lists the synthetic arms; the controls always run with them.

Annotations (defectgen.annotations): real images by their masks (8-connected regions)
or boxes (VOC); image+mask pairs (the pairs branch) by their own masks; img2img images
(the image branch) by their parent's, only up to `detect.parent_boxes_up_to` strength.
A synthetic image without annotations is left out and counted. All instances of an
image take its class. Images with all-zero masks stay, as images without a defect. A
dataset without masks or boxes (ELPV) gets a "skipped" record in seconds.

Writes under `out_dir`:
    detect.json      protocol; per model and condition mean and sample std over seeds of
                     map, map50 (and segm_map, segm_map50), per-class AP means, counts;
                     paired comparisons (95 % t interval, p); the headline; the images
                     left out and the conditions not trained, and why; or only
                     {"skipped": why} for a dataset without masks or boxes
    runs.parquet     one row per (model, condition, seed)
    comparison.csv   model, condition, map, map50 (the DVC plot)
    boxes.png        synthetic training images with the boxes they train with
    curves/<model>.<condition>.<seed>.csv   mean training loss between val checks
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from defectgen import manifest
from defectgen.annotations import Item, annotate, rows_of
from defectgen.artifacts import (
    BOXES_PNG,
    COMPARISON_CSV,
    CURVES_DIR,
    DETECT_JSON,
    RECORD_JSON,
    RUNS_PARQUET,
)
from defectgen.atomic import atomic_dir, atomic_write_json, write_file
from defectgen.config import Params
from defectgen.core import arms, harness, stats, validity
from defectgen.core.images import decode_image
from defectgen.curves import Curves
from defectgen.errors import DataError
from defectgen.metric_keys import comparison_metrics, metric_name
from defectgen.progress import Units
from defectgen.resume import Resume, file_digest
from defectgen.seeds import derive_seed

if TYPE_CHECKING:
    from defectgen.core import detect


def _sample(item: Item, labels: list[str]) -> tuple[np.ndarray, detect.Target]:
    from defectgen.core import detect  # torchvision: not loaded by a skipped run

    pixels, _ = decode_image((item.folder / item.row["path"]).read_bytes())
    cls = labels.index(item.row["label"]) + 1
    if item.mask is not None:
        return pixels, detect.Target.from_mask(item.mask, cls)
    return pixels, detect.Target.from_boxes(item.boxes, cls)


class _Data:
    """Annotated real and synthetic images and each condition's training set."""

    def __init__(self, params: Params, folders: dict[str, Path]):
        cfg = params.detect
        self.params = params
        pre = folders["preprocessed"]
        everything = manifest.read_rows(pre)
        self.labels = sorted({r["label"] for r in everything})
        by_id = {r["id"]: Item(r, pre) for r in everything if r["split"] == "train"}
        real = [annotate(Item(r, pre), {}, cfg.parent_boxes_up_to) for r in everything]
        real = [i for i in real if i.mask is not None or i.boxes is not None]
        self.split = {s: [i for i in real if i.row["split"] == s] for s in ("train", "val", "test")}
        self.subset = [i for i in self.split["train"] if i.row["in_subset"]]
        self.outside = [i for i in self.split["train"] if not i.row["in_subset"]]
        self.left_out: dict[str, dict[str, int]] = {}
        self.added: dict[str, list[Item]] = {}
        sources = {"images": ("gated", "generated"), "pairs": ("pairs_gated", "pairs")}
        for arm, pick in ((arms.GATED, 0), (arms.UNGATED, 1)):
            items = []
            for branch, names in sources.items():
                if cfg.synthetic in (branch, "both"):
                    folder = folders[sources[branch][1]]
                    items += [Item(r, folder) for r in rows_of(folders[names[pick]])]
            kept, dropped = [], {}
            for item in items:
                annotate(item, by_id, cfg.parent_boxes_up_to)
                if item.mask is None and item.boxes is None:
                    dropped[item.annotations] = dropped.get(item.annotations, 0) + 1
                else:
                    kept.append(item)
            self.added[arm], self.left_out[arm] = kept, dropped
        # copy-paste cuts defects by their masks: box-only data has none to cut
        masked = [i for i in self.subset if i.mask is not None]
        self.plan = arms.plan(
            cfg.conditions,
            oracle=cfg.oracle,
            copy_paste=params.copy_paste.enabled and len(masked) == len(self.subset),
        )
        self.plan.pop(arms.MAJORITY)  # a classifier baseline: no detection analogue
        # the harness draws manifest rows; each row's annotated item, by id
        every = self.subset + self.outside + [i for a in self.added.values() for i in a]
        self.items = {i.row["id"]: i for i in every}
        self.pool = harness.Pool(
            self.plan,
            [i.row for i in self.subset],
            [i.row for i in self.outside],
            {arm: [i.row for i in items] for arm, items in self.added.items()},
            normal_classes=tuple(params.data.normal_classes),
            items="synthetic images with annotations",
            item="image",
        )
        self._cache: dict[str, tuple] = {}
        self._pixels: dict[str, tuple] | None = None

    def sample(self, item: Item) -> tuple[np.ndarray, detect.Target]:
        key = f"{item.folder}/{item.row['id']}"
        if key not in self._cache:
            self._cache[key] = _sample(item, self.labels)
        return self._cache[key]

    def _paste(self, drawn: list, rng: np.random.Generator) -> tuple[list, dict, list[int]]:
        """The drawn subset defects pasted onto subset images (core.copypaste), with
        their instances from the pasted mask and the background's own; the pastes'
        provenance (copypaste.record); and each paste's class id."""
        from defectgen.core import copypaste, detect

        if self._pixels is None:  # id -> (image, mask) of the subset, decoded once
            self._pixels = {i.row["id"]: (self.sample(i)[0], i.mask) for i in self.subset}
        pasted, made = copypaste.make(self.params.copy_paste, drawn, self._pixels, rng)
        label_of = {i.row["id"]: self.labels.index(i.row["label"]) + 1 for i in self.subset}
        extra = [(p.image, detect.Target.from_mask(p.mask, label_of[p.source])) for p in pasted]
        return extra, copypaste.record(pasted, made), [label_of[p.source] - 1 for p in pasted]

    def condition(self, name: str, seed: int) -> tuple[list, list, int, dict, list[int]]:
        """(images, targets, number added, provenance, each image's class id) of one
        condition and seed (the harness's draw); provenance: for copy-paste,
        copypaste.record of its pastes."""
        from defectgen.core import detect

        rng = np.random.default_rng(derive_seed(self.params.seed, "detect", name, seed))
        drawn = self.pool.draw(name, rng)
        extra = [self.sample(self.items[r["id"]]) for r in drawn.rows]
        cfg = self.params.classical
        extra += [
            detect.classical(cfg, *self.sample(self.items[r["id"]]), rng) for r in drawn.copies
        ]
        classes = [
            self.labels.index(r["label"])
            for r in [i.row for i in self.subset] + drawn.rows + drawn.copies
        ]
        provenance: dict = {}
        if drawn.pastes is not None:
            pasted, provenance, pasted_classes = self._paste(drawn.pastes, rng)
            extra += pasted
            classes += pasted_classes
        both = [self.sample(i) for i in self.subset] + extra
        return [b[0] for b in both], [b[1] for b in both], len(extra), provenance, classes


def _record_unit(unit: Path, params: Params, data, model: str, condition: str, seed: int) -> None:
    """One trained model's record, as a resume unit."""
    atomic_write_json(unit / RECORD_JSON, _train_one(params, data, model, condition, seed))


def _train_one(params: Params, data: _Data, model_name: str, condition: str, seed: int) -> dict:
    import torch

    from defectgen.core import detect
    from defectgen.core.device import runtime

    cfg = params.detect
    rt = runtime(params.model)
    images, targets, n_added, provenance, classes = data.condition(condition, seed)
    size = int(images[0].shape[0])
    val = tuple(map(list, zip(*[data.sample(i) for i in data.split["val"]], strict=True)))
    test = [data.sample(i) for i in data.split["test"]]
    with torch.random.fork_rng():
        torch.manual_seed(derive_seed(params.seed, "detect-init", model_name, seed) % 2**63)
        model = detect.build(model_name, len(data.labels), size)
    fit = detect.fit(
        model,
        (images, targets),
        val if val else ([], []),
        data.labels,
        steps=cfg.steps,
        evals=cfg.evals,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        seed=derive_seed(params.seed, "detect-fit", model_name, seed) % 2**63,
        weight_decay=cfg.weight_decay,
        schedule_kind=cfg.schedule,
        warmup=cfg.warmup,
        classes=classes if cfg.class_balance == "sampler" else None,
        rt=rt,
    )
    scores = detect.evaluate(
        fit.model,
        [t[0] for t in test],
        [t[1] for t in test],
        data.labels,
        rt=rt,
        segm=detect.has_masks(model_name),
    )
    return {
        "model": model_name,
        "condition": condition,
        "seed": seed,
        **scores,
        "n_train": len(images),
        "n_added": n_added,
        "steps": cfg.steps,
        "best_step": fit.best_step,
        "eval_steps": fit.eval_steps,
        "val_map50": fit.val_map50,
        "train_loss": fit.losses,
        **provenance,
    }


def _metrics(records: list[dict]) -> tuple[str, ...]:
    return (
        ("map", "map50", "segm_map", "segm_map50") if "segm_map" in records[0] else ("map", "map50")
    )


def headline(comparisons: dict[str, list[dict]], checks: dict[str, dict]) -> str:
    """Synthetic vs classical for detection in one line (the first model), or, when its
    validity check failed, that this budget cannot say."""
    for model, rows in comparisons.items():
        line = harness.headline(
            rows,
            checks[model],
            "map",
            "Synthetic vs classical augmentation for detection",
            model=model,
            shown="mAP@[.5:.95]",
            points=False,
        )
        if line:
            return line
    return "No synthetic arm was trained, so detection's synthetic vs classical is unanswered."


def _grid(data: _Data, path: Path, n: int = 16) -> None:
    """Synthetic training images with their boxes, so a reader can judge them."""
    items = (data.added.get(arms.UNGATED) or data.added.get(arms.GATED) or [])[:n]
    if not items:
        return
    tiles = []
    for item in items:
        pixels, target = data.sample(item)
        img = Image.fromarray(pixels).convert("RGB")
        draw = ImageDraw.Draw(img)
        for x0, y0, x1, y1 in target.boxes.tolist():
            draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline=(255, 40, 40))
        tiles.append(img)
    w, h = tiles[0].size
    cols = min(8, len(tiles))
    sheet = Image.new("RGB", (cols * w, -(-len(tiles) // cols) * h))
    for k, tile in enumerate(tiles):
        sheet.paste(tile, ((k % cols) * w, (k // cols) * h))
    sheet.save(path)


def run(
    params: Params,
    *,
    preprocessed: Path,
    generated: Path,
    gated: Path,
    pairs: Path,
    pairs_gated: Path,
    out_dir: Path,
    params_key: str,
) -> dict[str, float]:
    """Train and score every (model, condition, seed).

    Returns:
        <model>/<condition>/map_mean, _std, map50_mean, _std (segm_* with Mask R-CNN);
        <model>/<arm>/vs_<control>/<metric>_delta, _ci_low, _ci_high, _p; n_runs;
        skipped (1.0) when the dataset has neither masks nor boxes.
    """
    cfg = params.detect
    given = (preprocessed, generated, gated, pairs, pairs_gated)
    names = ("preprocessed", "generated", "gated", "pairs", "pairs_gated")
    folders = {k: Path(v) for k, v in zip(names, given, strict=True)}
    data = _Data(params, folders)
    if not data.subset:
        why = "the dataset has neither masks nor boxes: nothing to detect"
        with atomic_dir(out_dir) as tmp:
            atomic_write_json(tmp / DETECT_JSON, {"skipped": why})
        return {"skipped": 1.0}
    from defectgen.core import augment, copypaste, detect  # torch: not loaded by a skipped run

    if not data.split["test"]:
        raise DataError(f"{preprocessed}: no annotated test images; raise preprocess.split.test")
    if any(detect.has_masks(m) for m in cfg.models) and data.subset[0].mask is None:
        raise DataError(
            f"detect.models {cfg.models}: a Mask R-CNN needs masks and this dataset has boxes "
            "only; use a fasterrcnn_* model"
        )
    digests = [folders[k] / manifest.MANIFEST_NAME for k in folders]
    key = file_digest(*(p for p in digests if p.is_file()))[:16]
    resume = Resume(out_dir, key + params_key)
    records: list[dict] = []
    metrics_out: dict[str, float] = {}
    trained, skipped = data.pool.runnable()
    units = Units("detect", "detector", len(trained) * len(cfg.models) * len(cfg.seeds))
    for condition in trained:
        for model_name in cfg.models:
            for seed in cfg.seeds:
                unit_name = f"{model_name}.{condition}.{seed}"
                done, seconds = resume.ensure(
                    unit_name, _record_unit, params, data, model_name, condition, seed
                )
                units.tick(unit_name, seconds)
                if seconds is not None:
                    metrics_out[f"time/{model_name}/{metric_name(condition)}/{seed}_s"] = seconds
                records.append(json.loads((done / RECORD_JSON).read_text(encoding="utf-8")))
    summary: dict[str, dict] = {}
    comparisons: dict[str, list[dict]] = {}
    checks: dict[str, dict] = {}
    for model in cfg.models:
        mine = [r for r in records if r["model"] == model]
        if not mine:
            continue
        names = _metrics(mine)
        summary[model] = {}
        for condition in dict.fromkeys(r["condition"] for r in mine):
            runs = [r for r in mine if r["condition"] == condition]
            entry: dict = {
                "n_seeds": len(runs),
                "n_train": runs[0]["n_train"],
                "n_added": runs[0]["n_added"],
                "steps": runs[0]["steps"],
                "best_steps": [r["best_step"] for r in runs],
            }
            entry["budget_bound"] = validity.budget_bound([r["val_map50"] for r in runs])
            for m in names:
                s = stats.summary([r[m] for r in runs])
                entry[f"{m}_mean"], entry[f"{m}_std"] = s["mean"], s["std"]
            entry["ap_per_class_mean"] = {
                c: float(np.mean([r["ap_per_class"][c] for r in runs])) for c in data.labels
            }
            if condition in arms.COPY_PASTE:  # what was pasted where
                entry.update(copypaste.summarise(runs))
            summary[model][condition] = entry
        comparisons[model], checks[model] = harness.analyse(
            {
                m: {
                    c: {r["seed"]: r[m] for r in mine if r["condition"] == c}
                    for c in summary[model]
                }
                for m in names
            },
            data.plan,
            primary="map",
            higher=dict.fromkeys(names, True),
            constant=0.0,  # a detector that finds nothing
            bound={c: summary[model][c]["budget_bound"] for c in summary[model]},
        )
    with atomic_dir(out_dir) as tmp:
        atomic_write_json(
            tmp / DETECT_JSON,
            {
                "headline": headline(comparisons, checks),
                "validity": checks,
                "labels": data.labels,
                "protocol": {
                    "steps": cfg.steps,
                    "batch_size": cfg.batch_size,
                    "val_checks": cfg.evals,
                    "seeds": cfg.seeds,
                    "class_balance": cfg.class_balance,
                    "classical": augment.describe(
                        params.classical, boxes_only=data.subset[0].mask is None
                    ),
                    "copy_paste": copypaste.describe(params.copy_paste)
                    if arms.copy_paste_of(arms.UNGATED) in data.plan
                    else None,
                    "paired": "per seed the same init, batch order and flips in every condition",
                    # mAP is not a mean over images, so the test images are not resampled
                    "interval": "95 % Student-t over paired seed differences (the test "
                    "images are not resampled: mAP is not a mean over images)",
                    "scoring": "pycocotools COCOeval on the real test split: mAP@[.5:.95], "
                    "mAP@.5, per-class AP; instances are 8-connected mask regions or boxes",
                    "parent_boxes_up_to": cfg.parent_boxes_up_to,
                    "synthetic": cfg.synthetic,
                },
                "n_test": len(data.split["test"]),
                "n_val": len(data.split["val"]),
                "order": [c for c in data.plan if c not in skipped],
                "models": summary,
                "comparisons": comparisons,
                "left_out": data.left_out,
                "not_trained": skipped,  # per condition, why ("skipped" is the whole stage's)
            },
        )
        # curves go to curves/, copy-paste provenance to detect.json (copypaste.summarise)
        drop = ("eval_steps", "val_map50", "train_loss", "pasted", "short", "overlapping")
        table = [
            {
                k: (json.dumps(v) if isinstance(v, dict) else v)
                for k, v in r.items()
                if k not in drop
            }
            for r in records
        ]
        pd.DataFrame(table).to_parquet(tmp / RUNS_PARQUET, index=False)
        plot = [
            {
                "run": f"{m} {c}",
                "model": m,
                "condition": c,
                "map": e["map_mean"],
                "map50": e["map50_mean"],
            }
            for m, conds in summary.items()
            for c, e in conds.items()
        ]
        write_file(tmp / COMPARISON_CSV, pd.DataFrame(plot).to_csv(index=False).encode())
        _grid(data, tmp / BOXES_PNG)
        curves = Curves()
        for r in records:
            log = curves.logger(f"{r['model']}.{metric_name(r['condition'])}.{r['seed']}")
            for step, loss in zip(r["eval_steps"], r["train_loss"], strict=True):
                log(step, loss)
        curves.write(tmp / CURVES_DIR)
    resume.finish()
    for model, conds in summary.items():
        for condition, entry in conds.items():
            for key_, value in entry.items():
                if key_.endswith(("_mean", "_std")) and not isinstance(value, dict):
                    metrics_out[f"{model}/{metric_name(condition)}/{key_}"] = value
        metrics_out.update(comparison_metrics(model, comparisons[model]))
    metrics_out["n_runs"] = float(len(records))
    return metrics_out
