"""The "does it help?" and gate tables of docs/results.md, and the README's short value
table, written from the committed results.json files.

    python -m experiments.expansion.table            # print the tables
    python -m experiments.expansion.table --write    # put them into docs/results.md, README.md
    python -m experiments.expansion.table --check    # exit 1 when a copy differs

One row per dataset and judge: the research claim over the dataset's replicates of the
whole expansion (experiments.expansion.replicates: the replicates, their seeds and their
test images resampled), each difference against the few-shot set with its interval over
all three, the synthetic arm against its classical control with every replicate's own
delta beside it, and the verdict (Holm-adjusted over the arm's comparisons, and only
when the replicates agree in sign and the class-matched oracle beats the few-shot set
over them). A dataset whose results predate the kept predictions shows its one run
(classifiers, then the U-Net and the detector where it trained them), marked as such:
its interval covers the seeds only.

The gate table: per class, the gate's cross-fitted utility estimate with its minimum
detectable effect and the train images at which an effect of its size would resolve
(the power analysis of an inconclusive verdict), its verdict, and the class's test
outcome (its F1 with its synthetic images minus with as many classical copies), with the
pooled agreement counts under it. docs/results.md holds each table between two marker
lines, the README the short value table (dataset, judge, replicates, synthetic minus
classical, verdict); tests/test_value_table.py fails when a copy differs from the files.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from defectgen.core import arms, stats
from experiments.expansion import replicates
from experiments.expansion.run import REPO, RESULTS

DATASETS = ("elpv", "neu-det", "sd-saliency-900")
START = "<!-- value table: python -m experiments.expansion.table --write -->"
END = "<!-- end of the value table -->"
GATE_START = "<!-- gate table: python -m experiments.expansion.table --write -->"
CAL_START = "<!-- calibration table: python -m experiments.expansion.table --write -->"
CAL_END = "<!-- end of the calibration table -->"
GATE_END = "<!-- end of the gate table -->"
SHORT_START = "<!-- short value table: python -m experiments.expansion.table --write -->"
SHORT_END = "<!-- end of the short value table -->"
README = REPO / "README.md"
RESULTS_DOC = REPO / "docs" / "results.md"
METRIC_NAMES = {"s_measure": "S-measure", "dice": "Dice", "map": "mAP@[.5:.95]", "map_50": "mAP@.5"}


def _find(comparisons: list[dict], arm: str, control: str, metric: str) -> dict | None:
    return next((c for c in comparisons if (c["arm"], c["control"], c["metric"])
                 == (arm, control, metric)), None)  # fmt: skip


def _cell(comparison: dict | None) -> str:
    return "-" if comparison is None else stats.describe({**comparison, "p_value": None})


def _row(
    dataset: str, model: str, few_shot, metric: str, comparisons: list[dict], check: dict
) -> str:
    """A row of one run from before the predictions were kept: seeds-only intervals."""
    arm = next((a for a in arms.ADDITIVE
                if _find(comparisons, a, arms.classical_of(a), metric)), None)  # fmt: skip
    vs_classical = arm and _find(comparisons, arm, arms.classical_of(arm), metric)
    verdict = vs_classical["verdict"] if vs_classical else "no synthetic arm trained"
    return (
        f"| [{dataset}](experiments/expansion/results/{dataset}/results.md) | {model} | "
        f"1 (earlier protocol: seeds only) | {few_shot} | "
        f"{METRIC_NAMES.get(metric, metric.replace('_', ' '))} | "
        f"{'yes' if check['verdicts_allowed'] else 'no'} | - | "
        f"{_cell(check['all_train_minus_real'])} | "
        f"{_cell(arm and _find(comparisons, arms.classical_of(arm), arms.REAL, metric))} | "
        f"{_cell(arm and _find(comparisons, arm, arms.REAL, metric))} | "
        f"{_cell(vs_classical)} | - | {arm or '-'}: {verdict} (one run) |"
    )


def _few_shot(result: dict):
    per_class = result["params"]["preprocess"]["subset"]
    return per_class.get("per_class") or f"alpha {per_class.get('alpha')}"


def claim_rows(claim: dict, few_shot) -> list[str]:
    """The rows of one dataset's research claim (replicates.claim): one per judge."""
    out = []
    dataset = claim["dataset"]
    for model, c in claim["models"].items():
        metric = c["metric"]
        vs_classical = c.get("synthetic_minus_classical")
        spread = "-" if vs_classical is None else " / ".join(
            stats.pct(d) for d in vs_classical["per_replicate"])  # fmt: skip
        verdict = vs_classical["verdict"] if vs_classical else "no classical control"
        if not c["verdicts_allowed"]:
            verdict = f"no verdict ({'; '.join(c['reasons'])})"
        out.append(
            f"| [{dataset}](experiments/expansion/results/{dataset}/replicates.md) | {model} | "
            f"{len(c['replicates'])} | {few_shot} | "
            f"{METRIC_NAMES.get(metric, metric.replace('_', ' '))} | "
            f"{'yes' if c['verdicts_allowed'] else 'no'} | "
            f"{_cell(c['reference_minus_real'])} | {_cell(c['all_train_minus_real'])} | "
            f"{_cell(c['classical_minus_real'])} | {_cell(c.get('synthetic_minus_real'))} | "
            f"{_cell(vs_classical)} | {spread} | {c['arm']}: {verdict} |"
        )
    return out


