"""The downstream pilot: where does a classifier stop improving, and does more real data
still help there? One command per dataset, before its value protocol is designed.

    python -m experiments.pilot neu-det --models squeezenet1_1 effnet_lite0_imagenet \\
        --sizes 10 20 50 --steps 1200 --evals 24 --seeds 0 1
    python -m experiments.pilot sd-saliency-900 --models unet --profile-subset \\
        --sizes 20 --steps 2000 --evals 20 --seeds 0 1 2
    python -m experiments.pilot sd-saliency-900 --models fasterrcnn_effnet_lite0_imagenet \\
        --profile-subset --sizes --steps 1500 --evals 15 --seeds 0 1 2 --tag detect

For each model it trains, with the train stage's own loop (core.classify.fit, the
params' schedule and augmentation), a few-shot set of k real train images per class for
each k in --sizes, and the whole train split (all-train, the upper bound), long and with
dense val checks. `--models unet` pilots the segment stage's U-Net instead
(core.segment.fit with the params' segment settings; val score: mean Dice), on the real
image + mask pairs; a detector name (core.detect.MODELS) pilots the detect stage's
detector (core.detect.fit with the params' detect settings; val score: mAP@.5) on the
real images with their boxes or masks. It writes results/<dataset>/pilot[-<tag>].json and .md:

    per model and condition: the val curve (mean over seeds), best steps and best val
    score per seed, the step where the mean curve first comes within --tol of its best
    (the plateau), and whether the best check is the last one (budget-bound);
    per model and size: all-train minus the few-shot set on val, paired over seeds;
    the recommendation the profile takes: the step budget past the largest condition's
    plateau, and the few-shot sizes that leave the upper bound room above them.

Only val is read here (the test split stays for the protocol itself). The data comes
from the dataset's expansion profile (ingest and preprocess only, in the run folder).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import torch

from defectgen import manifest
from defectgen.atomic import atomic_write_json
from defectgen.config import parse_params
from defectgen.core import classify, stats, validity
from defectgen.real_images import load_images
from defectgen.resume import Resume
from defectgen.seeds import derive_seed
from experiments.expansion.run import (
    PROFILES,
    REPO,
    RESULTS,
    build_params,
    clean_commit,
    copy_data,
    run_stages,
)

UNET = "unet"  # the segment stage's U-Net (core.segment), not a classifier
DETECTOR_PREFIXES = ("fasterrcnn_", "maskrcnn_")  # core.detect.MODELS, not classifiers


def few_shot(rows: list[dict], k: int, seed: int) -> list[dict]:
    """k train rows per class, drawn once per size (the same set for every model/seed)."""
    rng = np.random.default_rng(derive_seed(seed, "pilot-few-shot", k) % 2**63)
    out = []
    for label in sorted({r["label"] for r in rows}):
        own = [r for r in rows if r["label"] == label]
        out += [own[i] for i in sorted(rng.choice(len(own), min(k, len(own)), replace=False))]
    return out


def plateau(steps: list[int], curve: list[float], tol: float) -> int:
    """The first check at which the curve comes within `tol` of its best."""
    best = max(curve)
    return next(s for s, v in zip(steps, curve, strict=True) if v >= best - tol)


def train_one(params, model_name, rows, val, labels, size, seed, steps, evals) -> dict:
    """One pilot run; rows["x"] holds a probe's features, else rows["pixels"] the images."""
    cfg = params.train
    x = rows["x"] if "x" in rows else classify.to_batch(rows["pixels"])
    y = torch.tensor([labels.index(r["label"]) for r in rows["rows"]])
    if classify.on_features(model_name):
        augment = classify.probe_augment(cfg.views)
    else:
        augment = classify.protocol_augment(cfg.rotation, cfg.flips)
    with torch.random.fork_rng():
        torch.manual_seed(derive_seed(params.seed, "init", model_name, seed) % 2**63)
        model = classify.build(model_name, len(labels))
    fit = classify.fit(
        model, (x, y), val, steps=steps, evals=evals, batch_size=cfg.batch_size, lr=cfg.lr,
        augment=augment, seed=derive_seed(params.seed, "fit", model_name, seed) % 2**63,
        weight_decay=cfg.weight_decay, schedule_kind=cfg.schedule, warmup=cfg.warmup,
        select_by=rows["metric"], n_classes=len(labels), class_balance=cfg.class_balance,
    )  # fmt: skip
    return _record(model_name, size, seed, len(y), fit, fit.val_score)


