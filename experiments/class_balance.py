"""Which `train.class_balance` should be the default? One command per dataset.

    python -m experiments.class_balance elpv
    python -m experiments.class_balance elpv --minority defective --ratio 10 --tag 1to10
    python -m experiments.class_balance neu-det
    python -m experiments.class_balance sd-saliency-900

On the dataset's expansion profile (ingest and preprocess only, in the run folder), a
probe (`--model`, default the profile's first classifier: the judge, on features made
once) trains with each class-balance mode (core.classify.CLASS_BALANCE) on three sets,
every seed:

    real       the profile's few-shot subset
    oracle     + as many real train images from outside the subset per class as the
               profile's synthetic arm adds (generate.images_per_class; core.arms'
               class-matched oracle, short where a class has fewer outside)
    all-train  the whole train split

`--minority C --ratio R` makes the train split imbalanced first: class C keeps its
few-shot images and a seeded share of its other train images, so that the train split
holds R times more images of the largest other class than of C (as on a line where most
parts are fine); val and test stay as they are. Raw data and the run's manifest are not
changed; rows are dropped in memory.

Val picks each run's checkpoint (the protocol's selection); the default is chosen on
val. Test is scored too, with the protocol's interval (seeds and test images,
core.stats.seed_image_bootstrap), to show what each mode does to the validity check's
question: does more real data (oracle, all-train) beat the few-shot set? Writes
results/<dataset>/class-balance[-<tag>].{json,md} and .parquet (every run's prediction
on every test image).
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from defectgen import manifest
from defectgen.atomic import atomic_write_json
from defectgen.config import parse_params
from defectgen.core import arms, classify, stats
from defectgen.real_images import load_images
from defectgen.seeds import derive_seed
from experiments.expansion import run as expansion
from experiments.pilot import probe_features

SETS = ("real", "oracle", "all-train")


def imbalance(rows: list[dict], minority: str, ratio: float, seed: int) -> list[dict]:
    """The rows of an imbalanced train split: `minority` keeps its few-shot rows and a
    seeded share of its other train rows, so that its train count is the largest other
    class's divided by `ratio`. Val and test stay as they are (the rare class keeps
    enough test images for an interval)."""
    train = [r for r in rows if r["split"] == "train"]
    counts = arms.per_class(train)
    if minority not in counts:
        raise SystemExit(f"--minority {minority!r}: not a class here ({sorted(counts)})")
    target = max(n for c, n in counts.items() if c != minority) / ratio
    fixed = sum(1 for r in train if r["label"] == minority and r["in_subset"])
    rest = counts[minority] - fixed
    keep = min(1.0, max(0.0, (target - fixed) / rest)) if rest else 1.0
    rng = np.random.default_rng(derive_seed(seed, "imbalance", minority) % 2**63)
    return [r for r in rows if r["split"] != "train" or r["label"] != minority
            or r["in_subset"] or rng.random() < keep]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dataset", help="a profile name in experiments/expansion/profiles")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    ap.add_argument("--modes", nargs="+", default=list(classify.CLASS_BALANCE),
                    choices=classify.CLASS_BALANCE)  # fmt: skip
    ap.add_argument("--minority", default=None, help="a class to make rare (with --ratio)")
    ap.add_argument("--ratio", type=float, default=10.0)
    ap.add_argument("--run-dir", type=Path, default=None)
    ap.add_argument("--tag", default="")
    ap.add_argument(
        "--set",
        type=expansion.setting,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="one more override after the profile's, e.g. --set train.views=1",
    )
    ap.add_argument("--exploratory", action="store_true",
                    help="allow uncommitted changes (the result's git says -dirty)")  # fmt: skip
    ap.add_argument("--model", default=None, choices=list(classify.PROBES),
                    help="default: the profile's train.models[0]")  # fmt: skip
    args = ap.parse_args(argv)
    git = expansion.clean_commit(args.exploratory)
    start = time.monotonic()

    # 1. the data: the profile's ingest and preprocess, made imbalanced if asked
    profile = expansion.PROFILES / f"{args.dataset}.yaml"
    raw = expansion.build_params(
        args.dataset, profile, toy=False, track=False, settings=tuple(args.set)
    )
    run_dir = (args.run_dir or expansion.REPO / "runs" / "class-balance" / args.dataset).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    expansion.copy_data(raw, run_dir)
    expansion.run_stages(raw, run_dir, only=("ingest", "preprocess"))
    params = parse_params(raw, str(profile))
    pre = run_dir / "preprocess"
    every = manifest.read_rows(pre)
    rows = imbalance(every, args.minority, args.ratio, params.seed) if args.minority else every
    labels = sorted({r["label"] for r in rows})
    split = {s: [r for r in rows if r["split"] == s] for s in ("train", "val", "test")}
    subset = [r for r in split["train"] if r["in_subset"]]
    outside = [r for r in split["train"] if not r["in_subset"]]
    k = params.generate.images_per_class
    oracle, short = arms.draw_oracle(
        outside, {c: k for c in labels}, np.random.default_rng(derive_seed(params.seed, "cb"))
    )
    sets = {"real": subset, "oracle": subset + oracle, "all-train": split["train"]}

    # 2. the probe's features of every preprocessed image, once (cached in the run folder;
    # an imbalanced line reads its rows' features from the same cache)
    model = args.model or params.train.models[0]
    if model not in classify.PROBES:
        raise SystemExit(f"{model}: this measurement trains a probe ({list(classify.PROBES)})")
    cache = run_dir / f"features-{model}-views{params.train.views}.pt"
    size = params.train.image_size or rows[0]["width"]
    if cache.is_file():
        features = torch.load(cache, weights_only=True)
    else:
        train = [r for r in every if r["split"] == "train"]
        pixels = dict(zip((r["id"] for r in train), load_images(pre, train, size), strict=True))
        held = [r for r in every if r["split"] != "train"]
        trunk = classify.FrozenTrunk(network=classify.PROBES[model])
        trunk = trunk(classify.to_batch(load_images(pre, held, size)))
        features = {"train": probe_features(params, train, pixels, trunk[:0], model)["train"],
                    "held": dict(zip((r["id"] for r in held), trunk, strict=True))}  # fmt: skip
        torch.save(features, cache)
    for s in ("val", "test"):
        features[s] = torch.stack([features["held"][r["id"]] for r in split[s]])
    y = {s: torch.tensor([labels.index(r["label"]) for r in split[s]]) for s in ("val", "test")}
    metric = classify.primary_metric(params.train.primary, y["test"].tolist(), len(labels))

    # 3. every (mode, set, seed): the protocol's fit, selected on val, scored on test
    cfg = params.train
    runs, predictions = [], {}
    for mode in args.modes:
        for name, chosen in sets.items():
            x = torch.stack([features["train"][r["id"]] for r in chosen])
            t = torch.tensor([labels.index(r["label"]) for r in chosen])
            for seed in args.seeds:
                with torch.random.fork_rng():
                    torch.manual_seed(derive_seed(params.seed, "init", model, seed) % 2**63)
                    probe = classify.build(model, len(labels))
                fit = classify.fit(
                    probe, (x, t), (features["val"], y["val"]), steps=cfg.steps,
                    evals=cfg.evals, batch_size=cfg.batch_size, lr=cfg.lr,
                    weight_decay=cfg.weight_decay, schedule_kind=cfg.schedule,
                    warmup=cfg.warmup, select_by=metric, n_classes=len(labels),
                    augment=classify.probe_augment(cfg.views), class_balance=mode,
                    seed=derive_seed(params.seed, "fit", model, seed) % 2**63,
                )  # fmt: skip
                pred = classify.predict(fit.model, features["test"])
                predictions[mode, name, seed] = pred
                score = classify.score(metric, y["test"].tolist(), pred, len(labels))
                runs.append({"mode": mode, "set": name, "seed": seed, "n_train": len(chosen),
                             "val": max(fit.val_score), "test": score,
                             "best_step": fit.best_step})  # fmt: skip

    # 4. per mode: means, and more real data minus the few-shot set on test
    summary = {}
    table = pd.DataFrame(runs)
    for mode in args.modes:
        mine = table[table["mode"] == mode]
        entry = {name: {"val_mean": float(mine[mine["set"] == name]["val"].mean()),
                        "test_mean": float(mine[mine["set"] == name]["test"].mean())}
                 for name in sets}  # fmt: skip
        for name in ("oracle", "all-train"):
            a, c = (np.array([predictions[mode, n, s] for s in args.seeds]) for n in (name, "real"))
            entry[f"{name}_minus_real"] = stats.seed_image_bootstrap(
                a, c, y["test"].numpy(), metric, len(labels)
            )
        summary[mode] = entry
    test_rows = [
        {"mode": m, "set": n, "seed": s, "image_id": r["id"], "label": r["label"],
         "predicted": labels[p]}
        for (m, n, s), pred in predictions.items() for r, p in zip(split["test"], pred, strict=True)
    ]  # fmt: skip
    result = {
        "dataset": args.dataset,
        "command": "python -m experiments.class_balance " + " ".join(argv or sys.argv[1:]),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "git": git,
        "metric": metric,
        "model": model,
        "seeds": args.seeds,
        "counts": {s: arms.per_class(split[s]) for s in split}
        | {"few-shot": arms.per_class(subset)},
        "oracle_adds": arms.per_class(oracle),
        "oracle_short": short,
        "train_params": cfg.model_dump(mode="json"),
        "minutes": round((time.monotonic() - start) / 60, 1),
        "modes": summary,
        "runs": runs,
    }
    out = expansion.RESULTS / args.dataset
    out.mkdir(parents=True, exist_ok=True)
    stem = "class-balance" + (f"-{args.tag}" if args.tag else "")
    atomic_write_json(out / f"{stem}.json", result)
    pd.DataFrame(test_rows).to_parquet(out / f"{stem}.parquet", index=False)
    (out / f"{stem}.md").write_text(markdown(result), encoding="utf-8")
    print(markdown(result))
    return 0


def markdown(result: dict) -> str:
    metric = result["metric"]
    lines = [
        f"# Class balance: {result['dataset']}", "",
        f"`{result['command']}` ({result['date']}, git {result['git']}, "
        f"{result['minutes']} min). {result['model']}, the "
        f"protocol's fit ({result['train_params']['steps']} steps, best val {metric}), "
        f"seeds {result['seeds']}. Train/val/test per class: "
        f"{result['counts']['train']} / {result['counts']['val']} / {result['counts']['test']}; "
        f"few-shot {result['counts']['few-shot']}; the oracle adds {result['oracle_adds']}"
        + (f" (short: {result['oracle_short']})" if result["oracle_short"] else "") + ".", "",
        "| mode | real val / test | oracle val / test | all-train val / test | "
        "oracle - real (test) | all-train - real (test) |",
        "|---|---:|---:|---:|---|---|",
    ]  # fmt: skip
    for mode, e in result["modes"].items():
        cells = [f"{e[n]['val_mean'] * 100:.1f} / {e[n]['test_mean'] * 100:.1f}" for n in SETS]
        diffs = [stats.describe(e[f"{n}_minus_real"]) for n in ("oracle", "all-train")]
        lines.append(f"| {mode} | " + " | ".join(cells + diffs) + " |")
    lines += ["", f"Scores: {metric} in %, mean over seeds. Differences: 95 % interval of the "
              "two-level bootstrap over seeds and test images.", ""]  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
