"""Does the gate's verdict on val foretell the test outcome? Per class of a finished
expansion run (`python -m experiments.expansion <dataset> --replicate K --run-dir R`):

    python -m experiments.gate_calibration sd-saliency-900 --replicate 0 --run-dir R
    python -m experiments.gate_calibration sd-saliency-900 --replicate 0 --run-dir R --write

1. The gate stage, at this commit, on the run's generated images (into R/calibration/gate;
   kept when it ran with the same params and code): its verdict, the rule that decided
   and its val interval per class.
2. Per class the test outcome, asked the same way (core.no_harm.check): real train images
   + the class's generated images against real + as many classical copies of its train
   images, scored on the test split, with the verdict judge's network (train.models'
   first: EfficientNet-Lite2 features, which the gate never sees) under the same linear
   judge, seeds and margin. No harm: the lower bound above -gate.margin; harm: the upper
   bound below 0; else unresolved.
3. Agreement: a passed class must not show harm; a failed one should not show no harm.

--write adds the replicate's rows to experiments/expansion/results/<dataset>/
gate-calibration.json (one entry per replicate, every class's two intervals) and rewrites
gate-calibration.md from it. The gate's generated images are the class's whole generated
set (the gate drops near-duplicates first; their count is given beside).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from defectgen import manifest
from defectgen.atomic import atomic_write_bytes, atomic_write_json
from defectgen.config import Params, parse_params
from defectgen.core import augment, classify, no_harm
from defectgen.real_images import load_images
from defectgen.seeds import derive_seed
from experiments.expansion.run import PROFILES, RESULTS, clean_commit, replicate_params

OUTCOMES = {"pass": "no harm", "fail": "harm", "inconclusive": "unresolved"}


def _features(trunk: classify.FrozenTrunk, images: list[np.ndarray]) -> np.ndarray:
    return trunk(classify.to_batch(images)).numpy() if images else np.zeros((0, 1280))


def run_gate(params: Params, run_dir: Path, commit: str) -> dict:
    """The gate at `commit` (this checkout's) on the run's generated images (resumed when
    done with the same params and commit)."""
    from defectgen.runner import execute, get_stage

    out = run_dir / "calibration" / "gate"
    marker = run_dir / "calibration" / "gate.key"
    key = f"{get_stage('gate').params_hash(params)}|{commit}"
    if not (out.is_dir() and marker.is_file() and marker.read_text() == key):
        inputs = {"preprocessed": run_dir / "preprocess", "generated": run_dir / "generate"}
        execute(get_stage("gate"), params, out_dir=out, inputs=inputs, track=False)
        atomic_write_bytes(marker, key.encode())
    return json.loads((out / "gate.json").read_text(encoding="utf-8"))


def test_outcomes(params: Params, run_dir: Path) -> dict[str, dict]:
    """Per generated class, core.no_harm.check on the test split with the judge's network."""
    rows = manifest.read_rows(run_dir / "preprocess")
    generated = manifest.read_rows(run_dir / "generate")
    labels = sorted({r["label"] for r in rows})
    size = params.preprocess.image_size
    train = [r for r in rows if r["split"] == "train" and r["in_subset"]]
    test = [r for r in rows if r["split"] == "test"]
    # the verdict judge's network where it is a probe, else Lite2: never the gate's Lite0
    network = classify.PROBES.get(params.train.models[0], "efficientnet-lite2")
    trunk = classify.FrozenTrunk(network=network)
    real_x = _features(trunk, load_images(run_dir / "preprocess", train, size))
    test_x = _features(trunk, load_images(run_dir / "preprocess", test, size))
    real_y = np.array([labels.index(r["label"]) for r in train])
    test_y = np.array([labels.index(r["label"]) for r in test])
    metric = classify.primary_metric(params.train.primary, test_y.tolist(), len(labels))
    out = {}
    for label in sorted({r["label"] for r in generated}):
        syn = [r for r in generated if r["label"] == label]
        rng = np.random.default_rng(derive_seed(params.seed, "calibration-classical", label))
        own = load_images(run_dir / "preprocess", [r for r in train if r["label"] == label], size)
        each = -(-2 * len(syn) // max(1, len(own)))  # a pool twice the synthetic count
        copies = [augment.classical_copy(params.classical, px, rng).image
                  for px in own for _ in range(each)]  # fmt: skip
        added = no_harm.Added(
            _features(trunk, load_images(run_dir / "generate", syn, size)),
            _features(trunk, copies),
        )
        result = no_harm.check(
            real_x, real_y, test_x, test_y, {labels.index(label): added}, metric=metric,
            n_classes=len(labels), seeds=params.gate.seeds,
            components=params.gate.judge_components,
            seed=derive_seed(params.seed, "calibration", label),
        )  # fmt: skip
        verdict = no_harm.answer(result, margin=params.gate.margin, harm="any")
        out[label] = {**result, "outcome": OUTCOMES[verdict]}
    return out


def agreement(verdict: str, outcome: str) -> str:
    """Whether the gate's verdict stood on test."""
    if verdict == "inconclusive" or outcome == "unresolved":
        return "undecided"
    right = (verdict == "pass") == (outcome == "no harm")
    return "right" if right else "wrong"


def rows(gate: dict, outcomes: dict[str, dict]) -> list[dict]:
    out = []
    for label, entry in gate["classes"].items():
        test = outcomes[label]
        out.append({
            "class": label, "verdict": entry["verdict"], "rule": entry["rule"],
            "val": entry.get("no_harm"), "pooled_val": gate.get("pooled"), "test": test,
            "outcome": test["outcome"], "agreement": agreement(entry["verdict"], test["outcome"]),
            "near_duplicates": entry["near_duplicates"], "reason": entry["reason"],
        })  # fmt: skip
    return out


HEADER = [
    "| dataset | replicate | commit | class | gate verdict (rule) | val | test | "
    "test outcome | agreement |",
    "|---|---:|---|---|---|---:|---:|---|---|",
]


def table_rows(dataset: str, record: dict) -> list[str]:
    """One line per class and replicate of a dataset's gate-calibration.json."""
    lines = []
    for k, rep in sorted(record["replicates"].items(), key=lambda kv: int(kv[0])):
        for r in rep["rows"]:
            val, test = no_harm.interval_text(r["val"]), no_harm.interval_text(r["test"])
            lines.append(
                f"| {dataset} | {k} | {rep['git']} | {r['class']} | {r['verdict']} "
                f"({r['rule']}) | {val} | {test} | {r['outcome']} | {r['agreement']} |"
            )
    return lines


def totals(rows: list[dict]) -> str:
    """The counts the gate issue's done-when reads, in words."""
    count = lambda key, value: sum(r[key] == value for r in rows)  # noqa: E731
    harmful = sum(r["verdict"] == "pass" and r["outcome"] == "harm" for r in rows)
    return (
        f"{len(rows)} classes: the gate inconclusive on {count('verdict', 'inconclusive')}, "
        f"passed {count('verdict', 'pass')} (of which harmful on test: {harmful}), failed "
        f"{count('verdict', 'fail')}; right on {count('agreement', 'right')}, wrong on "
        f"{count('agreement', 'wrong')}, undecided on {count('agreement', 'undecided')}."
    )


def markdown(dataset: str, record: dict) -> str:
    rows = [r for rep in record["replicates"].values() for r in rep["rows"]]
    lines = [
        f"# {dataset}: the gate's verdict on val beside the test outcome",
        "",
        "Written by `python -m experiments.gate_calibration` (its docstring says what each "
        "column is). Val: the gate's no-harm check (real + the class's images minus real "
        "+ as many classical copies, the gate's half of val, the gate's features); test: "
        "the same check on the test split with the verdict judge's network "
        "(EfficientNet-Lite2). Intervals: 95 %, over seeds and images.",
        "",
        *HEADER,
        *table_rows(dataset, record),
        "",
        totals(rows),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dataset")
    ap.add_argument("--replicate", type=int, default=0)
    ap.add_argument("--run-dir", type=Path, required=True)
    ap.add_argument("--profile", type=Path)
    ap.add_argument("--results", type=Path, help="default: experiments/expansion/results/<ds>")
    ap.add_argument("--toy", action="store_true", help="the run was made with --toy")
    ap.add_argument("--write", action="store_true")
    ap.add_argument(
        "--exploratory",
        action="store_true",
        help="allow uncommitted code (the record's commit then reads -dirty)",
    )
    args = ap.parse_args(argv)
    # read once, before any work: the code this process imported; refused on a dirty
    # tree (earlier results rewritten under experiments/expansion/results do not count)
    commit = clean_commit(args.exploratory or args.toy)
    profile = args.profile or PROFILES / f"{args.dataset}.yaml"
    raw = replicate_params(args.dataset, profile, args.toy, False, (), args.replicate)
    params = parse_params(raw, str(profile))
    gate = run_gate(params, args.run_dir, commit)
    found = rows(gate, test_outcomes(params, args.run_dir))
    print(json.dumps(found, indent=1, default=str))
    if args.write:
        folder = args.results or RESULTS / args.dataset
        path = folder / "gate-calibration.json"
        record = json.loads(path.read_text()) if path.is_file() else {"replicates": {}}
        record["replicates"][str(args.replicate)] = {"git": commit, "rows": found}
        atomic_write_json(path, record)
        atomic_write_bytes(folder / "gate-calibration.md", markdown(args.dataset, record).encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