def train_unet(params, rows, val, size, seed, steps, evals) -> dict:
    """One U-Net pilot run with the segment stage's settings, seeded as the stage seeds
    it; rows["pairs"] holds the (image, mask) pairs, val the val pairs."""
    from defectgen.core import segment

    cfg = params.segment
    images, masks = (list(t) for t in zip(*rows["pairs"], strict=True))
    fit = segment.fit(
        images, masks, steps=steps, batch_size=cfg.batch_size, lr=cfg.lr,
        seed=derive_seed(params.seed, "segment", seed), widths=tuple(cfg.widths), val=val,
        evals=evals, weight_decay=cfg.weight_decay, schedule_kind=cfg.schedule,
        warmup=cfg.warmup,
    )  # fmt: skip
    return _record(UNET, size, seed, len(images), fit, fit.val_dice)


def train_detector(params, model_name, data, val, labels, size, seed, steps, evals) -> dict:
    """One detector pilot run with the detect stage's settings, seeded as the stage
    seeds it; data and val are (images, targets)."""
    from defectgen.core import detect

    cfg = params.detect
    images, targets = data
    with torch.random.fork_rng():
        torch.manual_seed(derive_seed(params.seed, "detect-init", model_name, seed) % 2**63)
        model = detect.build(model_name, len(labels), int(images[0].shape[0]))
    fit = detect.fit(
        model, (images, targets), val, labels, steps=steps, evals=evals,
        batch_size=cfg.batch_size, lr=cfg.lr,
        seed=derive_seed(params.seed, "detect-fit", model_name, seed) % 2**63,
        weight_decay=cfg.weight_decay, schedule_kind=cfg.schedule, warmup=cfg.warmup,
    )  # fmt: skip
    return _record(model_name, size, seed, len(images), fit, fit.val_map50)


def _record(model: str, size, seed: int, n_train: int, fit, val: list[float]) -> dict:
    """One pilot run as pilot.json keeps it (`fit`: a classifier's or a U-Net's, `val`
    its val curve: accuracy-like, Dice or mAP@.5)."""
    return {
        "model": model, "size": size, "seed": seed, "n_train": n_train,
        "eval_steps": fit.eval_steps, "val": val, "loss": fit.losses,
        "best_step": fit.best_step, "best_val": max(val),
    }  # fmt: skip


def probe_features(
    params, train: list[dict], pixels: dict, val_x: torch.Tensor, model: str = classify.EFFNET_PROBE
) -> dict:
    """A probe's inputs, as the train stage makes them: per train id its views (seeded
    by its id), and val's plain features, on the probe's trunk (classify.PROBES)."""
    cfg = params.train
    trunk = classify.FrozenTrunk(network=classify.PROBES[model])
    x = classify.to_batch([pixels[r["id"]] for r in train])
    seeds = [derive_seed(params.seed, "views", r["id"]) % 2**63 for r in train]
    views = trunk.views(x, classify.protocol_augment(cfg.rotation, cfg.flips), cfg.views, seeds)
    return {"train": dict(zip((r["id"] for r in train), views, strict=True)), "val": trunk(val_x)}