def rows(result: dict) -> list[str]:
    """The table rows of one dataset's results.json: one per classifier, then the U-Net
    and the detector where the run trained them (their primary metric is the one their
    validity check reads)."""
    clf = result["classification"]
    few_shot = _few_shot(result)
    out = [
        _row(result["dataset"], model, few_shot, clf["primary_metric"], comparisons,
             clf["validity"][model])
        for model, comparisons in clf["comparisons"].items()
    ]  # fmt: skip
    for task, model in (("segmentation", "U-Net"), ("detection", "Faster R-CNN")):
        part = result.get(task) or {}
        if part.get("validity"):
            out.append(_row(result["dataset"], model, few_shot, part["validity"]["metric"],
                            part["comparisons"], part["validity"]))  # fmt: skip
    return out


HEADER = (
    "| dataset | judge | replicates | few-shot per class | primary metric | verdicts allowed "
    "| class-matched oracle - real | all-train - real | classical - real | synthetic - real "
    "| synthetic - classical | per replicate | verdict (Holm) |",
    "|---|---|---:|---:|---|---|---:|---:|---:|---:|---:|---|---|",
)


def table(results: Path = RESULTS) -> str:
    """Per dataset its claim over the replicates, or its one earlier run's rows."""
    lines = [START, *HEADER]
    for name, result in zip(_names(results), _results(results), strict=True):
        found = replicates.claim(results / name)
        if found is None:
            lines += rows(result)
        else:
            lines += claim_rows(found, _few_shot(result))
    return "\n".join([*lines, END])


def _names(results: Path) -> list[str]:
    return [name for name in DATASETS if (results / name / "results.json").is_file()]


def _results(results: Path):
    """Each dataset's committed results.json, in DATASETS order (those that exist)."""
    for name in DATASETS:
        path = results / name / "results.json"
        if path.is_file():
            yield json.loads(path.read_text(encoding="utf-8"))


def gate_rows(result: dict) -> list[str]:
    """One row per class with a gate verdict and a test outcome."""
    out = []
    agree = result.get("agreement", {}).get("classes", {})
    for label, c in agree.items():
        u = result["gate"][label]["utility"]
        util = mde = need = "-"
        if u is not None:
            util = stats.describe({**u, "p_value": None}, points=False)
            mde = "-" if u.get("mde") is None else f"{u['mde']:.3f}"
            need = "-" if u.get("n_needed") is None else f"{u['n_needed']:,}"
            need = f"{need} (has {u['n_images']})"
        outcome = stats.describe({"delta": c["outcome_f1_delta"], "ci": c["outcome_ci"],
                                  "p_value": None}, points=False)  # fmt: skip
        out.append(
            f"| {result['dataset']} | {label} | {util} | {mde} | {need} | "
            f"{c['gate_verdict']} | {outcome} ({c['outcome']}) | "
            f"{'right' if c['gate_right'] else 'wrong'} | "
            f"{c['fd_ratio_verdict']} ({'right' if c['fd_ratio_right'] else 'wrong'}) |"
        )
    return out


