"""What a finished run found, in a few plain lines: the demo's last words.

`defectgen summary` (after `dvc repro`, as `make demo` does) reads the run's outputs
under a data folder: the train stage's eval.json (the answer, or why the run cannot
give one), the gate's gate.json (each class's verdict and reason) and the report's
path. No metrics table: those are in the report and MLflow (`make ui`).
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from defectgen.artifacts import EVAL_JSON, GATE_JSON, REPORT_HTML
from defectgen.core import arms, stats

# dvc.yaml's output folders of the stages read here (pipelines/dvc_stages.py writes them)
TRAIN_DIR, GATE_DIR, REPORT_DIR = "train", "gated", "report"


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def answer(evaluation: dict) -> str:
    """The value question's answer in one plain sentence, from eval.json: the first
    model's synthetic arm against its classical control, or why there is no answer."""
    metric = evaluation["primary_metric"].replace("_", " ")
    for model, rows in evaluation["comparisons"].items():
        check = evaluation["validity"][model]
        if not check["verdicts_allowed"]:
            return (f"No answer from this run: {check['statement']} ({model}). A larger "
                    "dataset, more seeds or a smaller few-shot set can give one.")  # fmt: skip
        for arm in arms.ADDITIVE:
            control = arms.classical_of(arm)
            row = next((r for r in rows if (r["arm"], r["control"], r["metric"])
                        == (arm, control, evaluation["primary_metric"])), None)  # fmt: skip
            if row is None:
                continue
            said = {
                "better": "helped more than",
                "worse": "helped less than",
            }.get(row["verdict"], "could not be told apart from")
            images = "the gate-passed synthetic images" if arm == "real+synthetic" else (
                "the synthetic images (all generated; the gate passed none)")  # fmt: skip
            return (
                f"Adding {images} {said} as many classically augmented copies of the real "
                f"ones: test {metric} {stats.describe(row)}, {row['n_seeds']} paired seeds "
                f"({model})."
            )
    return "No synthetic arm was trained, so the run does not say whether synthetic data helps."


def lines(data: Path) -> list[str]:
    """The summary of the run whose stage outputs are under `data`."""
    data = Path(data)
    out = []
    evaluation = _read(data / TRAIN_DIR / EVAL_JSON)
    if evaluation is None:
        out.append(f"No answer yet: {data / TRAIN_DIR / EVAL_JSON} is missing (train has not run).")
    else:
        out.append(answer(evaluation))
    gate = _read(data / GATE_DIR / GATE_JSON)
    if gate is not None:
        out.append("Gate, per class (synthetic images kept / generated):")
        for label, e in gate["classes"].items():
            verdict = e.get("verdict", "pass" if e["passed"] else "fail")
            reason = f": {e['reason']}" if e.get("reason") else ""
            out.append(f"  {label}: {verdict}, {e.get('n_kept', 0)} / {e['n_synthetic']}{reason}")
    report = data / REPORT_DIR / REPORT_HTML
    if report.is_file():
        out.append(f"Report: {report} (open it in a browser).")
    out.append("Every stage's runs and metrics: make ui, then http://127.0.0.1:5000.")
    return out


def text(data: Path, width: int = 100) -> str:
    """`lines`, each wrapped to `width` columns (continuations indented)."""
    return "\n".join(
        textwrap.fill(
            line,
            width,
            initial_indent=" " * (len(line) - len(line.lstrip())),
            subsequent_indent=" " * (len(line) - len(line.lstrip()) + 4),
        )  # fmt: skip
        for line in lines(data)
    )