def summarise(records: list[dict], tol: float) -> dict:
    out: dict = {}
    for model in dict.fromkeys(r["model"] for r in records):
        mine = [r for r in records if r["model"] == model]
        conds: dict = {}
        for size in dict.fromkeys(r["size"] for r in mine):
            runs = [r for r in mine if r["size"] == size]
            steps = runs[0]["eval_steps"]
            curve = np.mean([r["val"] for r in runs], axis=0).tolist()
            conds[str(size)] = {
                "n_train": runs[0]["n_train"],
                "seeds": [r["seed"] for r in runs],
                "best_step": [r["best_step"] for r in runs],
                "best_val": [r["best_val"] for r in runs],
                "best_val_mean": float(np.mean([r["best_val"] for r in runs])),
                "plateau_step": plateau(steps, curve, tol),
                "budget_bound": validity.budget_bound([r["val"] for r in runs]),
                "eval_steps": steps,
                "val_curve_mean": curve,
            }
        upper = {r["seed"]: r["best_val"] for r in mine if r["size"] == "all-train"}
        room = {}
        for size in conds:
            if size == "all-train":
                continue
            mine_k = {r["seed"]: r["best_val"] for r in mine if str(r["size"]) == size}
            seeds = sorted(set(upper) & set(mine_k))
            room[size] = stats.paired([upper[s] for s in seeds], [mine_k[s] for s in seeds])
        biggest = conds.get("all-train") or max(conds.values(), key=lambda e: e["n_train"])
        out[model] = {
            "conditions": conds,
            "all_train_minus_few_shot": room,
            "recommended_steps": int(round(1.25 * biggest["plateau_step"], -1)),
            # room: the upper bound's gain resolved, its interval above the tolerance
            "sizes_with_room": [s for s, c in room.items() if c["ci"] and c["ci"][0] > tol],
        }
    return out