def gate_table(results: Path = RESULTS) -> str:
    lines = [
        GATE_START,
        "| dataset | class | utility (log-loss, cross-fitted) | MDE | train images to "
        "resolve it | gate | test outcome (F1, synthetic - classical) | gate right | "
        "FD ratio rule |",
        "|---|---|---:|---:|---:|---|---:|---|---|",
    ]
    keys = ("right", "n", "right_resolved", "n_resolved")
    pooled = {rule: dict.fromkeys(keys, 0) for rule in ("gate", "fd_ratio")}
    inconclusive = 0
    for result in _results(results):
        lines += gate_rows(result)
        rules = result.get("agreement", {}).get("rules", {})
        for rule, total in pooled.items():
            for k in keys:
                total[k] += rules.get(rule, {}).get(k, 0)
        inconclusive += rules.get("gate", {}).get("inconclusive", 0)
    g, f = pooled["gate"], pooled["fd_ratio"]
    lines += [
        "",
        f"Pooled over {g['n']} classes ({g['n_resolved']} with a resolved outcome): the "
        f"gate right on {g['right_resolved']} of the {g['n_resolved']} resolved "
        f"({g['right']} of {g['n']} in all), inconclusive on {inconclusive} of {g['n']}; "
        f"the FD ratio rule right on {f['right_resolved']} of the {f['n_resolved']} "
        f"resolved ({f['right']} of {f['n']}).",
    ]
    return "\n".join([*lines, GATE_END])


def calibration_table(results: Path = RESULTS) -> str:
    """The no-harm gate's verdict beside the test outcome, every dataset's
    gate-calibration.json (experiments.gate_calibration), with the counts over all."""
    from experiments import gate_calibration

    lines, rows = [CAL_START, *gate_calibration.HEADER], []
    for name in DATASETS:
        path = results / name / "gate-calibration.json"
        if path.is_file():
            record = json.loads(path.read_text(encoding="utf-8"))
            lines += gate_calibration.table_rows(name, record)
            rows += [r for rep in record["replicates"].values() for r in rep["rows"]]
    return "\n".join([*lines, "", gate_calibration.totals(rows), CAL_END])


def short_table(full: str) -> str:
    """The README's few columns of the value table `full`: dataset, judge, replicates,
    few-shot per class, synthetic minus classical and the verdict."""
    keep = (0, 1, 2, 3, 10, 12)
    rows = [line for line in full.splitlines() if line.startswith("|")]
    cells = [[c.strip() for c in row.strip("|").split("|")] for row in rows]
    picked = ["| " + " | ".join(row[i] for i in keep) + " |" for row in cells]
    return "\n".join([SHORT_START, *picked, SHORT_END])


def relinked(table_text: str) -> str:
    """A table's repository-relative links as docs/results.md reaches them."""
    return table_text.replace("](experiments/", "](../experiments/")


def tables() -> dict[Path, dict[tuple[str, str], str]]:
    """Each file's generated tables, by their marker lines."""
    full = table()
    return {
        RESULTS_DOC: {
            (START, END): relinked(full),
            (GATE_START, GATE_END): gate_table(),
            (CAL_START, CAL_END): calibration_table(),
        },
        README: {(SHORT_START, SHORT_END): short_table(full)},
    }


def readme_table(readme: Path, start: str = START, end: str = END) -> str | None:
    text = readme.read_text(encoding="utf-8")
    if start not in text or end not in text:
        return None
    return start + text.split(start, 1)[1].split(end, 1)[0] + end


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--write", action="store_true", help="replace the tables in their files")
    ap.add_argument("--check", action="store_true", help="exit 1 when a copy differs")
    args = ap.parse_args(argv)
    fresh = tables()
    if args.write:
        for path, generated in fresh.items():
            text = path.read_text(encoding="utf-8")
            for (start, end), new in generated.items():
                old = readme_table(path, start, end)
                if old is None:
                    raise SystemExit(f"{path}: no table markers; add {start!r} and {end!r}")
                text = text.replace(old, new)
            path.write_text(text, "utf-8")
    elif args.check:
        stale = sorted(
            {str(p) for p, made in fresh.items() for marks, new in made.items()
             if readme_table(p, *marks) != new}
        )  # fmt: skip
        if stale:
            print(
                f"{', '.join(stale)}: a table differs from the results files; run "
                "python -m experiments.expansion.table --write",
                file=sys.stderr,
            )
            return 1
    else:
        print(*(t for generated in fresh.values() for t in generated.values()), sep="\n\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
