"""Report: one self-contained HTML page and a markdown summary of a pipeline run.

Reads the other stages' reports (nothing is recomputed): the dataset and its ingest
problems, the sweep's chosen cells and heatmaps, the gate's verdicts next to their
baselines, real-vs-synthetic image grids, the classifiers per condition with their
delta vs `real`, and provenance (git sha, params hash, data digest, MLflow run ids).

Writes under `out_dir`:
    report.html   images inlined as data URIs: one file to mail or archive
    report.md     the tables and verdicts as markdown (a PR comment, a wiki page)

The report carries the git sha and MLflow run ids, which change with every run, so
dvc.yaml declares it without outputs and always re-renders it (seconds); the numbers
it shows are all DVC-tracked in the stages it reads. It is logged to MLflow.
"""

from __future__ import annotations

import json
from pathlib import Path

from defectgen import manifest
from defectgen.config import Params
from defectgen.core import report as page
from defectgen.core.report import Cell, Section
from defectgen.errors import DataError
from defectgen.io import atomic_dir, file_digest, write_file

HTML_NAME = "report.html"
MARKDOWN_NAME = "report.md"


def _json(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"{path}: missing; pass that stage's output folder to the report")
    return json.loads(path.read_text(encoding="utf-8"))


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _dataset(ingested: Path, preprocessed: Path) -> Section:
    ingest = _json(ingested / "ingest_report.json")
    counts = _json(preprocessed / "split_counts.json")
    sec = Section("Dataset")
    sec.paragraph(
        f"{ingest['n_images']} images from {ingest['source']} ({ingest['layout']} layout). "
        "The generator and its adapters learn from the few-shot subset of train only; "
        "val selects (sweep cells, classifier epochs), test is touched once, by the "
        "final classifier scores."
    )
    rows = [
        [label, *(Cell(str(c.get(k, 0)), numeric=True) for k in ("train", "subset", "val", "test"))]
        for label, c in counts.items()
    ]
    sec.table(["class", "train", "few-shot subset", "val", "test"], rows)
    problems = [(s.get("path", s.get("rel", "?")), s["reason"]) for s in ingest.get("skipped", [])]
    problems += [(w, "warning") for w in ingest.get("warnings", [])]
    problems += [(json.dumps(d, sort_keys=True), "duplicate") for d in ingest["duplicates"]]
    if problems:
        sec.paragraph(f"Ingest problems ({len(problems)}; the first 20):")
        sec.table(["file", "problem"], [[p, r] for p, r in problems[:20]])
    else:
        sec.paragraph("Ingest found no unreadable file, duplicate or annotation problem.")
    return sec


def _gate(sweep: Path, gated: Path) -> tuple[Section, int, int]:
    chosen = _json(sweep / "chosen.json")
    gate = _json(gated / "gate.json")
    fd = "fid" if gate["extractor"] == "inception-v3-compat" else "fd_effnet_lite0"
    sec = Section("Quality gate")
    sec.paragraph(
        f"Distance: {fd} of the synthetic images to the class's val images, next to the "
        "same distance for real train images (real-vs-real: the floor), blurred and "
        "noised train images (obvious damage). Lower is better; compare within a row. "
        f"Extractor: {gate['extractor']} ({gate['note']})."
    )
    rows = []
    for label, entry in gate["classes"].items():
        cell = chosen["classes"].get(label, {})
        verdict = "pass" if entry["passed"] else "fail"
        rows.append(
            [
                label,
                f"s {_fmt(cell.get('strength'))}, w {_fmt(cell.get('guidance'))}",
                Cell(_fmt(entry.get(fd)), numeric=True),
                Cell(_fmt(entry.get(f"{fd}_real")), numeric=True),
                Cell(_fmt(entry.get(f"{fd}_blur")), numeric=True),
                Cell(_fmt(entry.get(f"{fd}_noise")), numeric=True),
                Cell(str(entry.get("near_duplicates", 0)), numeric=True),
                Cell(str(entry.get("n_kept", 0)), numeric=True),
                Cell(f"{verdict}: {entry['reason']}", style=verdict),
            ]
        )
    sec.table(
        ["class", "chosen cell", "synthetic", "real-vs-real", "blurred", "noised",
         "near-duplicates", "kept", "verdict"],
        rows,
    )  # fmt: skip
    source = chosen.get("source", "sweep")
    if source != "sweep":
        sec.paragraph("The sweep was off: the cells come from params.", note=True)
    passed = sum(1 for e in gate["classes"].values() if e["passed"])
    kept = sum(e.get("n_kept", 0) for e in gate["classes"].values())
    return sec, passed, kept


def _sweep(sweep: Path) -> Section | None:
    heatmaps = sorted((sweep / "heatmaps").glob("*.png"))
    if not heatmaps:
        return None
    sec = Section("Strength x guidance sweep")
    sec.paragraph(
        "Each cell: the distance of a few probe images (the same seeds and parents in every "
        "cell) to the val images; the outlined cell was chosen. Below each heatmap, one "
        "probe per cell in the same layout."
    )
    for path in heatmaps:
        sec.figure(path.read_bytes(), f"{path.stem}: distance per cell")
        probes = sweep / "probes" / path.name
        if probes.is_file():
            sec.figure(probes.read_bytes(), f"{path.stem}: one probe per cell", width=256)
    return sec


