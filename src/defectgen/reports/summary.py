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


def _verdict(entry: dict) -> str:
    """A class's gate verdict (gate.json from before verdicts were written: by passed)."""
    return entry.get("verdict") or ("pass" if entry["passed"] else "fail")


def verdict_reason(entry: dict) -> tuple[str, str]:
    """A class's gate verdict and the rule's reason for it, as gate.json has them."""
    return _verdict(entry), entry.get("reason", "")


def headline(evaluation: dict) -> tuple[str, dict | None] | None:
    """(model, row) of the value question's answer in eval.json: the first model's
    synthetic arm against its classical control on the primary metric; row None when
    that model's validity check allows no verdict; None when no synthetic arm trained."""
    for model, rows in evaluation["comparisons"].items():
        if not evaluation["validity"][model]["verdicts_allowed"]:
            return model, None
        for arm in arms.ADDITIVE:
            control = arms.classical_of(arm)
            row = next(
                (
                    r
                    for r in rows
                    if (r["arm"], r["control"], r["metric"])
                    == (arm, control, evaluation["primary_metric"])
                ),
                None,
            )
            if row is not None:
                return model, row
    return None


def answer(evaluation: dict) -> str:
    """The value question's answer in one plain sentence, from eval.json: the first
    model's synthetic arm against its classical control, or why there is no answer."""
    found = headline(evaluation)
    if found is None:
        return "No synthetic arm was trained, so the run does not say whether synthetic data helps."
    model, row = found
    if row is None:
        check = evaluation["validity"][model]
        return (
            f"No answer from this run: {check['statement']} ({model}). A larger "
            "test split, a larger dataset or a smaller few-shot set can give one."
        )
    said = {
        "better": "helped more than",
        "worse": "helped less than",
    }.get(row["verdict"], "could not be told apart from")
    images = (
        "the gate-passed synthetic images"
        if row["arm"] == arms.GATED
        else ("the synthetic images (all generated; the gate passed none)")
    )
    metric = evaluation["primary_metric"].replace("_", " ")
    return (
        f"Adding {images} {said} as many classically augmented copies of the real "
        f"ones: test {metric} {stats.describe(row)}, {row['n_seeds']} paired seeds"
        + (f" x {row['n_images']} test images" if "n_images" in row else "")
        + f" ({model})."
    )


def _arm(evaluation: dict, model: str) -> str | None:
    """The synthetic arm the answer reads: the gated one where it trained, else ungated."""
    done = {
        a
        for key in ("per_class_vs_classical", "per_class_vs_real")
        for a in evaluation.get(key, {}).get(model, {})
    }
    return next((a for a in arms.ADDITIVE if a in done), None)


def per_class(evaluation: dict, gate: dict | None) -> list[dict]:
    """Per class what the run found: its gate verdict and images kept, and its test F1
    with the synthetic images against as many classical copies and against the
    few-shot set alone (paired over seeds; None where not trained)."""
    found = headline(evaluation)
    model = found[0] if found else next(iter(evaluation.get("comparisons", {})), None)
    arm = _arm(evaluation, model) if model else None
    rows = {}
    for key, name in (("per_class_vs_classical", "vs_classical"), ("per_class_vs_real", "vs_real")):
        for r in evaluation.get(key, {}).get(model, {}).get(arm, []):
            rows.setdefault(r["label"], {})[name] = r
    labels = sorted(set(rows) | set((gate or {}).get("classes", {})))
    out = []
    for label in labels:
        entry = (gate or {}).get("classes", {}).get(label)
        out.append(
            {
                "label": label,
                "arm": arm,
                "gate": None if entry is None else _verdict(entry),
                "kept": None if entry is None else (entry.get("n_kept", 0), entry["n_synthetic"]),
                "vs_classical": rows.get(label, {}).get("vs_classical"),
                "vs_real": rows.get(label, {}).get("vs_real"),
            }
        )
    return out


def next_steps(evaluation: dict | None, gate: dict | None, tiny_prior: bool) -> list[str]:
    """What to do next, in plain words, from what the run found."""
    out = []
    found = headline(evaluation) if evaluation else None
    if found is not None and found[1] is None:
        out.append(
            "More test images, a larger dataset or a smaller few-shot set would let this "
            "run answer: more real data did not yet beat the few-shot set here."
        )
    if evaluation is not None and found is not None and found[1] is not None:
        for row in per_class(evaluation, gate):
            vs = row["vs_classical"]
            if vs is None or vs["ci"] is None:
                continue
            if vs["ci"][0] > 0:
                out.append(
                    f"Keep the synthetic images for {row['label']}: they beat as many "
                    "classical copies on its test F1."
                )
            elif vs["ci"][1] < 0:
                out.append(
                    f"Leave {row['label']}'s synthetic images out: as many classical "
                    "copies did better on its test F1."
                )
    if gate is not None and not any(e.get("passed") for e in gate.get("classes", {}).values()):
        out.append(
            "The gate kept every class out; its reasons (the report's quality gate) "
            "say what would change each."
        )
    if tiny_prior:
        out.append(
            "The tiny CPU prior shows the pipeline working, not real images: for "
            "those, run the sd15 profile on a GPU (README: Stable Diffusion 1.5 and "
            "GPUs)."
        )
    return out


def parent_record(evaluation: dict | None, gate: dict | None) -> dict:
    """What the pipeline's parent MLflow run carries (the report stage writes it as
    parent.json; the runner logs it): the answer as metrics and as the run's note,
    each class's gate verdict as a metric and a tag."""
    metrics: dict[str, float] = {}
    tags: dict[str, str] = {}
    if evaluation is not None:
        tags["mlflow.note.content"] = answer(evaluation)
        found = headline(evaluation)
        if found is not None:
            model, row = found
            metrics["answer/verdicts_allowed"] = float(row is not None)
            tags["defectgen.answer_model"] = model
            # what verdicts_allowed means for this run: the validity check in words
            tags["defectgen.validity"] = evaluation["validity"][model]["statement"]
            if row is not None:
                tags["defectgen.answer"] = f"{row['arm']} vs {row['control']}: {row['verdict']}"
                metrics.update(
                    {
                        f"answer/{row['metric']}_delta": float(row["delta"]),
                        f"answer/{row['metric']}_ci_low": float(row["ci"][0]),
                        f"answer/{row['metric']}_ci_high": float(row["ci"][1]),
                    }
                )
                if row.get("p_value") is not None:  # the raw p beside Holm's, as the report
                    metrics[f"answer/{row['metric']}_p"] = float(row["p_value"])
                if row.get("p_adjusted") is not None:
                    metrics[f"answer/{row['metric']}_p_holm"] = float(row["p_adjusted"])
    for label, e in (gate or {}).get("classes", {}).items():
        metrics[f"gate/{label}/passed"] = float(e["passed"])
        tags[f"defectgen.gate.{label}"] = _verdict(e)
    return {"metrics": metrics, "tags": tags}


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
            verdict, why = verdict_reason(e)
            reason = f": {why}" if why else ""
            change = f"; what would change it: {e['change']}" if e.get("change") else ""
            out.append(
                f"  {label}: {verdict}, {e.get('n_kept', 0)} / {e['n_synthetic']}{reason}{change}"
            )
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
        )
        for line in lines(data)
    )
