"""The README's "does it help?" table, written from the committed results.json files.

    python -m experiments.expansion.table            # print the table
    python -m experiments.expansion.table --write    # put it into README.md
    python -m experiments.expansion.table --check    # exit 1 when README.md's differs

One row per dataset and classifier: whether the validity check allows verdicts, then
the paired test differences (primary metric, 95 % interval over seeds) of the whole
train split, the classical control and the synthetic arm against the few-shot set, and
of the synthetic arm against its classical control with its Holm-adjusted verdict. The
README holds the table between two marker lines; tests/test_expansion.py fails when the
README's copy differs from what the files say.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from defectgen.core import arms, stats
from experiments.expansion.run import REPO, RESULTS

DATASETS = ("elpv", "neu-det", "sd-saliency-900")
START = "<!-- value table: python -m experiments.expansion.table --write -->"
END = "<!-- end of the value table -->"


def _find(comparisons: list[dict], arm: str, control: str, metric: str) -> dict | None:
    return next((c for c in comparisons if (c["arm"], c["control"], c["metric"])
                 == (arm, control, metric)), None)  # fmt: skip


def _cell(comparison: dict | None) -> str:
    return "-" if comparison is None else stats.describe({**comparison, "p_value": None})


def rows(result: dict) -> list[str]:
    """The table rows of one dataset's results.json."""
    clf = result["classification"]
    metric = clf["primary_metric"]
    per_class = result["params"]["preprocess"]["subset"]
    few_shot = per_class.get("per_class") or f"alpha {per_class.get('alpha')}"
    out = []
    for model, comparisons in clf["comparisons"].items():
        check = clf["validity"][model]
        arm = next((a for a in arms.ADDITIVE
                    if _find(comparisons, a, arms.classical_of(a), metric)), None)  # fmt: skip
        vs_classical = arm and _find(comparisons, arm, arms.classical_of(arm), metric)
        verdict = vs_classical["verdict"] if vs_classical else "no synthetic arm trained"
        out.append(
            f"| [{result['dataset']}](experiments/expansion/results/{result['dataset']}/"
            f"results.md) | {model} | {few_shot} | {metric.replace('_', ' ')} | "
            f"{'yes' if check['verdicts_allowed'] else 'no'} | "
            f"{_cell(check['all_train_minus_real'])} | "
            f"{_cell(arm and _find(comparisons, arms.classical_of(arm), arms.REAL, metric))} | "
            f"{_cell(arm and _find(comparisons, arm, arms.REAL, metric))} | "
            f"{_cell(vs_classical)} | {arm or '-'}: {verdict} |"
        )
    return out


def table(results: Path = RESULTS) -> str:
    lines = [
        START,
        "| dataset | classifier | few-shot per class | primary metric | verdicts allowed | "
        "all-train - real | classical - real | synthetic - real | synthetic - classical | "
        "verdict (Holm) |",
        "|---|---|---:|---|---|---:|---:|---:|---:|---|",
    ]
    for name in DATASETS:
        path = results / name / "results.json"
        if path.is_file():
            lines += rows(json.loads(path.read_text(encoding="utf-8")))
    return "\n".join([*lines, END])


def readme_table(readme: Path) -> str | None:
    text = readme.read_text(encoding="utf-8")
    if START not in text or END not in text:
        return None
    return START + text.split(START, 1)[1].split(END, 1)[0] + END


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--write", action="store_true", help="replace the table in README.md")
    ap.add_argument("--check", action="store_true", help="exit 1 when README.md's differs")
    args = ap.parse_args(argv)
    readme = REPO / "README.md"
    fresh = table()
    if args.write:
        old = readme_table(readme)
        if old is None:
            raise SystemExit(f"{readme}: no table markers; add the lines {START!r} and {END!r}")
        readme.write_text(readme.read_text(encoding="utf-8").replace(old, fresh), "utf-8")
    elif args.check:
        if readme_table(readme) != fresh:
            print(f"{readme}: the value table differs from the results files; run "
                  "python -m experiments.expansion.table --write", file=sys.stderr)  # fmt: skip
            return 1
    else:
        print(fresh)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