def markdown(result: dict) -> str:
    lines = [
        f"# Downstream pilot: {result['dataset']}",
        "",
        f"`{result['command']}` ({result['date']}, git {result['git']}). Val only; "
        f"metric {result['metric']}"
        + (f" (U-Net: {result['segment_metric']})" if "segment_metric" in result else "")
        + (f" (detectors: {result['detect_metric']})" if "detect_metric" in result else "")
        + f"; {result['steps']} steps, {result['evals']} val checks, "
        f"seeds {result['seeds']}; plateau: within {result['tol'] * 100:g} pp of the best.",
        "",
    ]
    for model, m in result["models"].items():
        lines += [f"## {model}", "",
                  "| condition | n train | best val (mean) | best steps | plateau step "
                  "| budget-bound |", "|---|---:|---:|---|---:|---|"]  # fmt: skip
        for size, c in m["conditions"].items():
            name = size if size in ("all-train", "subset") else f"{size} per class"
            lines.append(
                f"| {name} | {c['n_train']} | {c['best_val_mean'] * 100:.1f} % | "
                f"{', '.join(map(str, c['best_step']))} | {c['plateau_step']} | "
                f"{'yes' if c['budget_bound'] else 'no'} |"
            )
        lines += ["", "| few-shot size | all-train minus it (val) |", "|---|---|"]
        for size, r in m["all_train_minus_few_shot"].items():
            name = size if size == "subset" else f"{size} per class"
            lines.append(f"| {name} | {stats.describe(r)} |")
        lines += ["", f"Recommended step budget: {m['recommended_steps']} (1.25x the largest "
                  "condition's plateau); sizes whose all-train gain is resolved above "
                  f"{result['tol'] * 100:g} pp: "
                  f"{m['sizes_with_room'] or 'none'}.", ""]  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dataset", help="a profile name in experiments/expansion/profiles")
    ap.add_argument("--models", nargs="+", default=["squeezenet1_1"])
    ap.add_argument("--sizes", nargs="*", type=int, default=[10, 20, 50])
    ap.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="overrides of params.yaml (default: the dataset's expansion profile)",
    )
    ap.add_argument(
        "--profile-subset",
        action="store_true",
        help="also train the profile's own few-shot subset ('subset')",
    )
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--evals", type=int, default=24)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--tol", type=float, default=0.01, help="plateau tolerance (fraction)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--run-dir", type=Path, default=None)
    ap.add_argument("--tag", default="", help="results/<dataset>/pilot-<tag>.{json,md}")
    ap.add_argument("--results", type=Path, default=None,
                    help="default: experiments/expansion/results/<dataset>")  # fmt: skip
    ap.add_argument("--exploratory", action="store_true",
                    help="allow uncommitted changes (the result's git says -dirty)")  # fmt: skip
    args = ap.parse_args(argv)
    git = clean_commit(args.exploratory)

    profile = args.profile or PROFILES / f"{args.dataset}.yaml"
    raw = build_params(args.dataset, profile, toy=False, track=False)
    run_dir = (args.run_dir or REPO / "runs" / "pilot" / args.dataset).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    copy_data(raw, run_dir)
    run_stages(raw, run_dir, only=("ingest", "preprocess"))
    params = parse_params(raw, str(profile))
    pre = run_dir / "preprocess"
    rows = manifest.read_rows(pre)
    labels = sorted({r["label"] for r in rows})
    train = [r for r in rows if r["split"] == "train"]
    val_rows = [r for r in rows if r["split"] == "val"]
    size = params.train.image_size or rows[0]["width"]
    val = (classify.to_batch(load_images(pre, val_rows, size)),
           torch.tensor([labels.index(r["label"]) for r in val_rows]))  # fmt: skip
    test_labels = [labels.index(r["label"]) for r in rows if r["split"] == "test"]
    metric = classify.primary_metric(params.train.primary, test_labels, len(labels))
    sets: dict = {k: few_shot(train, k, params.seed) for k in args.sizes}
    if args.profile_subset:
        sets["subset"] = [r for r in train if r["in_subset"]]
    sets["all-train"] = train
    pixels = dict(zip((r["id"] for r in train), load_images(pre, train, size), strict=True))

    # a killed pilot resumes its finished runs; other settings start a fresh folder
    blob = json.dumps([args.steps, args.evals, params.train.model_dump(mode="json"),
                       params.segment.model_dump(mode="json"),
                       params.detect.model_dump(mode="json")])  # fmt: skip
    resume = Resume(run_dir / "pilot", hashlib.sha256(blob.encode()).hexdigest()[:16])
    records = []
    for model in args.models:
        jobs = []
        if model == UNET:
            jobs = unet_jobs(params, pre, sets, val_rows, args)
            for done, _ in resume.ensure_many(jobs, workers=args.workers):
                records.append(json.loads((done / "record.json").read_text(encoding="utf-8")))
            continue
        if model.startswith(DETECTOR_PREFIXES):
            jobs = detect_jobs(params, pre, sets, rows, labels, model, args)
            for done, _ in resume.ensure_many(jobs, workers=args.workers):
                records.append(json.loads((done / "record.json").read_text(encoding="utf-8")))
            continue
        probe = classify.on_features(model)
        if probe:  # the frozen trunk's features once; the runs take seconds, here
            features = probe_features(params, train, pixels, val[0], model)
        for k, chosen in sets.items():
            data = {"rows": chosen, "pixels": [pixels[r["id"]] for r in chosen], "metric": metric}
            model_val = val
            if probe:
                data["x"] = torch.stack([features["train"][r["id"]] for r in chosen])
                model_val = (features["val"], val[1])
            for seed in args.seeds:
                jobs.append((f"{model}.{k}.{seed}", _unit, (params, model, data, model_val,
                             labels, k, seed, args.steps, args.evals)))  # fmt: skip
        for done, _ in resume.ensure_many(jobs, workers=1 if probe else args.workers):
            records.append(json.loads((done / "record.json").read_text(encoding="utf-8")))
    detectors = [m for m in args.models if m.startswith(DETECTOR_PREFIXES)]
    result = {
        "dataset": args.dataset,
        "command": "python -m experiments.pilot " + " ".join(argv or sys.argv[1:]),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "git": git,
        "metric": metric,
        **({"segment_metric": "mean val Dice"} if UNET in args.models else {}),
        **({"detect_metric": "val mAP@.5"} if detectors else {}),
        "steps": args.steps, "evals": args.evals, "seeds": args.seeds, "tol": args.tol,
        "train_params": params.train.model_dump(mode="json"),
        **({"segment_params": params.segment.model_dump(mode="json")} if UNET in args.models
           else {}),
        **({"detect_params": params.detect.model_dump(mode="json")} if detectors else {}),
        "models": summarise(records, args.tol),
        "runs": records,
    }  # fmt: skip
    out = args.results or RESULTS / args.dataset
    out.mkdir(parents=True, exist_ok=True)
    stem = f"pilot-{args.tag}" if args.tag else "pilot"
    atomic_write_json(out / f"{stem}.json", result)
    (out / f"{stem}.md").write_text(markdown(result), encoding="utf-8")
    print(markdown(result))
    return 0


