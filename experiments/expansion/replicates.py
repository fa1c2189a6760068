"""A research claim over replicates of the whole expansion, recomputed from the files.

Each replicate (`python -m experiments.expansion <dataset> --replicate K`) has its own
split, few-shot draw and generator run, and keeps every classifier's prediction on every
test image beside its results.json (train-test_predictions.parquet). Here the replicates
of one dataset are read back and each question of the value table is answered over all
of them with core.stats.replicate_bootstrap: the replicates resampled, then each one's
seeds and test images. A research verdict needs

    - at least MIN_REPLICATES replicates;
    - the reference arm (the class-matched oracle, else all-train) above real over the
      replicates, with every replicate on the same side, and no replicate's arms
      budget-bound or degenerate (each replicate's own validity record);
    - the synthetic arm's Holm-adjusted p below 0.05 (one family per model: the arm
      against real, its classical control and its oracle), and every replicate's delta
      of the same sign.

    python -m experiments.expansion.replicates elpv           # print the claim as JSON
    python -m experiments.expansion.replicates elpv --write   # results/elpv/replicates.md
    python -m experiments.expansion.replicates --check        # exit 1 when one differs

replicates.md says, per dataset: each replicate's command, commit and cost; the protocol
(the judge and the network the generator's instruments use, the class balance, the
budget); each condition's class mix; every question's difference over the replicates
with each replicate's own; the verdicts and why any is withheld; and how to recompute it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from defectgen.core import arms, stats, validity
from experiments.expansion.run import RESULTS

MIN_REPLICATES = 3
# the U-Net's claim needs 2: a segmentation replicate costs about 40 min on 2 CPUs, and
# the verdicts issue accepts 2 where 3 do not fit (its t floor over 2 is wide)
MIN_REPLICATES_SEGMENTATION = 2
PREDICTIONS = "train-test_predictions.parquet"
SEG_SCORES = "segment-test_scores.parquet"  # every U-Net's per-image scores
UNET = "U-Net"
TOO_FEW = "too few replicates"
WITHHELD = "withheld"  # the claim cannot carry a verdict: its reasons say why
DISAGREE = "replicates disagree in sign"


def replicate_folders(dataset_dir: Path) -> list[Path]:
    """The folders of a dataset's replicates that kept every unit's score: replicate 0 is
    the dataset's folder, replicate K its replicate-K/ (results from before the
    predictions were kept are left out: they cannot be recomputed)."""
    folders = [dataset_dir, *sorted(dataset_dir.glob("replicate-*"),
                                    key=lambda p: int(p.name.split("-")[1]))]  # fmt: skip
    return [f for f in folders if (f / "results.json").is_file()
            and ((f / PREDICTIONS).is_file() or (f / SEG_SCORES).is_file())]  # fmt: skip


class Replicate:
    """One replicate's results.json and its per-image outcomes, as (seeds, images) arrays
    per (model, condition): each classifier's predicted classes, and the U-Net's
    per-image score in its primary metric; per model its metric, the images' classes
    (the bootstrap's strata) and its validity record."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.result = json.loads((folder / "results.json").read_text(encoding="utf-8"))
        clf = self.result["classification"]
        self.labels = clf["labels"]
        self.metric: dict[str, str] = {}
        self.y: dict[str, list[int]] = {}
        self.validity: dict[str, dict] = {}
        self.pred: dict[tuple[str, str], dict[int, np.ndarray]] = {}
        if (folder / PREDICTIONS).is_file():
            table = pd.read_parquet(folder / PREDICTIONS)
            self._read(table, "predicted", lambda v: self.labels.index(v))
            for model in clf["comparisons"]:
                self.metric[model] = clf["primary_metric"]
                self.validity[model] = clf["validity"][model]
        seg = self.result.get("segmentation") or {}
        # results.json kept the segment stage's primary metric from 2026-12-07 (third
        # session) on; before, its validity record names the same metric
        metric = seg.get("primary_metric") or (seg.get("validity") or {}).get("metric")
        if (folder / SEG_SCORES).is_file() and metric:
            table = pd.read_parquet(folder / SEG_SCORES).assign(model=UNET)
            self._read(table, metric, float)
            self.metric[UNET], self.validity[UNET] = metric, seg["validity"]

    def _read(self, table: pd.DataFrame, column: str, value) -> None:
        for model, part in table.groupby("model"):
            images = sorted(part["image_id"].unique())
            truth = part.drop_duplicates("image_id").set_index("image_id")["label"]
            self.y[model] = [self.labels.index(truth[i]) for i in images]
            for (condition, seed), rows in part.groupby(["condition", "seed"]):
                by_image = rows.set_index("image_id")[column]
                self.pred.setdefault((model, condition), {})[int(seed)] = np.array(
                    [value(by_image[i]) for i in images]
                )

    def pair(self, model: str, arm: str, control: str) -> tuple | None:
        """(arm, control, y) over the seeds both trained, or None where one did not."""
        a, c = self.pred.get((model, arm)), self.pred.get((model, control))
        if not a or not c:
            return None
        seeds = sorted(set(a) & set(c))
        return np.stack([a[s] for s in seeds]), np.stack([c[s] for s in seeds]), self.y[model]

    def arm(self, model: str) -> str | None:
        """The synthetic arm the run compared with its classical control (the gated one
        where it trained, else the ungated)."""
        done = {k[1] for k in self.pred if k[0] == model}
        return next((a for a in arms.ADDITIVE if {a, arms.classical_of(a)} <= done), None)


def _difference(reps: list[Replicate], model: str, arm: str, control: str, metric: str):
    pairs = [r.pair(model, arm, control) for r in reps]
    if any(p is None for p in pairs):
        return None
    result = stats.replicate_bootstrap(pairs, metric, len(reps[0].labels))  # classes or strata
    per = result.pop("per_replicate")  # each replicate's own delta and interval
    return {"arm": arm, "control": control, "metric": metric, **result,
            "per_replicate": [p["delta"] for p in per],
            "per_replicate_ci": [p["ci"] for p in per]}  # fmt: skip


def _allowed(reps: list[Replicate], model: str, reference: dict | None) -> tuple[bool, list[str]]:
    """Whether the replicates can carry a verdict, and why not."""
    reasons = []
    need = MIN_REPLICATES_SEGMENTATION if model == UNET else MIN_REPLICATES
    if len(reps) < need:
        reasons.append(f"{TOO_FEW} ({len(reps)} of the {need} a claim needs)")
    if reference is None:
        reasons.append("no replicate trained the reference arm")
    elif reference["ci"][0] <= 0 or not reference["agree_in_sign"]:
        reasons.append(f"{reference['arm']} does not beat real over the replicates "
                       f"({stats.describe(reference)}; per replicate "
                       f"{_spread(reference)})")  # fmt: skip
    for k, r in enumerate(reps):
        check = r.validity[model]
        name = f"replicate {r.result.get('replicate', k)}"
        if check["budget_bound"]:
            reasons.append(f"{name}: budget-bound {', '.join(check['budget_bound'])}")
        if check["degenerate"]:
            reasons.append(f"{name}: degenerate {', '.join(sorted(check['degenerate']))}")
    return not reasons, reasons


def _spread(row: dict) -> str:
    return " / ".join(stats.pct(d) for d in row["per_replicate"])


def claim(dataset_dir: Path) -> dict | None:
    """The dataset's research claim per judge over its replicates, or None when no
    replicate kept its predictions."""
    reps = [Replicate(f) for f in replicate_folders(dataset_dir)]
    if not reps:
        return None
    out = {"dataset": reps[0].result["dataset"],
           "replicates": [r.result.get("replicate", 0) for r in reps],
           "commits": sorted({r.result["git"] for r in reps}), "models": {}}  # fmt: skip
    for model, metric in reps[0].metric.items():
        mine = [r for r in reps if model in r.metric]
        arm = reps[0].arm(model)
        if arm is None or any(r.arm(model) != arm for r in mine):
            continue
        reference_name = validity.reference_arm({c for (m, c) in reps[0].pred if m == model})
        reference = reference_name and _difference(mine, model, reference_name, arms.REAL, metric)
        allowed, reasons = _allowed(mine, model, reference)
        controls = {"real": arms.REAL, "classical": arms.classical_of(arm),
                    "oracle": arms.oracle_of(arm)}  # fmt: skip
        family = {f"synthetic_minus_{name}": d for name, control in controls.items()
                  if (d := _difference(mine, model, arm, control, metric))}  # fmt: skip
        adjusted = stats.holm([d["p_value"] for d in family.values()])
        for row, p in zip(family.values(), adjusted, strict=True):
            row["p_adjusted"] = p
            row["verdict"] = (WITHHELD if not allowed
                              else DISAGREE if not row["agree_in_sign"]
                              else stats.verdict(row))  # fmt: skip
        rows = {"reference_minus_real": reference,
                "all_train_minus_real": _difference(mine, model, arms.ALL_TRAIN, arms.REAL, metric),
                "classical_minus_real": _difference(mine, model, arms.classical_of(arm),
                                                    arms.REAL, metric),
                **family}  # fmt: skip
        out["models"][model] = {"arm": arm, "metric": metric, "verdicts_allowed": allowed,
                                "reasons": reasons,
                                "replicates": [r.result.get("replicate", 0) for r in mine],
                                **rows}  # fmt: skip
    return out


QUESTIONS = (
    ("reference_minus_real", "the validity check's reference minus real"),
    ("all_train_minus_real", "all-train minus real"),
    ("classical_minus_real", "classical minus real"),
    ("synthetic_minus_real", "synthetic minus real"),
    ("synthetic_minus_classical", "synthetic minus classical"),
    ("synthetic_minus_oracle", "synthetic minus the oracle"),
)
MARKDOWN = "replicates.md"


def _mix(folder: Path, model: str) -> list[str]:
    """Each condition's train images per class (replicate 0's first seed)."""
    runs = pd.read_parquet(folder / "train-runs.parquet")
    runs = runs[runs["model"] == model].drop_duplicates("condition")
    counts = {r.condition: json.loads(r.n_train) for r in runs.itertuples()}
    labels = sorted({c for v in counts.values() for c in v})
    lines = [f"| condition | {' | '.join(labels)} |", "|---|" + "---:|" * len(labels)]
    lines += [f"| {c} | {' | '.join(str(v.get(k, 0)) for k in labels)} |"
              for c, v in counts.items()]  # fmt: skip
    return lines


def markdown(dataset_dir: Path) -> str | None:
    """replicates.md of one dataset, or None without a replicate that kept its scores."""
    found = claim(dataset_dir)
    if found is None:
        return None
    reps = [Replicate(f) for f in replicate_folders(dataset_dir)]
    protocol = reps[0].result["classification"]["protocol"]
    name = found["dataset"]
    lines = [
        f"# {name}: the value claim over {len(reps)} replicate(s) of the whole expansion",
        "",
        "Written by `python -m experiments.expansion.replicates "
        f"{dataset_dir.name} --write` from the files beside it; a replicate is `python -m "
        f"experiments.expansion {dataset_dir.name} --replicate K` (the params' seed plus K: "
        "a fresh split, few-shot draw and generator run), run from a clean commit.",
        "",
        "| replicate | commit | command | wall time |",
        "|---:|---|---|---:|",
        *[f"| {r.result.get('replicate', 0)} | {r.result['git']} | `{r.result['command']}` | "
          f"{r.result['wall_s_total'] / 60:.1f} min |" for r in reps],
        "",
        f"Protocol (replicate 0): {protocol['steps']} optimizer steps at batch "
        f"{protocol['batch_size']}, {len(protocol['seeds'])} paired seeds, "
        f"{protocol['schedule']}, {protocol['selection']}; class balance "
        f"`{protocol.get('class_balance', 'none')}`. "
        f"Classical control: {protocol['classical']}.",
        "",
    ]  # fmt: skip
    for model, c in found["models"].items():
        lines += [
            f"## {model}",
            "",
            *([f"The judge: {protocol['models'].get(model, model)}.", "",
               "Train images per class in each condition (replicate 0): the compared arms "
               "add as many images per class; all-train is the whole train split.", "",
               *_mix(reps[0].folder, model)] if model != UNET else
              ["The segment stage's U-Net, scored per test image (segment-test_scores."
               "parquet); its primary metric as segment.json chose it."]),
            "",
            f"Differences in test {c['metric'].replace('_', ' ')} over the replicates "
            "(95 % interval: "
            "core.stats.replicate_bootstrap, the replicates resampled, then each one's "
            "seeds and test images within class; never narrower than the t interval over "
            "the replicates' own differences), each replicate's own (over its seeds and "
            "test images), and the verdict:",
            "",
            "| question | arm - control | over the replicates | "
            + " | ".join(f"replicate {k}" for k in c["replicates"]) + " | verdict |",
            "|---|---|---:|" + "---:|" * len(c["replicates"]) + "---|",
        ]  # fmt: skip
        for key, what in QUESTIONS:
            row = c.get(key)
            if row is None:
                continue
            each = [stats.describe({"delta": d, "ci": ci, "p_value": None})
                    for d, ci in zip(row["per_replicate"], row["per_replicate_ci"],
                                     strict=True)]  # fmt: skip
            lines.append(f"| {what} | {row['arm']} - {row['control']} | {stats.describe(row)} | "
                         f"{' | '.join(each)} | {row.get('verdict', '-')} |")  # fmt: skip
        lines += [
            "",
            "Verdicts: " + ("allowed." if c["verdicts_allowed"]
                            else "withheld: " + "; ".join(c["reasons"]) + "."),
            "",
        ]  # fmt: skip
    lines += [
        "Recompute: `python -m experiments.expansion.replicates "
        f"{dataset_dir.name}` prints every number above as JSON, from each replicate's "
        "`train-test_predictions.parquet` (one row per model, condition, seed and test "
        "image: its true and predicted class) and results.json.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dataset", nargs="?", help="a folder under experiments/expansion/results")
    ap.add_argument("--write", action="store_true", help=f"write its {MARKDOWN}")
    ap.add_argument("--check", action="store_true",
                    help=f"exit 1 when a dataset's {MARKDOWN} differs from its files")  # fmt: skip
    args = ap.parse_args(argv)
    if args.check:
        stale = [
            d.name
            for d in sorted(RESULTS.iterdir())
            if d.is_dir()
            and (text := markdown(d)) is not None
            and (not (d / MARKDOWN).is_file() or (d / MARKDOWN).read_text("utf-8") != text)
        ]
        for name in stale:
            print(
                f"{RESULTS / name / MARKDOWN}: differs from the files; run python -m "
                f"experiments.expansion.replicates {name} --write",
                file=sys.stderr,
            )
        return 1 if stale else 0  # fmt: skip
    if args.dataset is None:
        ap.error("name a dataset, or --check")
    folder = RESULTS / args.dataset
    found = claim(folder)
    if found is None:
        print(f"{folder}: no replicate with {PREDICTIONS}", file=sys.stderr)
        return 1
    if args.write:
        (folder / MARKDOWN).write_text(markdown(folder), encoding="utf-8")
    else:
        print(json.dumps(found, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