def _images(generated: Path) -> Section:
    sec = Section("Real and synthetic images")
    sec.paragraph(
        "Per class: real parents (top row) and the images generated from them (bottom row)."
    )
    sec.figure((generated / "samples.png").read_bytes(), "real (top) vs synthetic (bottom)")
    return sec


def _classifiers(train: Path) -> tuple[Section, str]:
    result = _json(train / "eval.json")
    sec = Section("Does synthetic data help? Classifiers on the real test split")
    sec.paragraph(
        f"{result['test_images']} real test images; mean ± sample std over seeds; the epoch "
        "with the best val accuracy is scored. real: the few-shot subset; real+synthetic: "
        "+ gate-passed images; real+ungated: + every generated image; substitution: the "
        "train images outside the subset replaced by synthetic ones; real+classical: + as "
        "many classical augmentations."
    )
    rows, bars, best = [], [], ""
    best_delta = None
    for model, conditions in result["models"].items():
        for condition, e in conditions.items():
            delta = e.get("accuracy_delta")
            rows.append(
                [
                    model,
                    condition,
                    Cell(str(sum(e["n_train"].values())), numeric=True),
                    Cell(f"{e['accuracy_mean']:.3f} ± {e['accuracy_std']:.3f}", numeric=True),
                    Cell(f"{e['macro_f1_mean']:.3f} ± {e['macro_f1_std']:.3f}", numeric=True),
                    Cell("-" if delta is None else f"{delta * 100:+.1f} pp", numeric=True),
                    ", ".join(f"{c} {r:.2f}" for c, r in e["recall_mean"].items()),
                    Cell(str(e["n_seeds"]), numeric=True),
                ]
            )
            bars.append((f"{model} {condition}", e["accuracy_mean"], e["accuracy_std"]))
            if (
                condition != "real"
                and delta is not None
                and (best_delta is None or delta > best_delta)
            ):
                spread = max(e["accuracy_std"], conditions["real"]["accuracy_std"])
                best_delta, best = (
                    delta,
                    (
                        f"{model} {condition}, {delta * 100:+.1f} pp test accuracy vs real "
                        f"(seed std up to {spread * 100:.1f} pp)"
                    ),
                )
    sec.table(
        ["model", "condition", "train images", "accuracy", "macro-F1", "delta accuracy",
         "recall per class", "seeds"],
        rows,
    )  # fmt: skip
    for condition, reason in result.get("skipped", {}).items():
        sec.paragraph(f"{condition}: not trained, {reason}.", note=True)
    sec.figure(page.accuracy_plot(bars, "test accuracy (mean ± std over seeds)"), "accuracy")
    return sec, best


def _provenance(params: Params, preprocessed: Path) -> Section:
    from defectgen import tracking  # git and MLflow identities

    sec = Section("Provenance")
    ids = tracking.active_run_ids() if params.tracking.enabled else None
    digest = file_digest(preprocessed / manifest.MANIFEST_NAME)[:16]
    rows = [
        ["git commit", tracking.git_sha()],
        ["params hash", params.section_hash()],
        ["data (preprocessed manifest sha256)", digest],
        ["dataset", params.data.name],
        ["MLflow pipeline run", ids["parent"] if ids else "tracking off"],
        ["MLflow report run", ids["run"] if ids else "tracking off"],
    ]
    if ids:
        from defectgen import registry

        prefix = registry.model_name(params.data.name, "")
        for model in registry.list_models():
            if model["name"].startswith(prefix):
                rows.append(
                    [
                        f"registered {model['name']}",
                        ", ".join(
                            f"{a} v{model[a]}" if model[a] else f"no {a}"
                            for a in ("champion", "challenger")
                        )
                        + f" (latest v{model['latest']})",
                    ]
                )
    sec.table(["what", "value"], rows)
    return sec


def run(
    params: Params,
    *,
    ingested: Path,
    preprocessed: Path,
    sweep: Path,
    generated: Path,
    gated: Path,
    train: Path,
    out_dir: Path,
) -> dict[str, float]:
    """Render report.html and report.md from the stages' outputs.

    Returns:
        n_passed_classes, n_kept (as the report states them).
    """
    ingested, preprocessed, sweep = Path(ingested), Path(preprocessed), Path(sweep)
    generated, gated, train = Path(generated), Path(gated), Path(train)
    gate_sec, passed, kept = _gate(sweep, gated)
    n_classes = len(_json(gated / "gate.json")["classes"])
    clf_sec, best = _classifiers(train)
    summary = (
        f"{passed} of {n_classes} classes passed the quality gate; {kept} synthetic images "
        "entered training. "
        + (
            f"The best condition beyond real: {best}."
            if best
            else "No condition beyond real was trained."
        )
    )
    sections = [_dataset(ingested, preprocessed), gate_sec]
    sections += [s for s in [_sweep(sweep)] if s is not None]
    sections += [_images(generated), clf_sec, _provenance(params, preprocessed)]
    title = f"defectgen report: {params.data.name}"
    with atomic_dir(out_dir) as tmp:
        write_file(tmp / HTML_NAME, page.render_html(title, summary, sections).encode())
        write_file(tmp / MARKDOWN_NAME, page.render_markdown(title, summary, sections).encode())
    return {"n_passed_classes": float(passed), "n_kept": float(kept)}