def unet_jobs(params, pre: Path, sets: dict, val_rows: list[dict], args) -> list[tuple]:
    """The U-Net's resume units: the real pairs (images at their preprocessed size, as
    the segment stage trains) of each set, every seed."""
    from defectgen.stages.segment import _load

    masked = {k: [r for r in chosen if r["mask_path"]] for k, chosen in sets.items()}
    both = {r["id"]: r for chosen in masked.values() for r in chosen}
    if not both:
        raise SystemExit(f"{args.dataset}: no train image has a mask; the U-Net needs pairs")
    pairs = dict(zip(both, zip(*_load(pre, list(both.values())), strict=True), strict=True))
    val = _load(pre, [r for r in val_rows if r["mask_path"]])
    jobs = []
    for k, chosen in masked.items():
        data = {"pairs": [pairs[r["id"]] for r in chosen]}
        for seed in args.seeds:
            jobs.append((f"{UNET}.{k}.{seed}", _unet_unit,
                         (params, data, val, k, seed, args.steps, args.evals)))  # fmt: skip
    return jobs


def detect_jobs(
    params, pre: Path, sets: dict, rows: list[dict], labels: list[str], model: str, args
) -> list[tuple]:
    """The detector's resume units: the real images with their instances (8-connected
    mask regions or boxes, as the detect stage reads them) of each set, every seed."""
    from defectgen.annotations import Item, annotate
    from defectgen.stages.detect import _sample

    def samples(chosen: list[dict]) -> list:
        items = [annotate(Item(r, pre), {}, params.detect.parent_boxes_up_to) for r in chosen]
        return [_sample(i, labels) for i in items if i.mask is not None or i.boxes is not None]

    val = tuple(map(list, zip(*samples([r for r in rows if r["split"] == "val"]), strict=True)))
    if not val:
        raise SystemExit(f"{args.dataset}: no val image has a mask or boxes; a detector "
                         "pilot selects by val mAP@.5")  # fmt: skip
    jobs = []
    for k, chosen in sets.items():
        data = tuple(map(list, zip(*samples(chosen), strict=True)))
        for seed in args.seeds:
            jobs.append((f"{model}.{k}.{seed}", _detect_unit,
                         (params, model, data, val, labels, k, seed, args.steps,
                          args.evals)))  # fmt: skip
    return jobs


def _unit(unit: Path, *a) -> None:
    atomic_write_json(unit / "record.json", train_one(*a))


def _unet_unit(unit: Path, *a) -> None:
    atomic_write_json(unit / "record.json", train_unet(*a))


def _detect_unit(unit: Path, *a) -> None:
    atomic_write_json(unit / "record.json", train_detector(*a))


if __name__ == "__main__":
    raise SystemExit(main())
