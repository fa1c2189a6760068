"""Report: one self-contained HTML page and a markdown summary of a pipeline run.

Reads the other stages' reports (nothing is recomputed): the dataset and its ingest
problems, the sweep's chosen cells and heatmaps, the gate's verdicts next to their
baselines, real-vs-synthetic image grids, the classifiers per condition with the
paired comparisons against the controls (its first line answers: synthetic vs
classical augmentation, better / worse / not distinguishable, with the interval), and
provenance (git sha, params hash, data digest, MLflow run ids).

Writes under `out_dir`:
    report.html   images inlined as data URIs: one file to mail or archive
    report.md     the tables and verdicts as markdown (a PR comment, a wiki page)

The report carries the git sha and MLflow run ids, which change with every run, so
dvc.yaml declares it without outputs and always re-renders it (seconds); the numbers
it shows are all DVC-tracked in the stages it reads. It is logged to MLflow.

A run that failed part-way still gets a report: every input is optional, the sections
whose inputs exist are rendered, and the page names the stages it had no output from
(the cluster's exit handler renders it from what the finished stages logged to MLflow,
defectgen.reports.status).
"""

from __future__ import annotations

import json
from pathlib import Path

from defectgen import artifacts, manifest
from defectgen.artifacts import (
    BOXES_PNG,
    CHOSEN_JSON,
    DETECT_JSON,
    EVAL_JSON,
    GRIDS_DIR,
    HEATMAPS_DIR,
    INGEST_JSON,
    MASKS_JSON,
    PAIRS_JSON,
    PARENT_JSON,
    PROBES_DIR,
    REPORT_HTML,
    REPORT_MD,
    SAMPLES_PNG,
    SEGMENT_JSON,
    SPLIT_COUNTS_JSON,
)
from defectgen.atomic import atomic_dir, atomic_write_json, write_file
from defectgen.config import Params
from defectgen.core import arms, no_harm, stats
from defectgen.declarations import producer
from defectgen.reports import page
from defectgen.reports import summary as run_summary
from defectgen.reports.page import Cell, Section
from defectgen.resume import file_digest


def _record(folder: Path, name: str, option: str) -> dict:
    """Record `name` of the stage whose output is `option` (its folder `folder`)."""
    return artifacts.read_json(folder / name, stage=producer(option).name, option=option)


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _dataset(ingested: Path, preprocessed: Path) -> Section:
    ingest = _record(ingested, INGEST_JSON, "ingested")
    counts = _record(preprocessed, SPLIT_COUNTS_JSON, "preprocessed")
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


def _distance_name(gate: dict) -> str:
    """The key of the gate's distance in gate.json, by its extractor."""
    return "fid" if gate["extractor"] == "inception-v3-compat" else "fd_effnet_lite0"


def _gate(sweep: Path, gated: Path) -> tuple[Section, int, int]:
    chosen = _record(sweep, CHOSEN_JSON, "sweep")
    gate = artifacts.read_gate(gated)
    fd = _distance_name(gate)
    sec = Section("Quality gate")
    sec.paragraph(
        "Near-copies of the images the generator learned from are dropped first; the rest "
        f"are measured. Distance: {fd} of those to the gate's half of the class's val "
        "images (the sweep chose on the other half), next to the same distance for real "
        "train images (the real-vs-real baseline: what a perfect generator scores), "
        "blurred and noised train images (obvious damage); lower is better, compare "
        "within a row. The fidelity floors: a distance beyond gate.max_ratio x the "
        "baseline, or above either damaged set's, fails. k-NN precision: the share of "
        "synthetic images inside the real train images' manifold (recall: the share of "
        "real images the synthetic ones cover). No harm on val: the val score with the "
        "class's synthetic images minus with as many classical copies of its train images "
        f"({gate.get('judge') or '-'}); pooled over every class past the floors: "
        f"{no_harm.interval_text(gate.get('pooled'))}. The verdict column gives the rule's reason "
        "for each class and what would change it. "
        f"Extractor: {gate['extractor']} ({gate['note']})."
    )
    rows = []
    for label, entry in gate["classes"].items():
        cell = chosen["classes"].get(label, {})
        verdict, reason = run_summary.verdict_reason(entry)
        rows.append(
            [
                label,
                f"s {_fmt(cell.get('strength'))}, w {_fmt(cell.get('guidance'))}",
                Cell(_fmt(entry.get(fd)), numeric=True),
                Cell(_fmt(entry.get(f"{fd}_real")), numeric=True),
                Cell(_fmt(entry.get(f"{fd}_blur")), numeric=True),
                Cell(_fmt(entry.get(f"{fd}_noise")), numeric=True),
                Cell(str(entry.get("near_duplicates", 0)), numeric=True),
                Cell(
                    "-"
                    if "knn_precision" not in entry
                    else f"{entry['knn_precision']:.2f} / {entry['knn_recall']:.2f}",
                    numeric=True,
                ),
                Cell(no_harm.interval_text(entry.get("no_harm")), numeric=True),
                Cell(str(entry.get("n_kept", 0)), numeric=True),
                Cell(
                    f"{verdict}: {reason}"
                    + (f" ({entry['change']})" if entry.get("change") else ""),
                    style=verdict,
                ),
            ]
        )
    sec.table(
        [
            "class",
            "chosen cell",
            "synthetic",
            "real-vs-real",
            "blurred",
            "noised",
            "near-duplicates",
            "k-NN precision / recall",
            "no harm on val",
            "kept",
            "verdict",
        ],
        rows,
    )
    source = chosen.get("source", "sweep")
    if source != "sweep":
        sec.paragraph("The sweep was off: the cells come from params.", note=True)
    passed = sum(1 for e in gate["classes"].values() if e["passed"])
    kept = sum(e.get("n_kept", 0) for e in gate["classes"].values())
    return sec, passed, kept


def _sweep(sweep: Path) -> Section | None:
    heatmaps = sorted((sweep / HEATMAPS_DIR).glob("*.png"))
    if not heatmaps:
        return None
    sec = Section("Strength x guidance sweep")
    sec.paragraph(
        "Each cell: the distance of a few probe images (the same seeds and parents in every "
        "cell) to the val images; the outlined cell was chosen, not always the lowest (the "
        "lowest strength within noise of the lowest distance: the reason is above each "
        "heatmap). Below each heatmap, one probe per cell in the same layout."
    )
    record = sweep / CHOSEN_JSON
    chosen = (
        artifacts.read_json(record, stage="sweep", option="sweep", keys=("classes",))["classes"]
        if record.is_file()
        else {}
    )
    for path in heatmaps:
        if (c := chosen.get(path.stem)) and c.get("reason"):
            sec.paragraph(
                f"{path.stem}: chose strength {c['strength']:g}, guidance {c['guidance']:g}: "
                f"{c['reason']}."
            )
        sec.figure(path.read_bytes(), f"{path.stem}: distance per cell")
        probes = sweep / PROBES_DIR / path.name
        if probes.is_file():
            sec.figure(probes.read_bytes(), f"{path.stem}: one probe per cell", width=256)
    return sec


def _images(generated: Path) -> Section:
    sec = Section("Real and synthetic images")
    sec.paragraph(
        "Per class: real parents (top row) and the images generated from them (bottom row)."
    )
    sec.figure((generated / SAMPLES_PNG).read_bytes(), "real (top) vs synthetic (bottom)")
    return sec


def _comparison_rows(comparisons: list[dict], metrics: tuple[str, ...], points: bool) -> list:
    rows = []
    for c in comparisons:
        if c["metric"] in metrics:
            rows.append(
                [
                    c["arm"],
                    c["control"],
                    c["metric"],
                    Cell(stats.describe({**c, "p_value": None}, points=points), numeric=True),
                    Cell(stats.p_text(c), numeric=True),
                    c["verdict"],
                    Cell(str(c["n_seeds"]), numeric=True),
                ]
            )
    return rows


COMPARISON_HEADERS = [
    "arm",
    "control",
    "metric",
    "difference [95 % CI]",
    "p (Holm)",
    "verdict",
    "seeds",
]


def _classifiers(train: Path) -> tuple[Section, str, Section]:
    """The classifiers' section, the headline, and how they were measured (a section
    for the end of the page, under "How this was measured")."""
    result = _record(train, EVAL_JSON, "train")
    protocol = result["protocol"]
    metric = result["primary_metric"]
    sec = Section("Does synthetic data help? Classifiers on the real test split")
    for model, check in result["validity"].items():
        sec.paragraph(f"Can this budget see the value of data? {model}: {check['statement']}")
    methods = Section("How this was measured: the classifiers")
    methods.paragraph(
        f"{result['test_images']} real test images; primary metric {metric} (verdicts and "
        f"val selection use it); mean ± sample std over "
        f"{len(protocol['seeds'])} seeds, paired across conditions ({protocol['paired']}); "
        f"every condition trains {protocol['steps']} optimizer steps at batch "
        f"{protocol['batch_size']} (equal budgets; {protocol['optimizer']}, "
        f"{protocol['schedule']}), and the best of {protocol['val_checks']} val checkpoints "
        f"by {metric} is scored. real: the few-shot subset; real+synthetic: + gate-passed "
        "images; real+ungated: + every generated image; real+classical[-ungated]: + as many "
        "classical augmentations per class as that arm adds; real+oracle[-ungated]: + as "
        "many real train images from outside the subset (a perfect generator); all-train: "
        "the whole train split; substitution: the train images outside the subset "
        "replaced by synthetic ones; majority: the constant predictor (the train split's "
        "most frequent class). Classical augmentation: "
        f"{protocol['classical']}."
    )
    for model, text in protocol.get("models", {}).items():
        methods.paragraph(f"The classifier {model}: {text}.")
    rows, bars = [], []
    for model, conditions in result["models"].items():
        for condition in result["order"]:
            e = conditions[condition]
            delta = e.get(f"{metric}_delta")
            rows.append(
                [
                    model,
                    condition,
                    Cell(str(sum(e["n_train"].values())), numeric=True),
                    Cell(f"{e['accuracy_mean']:.3f} ± {e['accuracy_std']:.3f}", numeric=True),
                    Cell(
                        f"{e['balanced_accuracy_mean']:.3f} ± {e['balanced_accuracy_std']:.3f}",
                        numeric=True,
                    ),
                    Cell(f"{e['macro_f1_mean']:.3f} ± {e['macro_f1_std']:.3f}", numeric=True),
                    Cell("-" if delta is None else f"{delta * 100:+.1f} pp", numeric=True),
                    ", ".join(f"{c} {r:.2f}" for c, r in e["recall_mean"].items()),
                    Cell(str(e["n_seeds"]), numeric=True),
                ]
            )
            bars.append((f"{model} {condition}", e[f"{metric}_mean"], e[f"{metric}_std"]))
    sec.table(
        [
            "model",
            "condition",
            "train images",
            "accuracy",
            "balanced accuracy",
            "macro-F1",
            f"{metric} vs real",
            "recall per class",
            "seeds",
        ],
        rows,
    )
    for model, comparisons in result["comparisons"].items():
        forest = page.forest_rows(comparisons, metric)
        if forest:
            sec.figure(
                page.forest_plot(forest, f"test {metric.replace('_', ' ')}, percentage points"),
                f"{model}: each arm minus its control in test {metric.replace('_', ' ')} "
                "(points: the paired difference; bars: its 95 % interval over seeds and test "
                "images; the line: no difference)",
            )
        sec.paragraph(
            f"{model}: paired differences in test {metric}. Interval: "
            f"{result['protocol']['interval']}."
        )
        sec.table(COMPARISON_HEADERS, _comparison_rows(comparisons, (metric,), True))
        for arm, cap in result["captured"][model].items():
            if cap["fraction"] is None:
                sec.paragraph(f"{arm}: share of the oracle's gain not given: {cap['why']}.")
                continue
            ci = cap["ci"]
            span = f" (95 % bootstrap CI {ci[0]:.2f} to {ci[1]:.2f})" if ci else ""
            sec.paragraph(
                f"{arm} captures {cap['fraction']:.2f} of the oracle's {metric} gain over "
                f"real{span}."
            )
    for condition, short in result["oracle_shortfall"].items():
        sec.paragraph(
            f"{condition} lacks real images to match its arm: {short} fewer per class.",
            note=True,
        )
    for condition, reason in result.get("skipped", {}).items():
        sec.paragraph(f"{condition}: not trained, {reason}.", note=True)
    sec.figure(
        page.accuracy_plot(bars, f"test {metric.replace('_', ' ')} (mean ± std over seeds)"),
        f"each condition's test {metric.replace('_', ' ')}, mean and spread over seeds",
    )
    return sec, result["headline"], methods


def _masks(masks: Path) -> Section:
    report = _record(masks, MASKS_JSON, "masks")
    sec = Section("Synthetic masks")
    if "skipped" in report:
        sec.paragraph(f"The mask branch was skipped: {report['skipped']}.", note=True)
        return sec
    fd = report["fd_name"]
    sec.paragraph(
        "Per class, masks made from the real train masks by each method, against the "
        f"real ones: area ratio and 8-connected regions (means), and {fd} to the class's "
        f"val masks next to the train masks' own (the real-vs-real baseline; extractor "
        f"{report['extractor']}). "
        "Pairs use only masks within the real masks' area and region range, and no mask of "
        "a method dropped for the class."
    )
    rows = []
    for label, entry in report["classes"].items():
        if "skipped" in entry:
            rows.append([label, "-", Cell("-"), "-", "-", "-", f"skipped: {entry['skipped']}"])
            continue
        real = entry["real"]
        rows.append(
            [
                label,
                "real",
                Cell(str(entry["n_real"]), numeric=True),
                Cell(f"{real['area_ratio_mean']:.4f}", numeric=True),
                Cell(f"{real['components_mean']:.2f}", numeric=True),
                Cell(_fmt(entry.get(f"{fd}_real")), numeric=True),
                f"HMI in {entry['hmi_space']} space",
            ]
        )
        for method, m in entry["methods"].items():
            notes = (
                f"{m['made'] - m['accepted']} out of range, {m['empty_dropped']} empty, "
                f"{m['rejected']} draws rejected"
            )
            if "dropped" in m:
                notes = f"dropped: {m['dropped']}; {notes}"
            rows.append(
                [
                    label,
                    method,
                    Cell(f"{m['n']} of {m['made']}", numeric=True),
                    Cell(f"{m['area_ratio_mean']:.4f}" if m["made"] else "-", numeric=True),
                    Cell(f"{m['components_mean']:.2f}" if m["made"] else "-", numeric=True),
                    Cell(_fmt(m.get(fd)), numeric=True),
                    notes,
                ]
            )
    sec.table(["class", "masks", "used of made", "area ratio", "regions", fd, "notes"], rows)
    for path in sorted((masks / GRIDS_DIR).glob("*.png")):
        sec.figure(
            path.read_bytes(),
            f"{path.stem}: real (top row), then one row per method; grey: not used for pairs",
        )
    return sec


def _pairs(pairs: Path, pairs_gated: Path | None) -> Section | None:
    report = _record(pairs, PAIRS_JSON, "pairs")
    if "skipped" in report:  # the masks section already says why
        return None
    gate = artifacts.read_gate(pairs_gated, option="pairs_gated") if pairs_gated else None
    verdicts = gate["classes"] if gate else {}
    fd = _distance_name(gate) if gate else None
    sec = Section("Image + mask pairs")
    sec.paragraph(
        "Per class, a ControlNet trained from the base UNet on the real train pairs, then "
        "one image per synthetic mask, the mask its annotation. The gate, unchanged, "
        "judges the images against the class's val images."
    )
    rows = []
    for label, entry in report["classes"].items():
        if "skipped" in entry:
            rows.append([label, Cell("-"), "-", "-", "-", f"skipped: {entry['skipped']}"])
            continue
        v = verdicts.get(label, {})
        modules = [m for m in ("sae", "sff") if entry[m]] or ["-"]
        verdict, reason = run_summary.verdict_reason(v) if v else ("", "not gated")
        rows.append(
            [
                label,
                Cell(str(entry["n"]), numeric=True),
                entry["conditioning"],
                "+".join(m.upper() for m in modules),
                Cell(_fmt(v.get(fd)) if fd else "-", numeric=True),
                Cell(f"{verdict}: {reason}" if v else reason, style=verdict),
            ]
        )
    sec.table(["class", "pairs", "conditioning", "modules", fd or "distance", "gate"], rows)
    for path in sorted((pairs / GRIDS_DIR).glob("*.png")):
        sec.figure(
            path.read_bytes(),
            f"{path.stem}: conditioning (top), generated image, the mask outlined on it",
        )
    return sec


SEG_SHOWN = (
    ("s_measure", "S"),
    ("mae", "MAE"),
    ("max_e_measure", "max E"),
    ("max_f_measure", "max F"),
    ("iou", "IoU"),
    ("dice", "Dice"),
    ("pixel_auroc", "AUROC"),
    ("pixel_ap", "AP"),
)


def _segmentation(segment: Path) -> Section | None:
    report = _record(segment, SEGMENT_JSON, "segment")
    if "skipped" in report:
        return None
    sec = Section("Segmentation: do the pairs help?")
    sec.paragraph(
        f"A U-Net per condition and seed, trained on {report['n_train_real']} real train "
        f"pairs (plus the condition's synthetic ones), scored on {report['n_test']} real "
        "test pairs; mean +- std over seeds. Lower MAE is better, higher everything else."
    )
    rows = []
    for condition, entry in report["conditions"].items():
        if "skipped" in entry:
            rows.append([condition, "-"] + ["-"] * len(SEG_SHOWN) + [entry["skipped"]])
            continue
        cells = [
            Cell(f"{entry[k]['mean']:.3f} +- {entry[k]['std']:.3f}", numeric=True)
            for k, _ in SEG_SHOWN
        ]
        rows.append([condition, Cell(str(entry["n_train"]), numeric=True), *cells, ""])
    sec.table(["condition", "train pairs", *(n for _, n in SEG_SHOWN), "notes"], rows)
    if "primary_metric_reason" in report:  # segment.json written before it chose one
        sec.paragraph(f"Verdicts read {report['primary_metric_reason']}.")
    sec.paragraph(report["headline"] + " Paired differences (MAE: lower is better):")
    shown = ("s_measure", "dice", "mae")
    sec.table(COMPARISON_HEADERS, _comparison_rows(report["comparisons"], shown, False))
    counts = ", ".join(
        f"{split} {report[f'coco_{split}_images']} images / "
        f"{report[f'coco_{split}_instances']} instances"
        for split in ("train", "val", "test")
    )
    sec.paragraph(f"COCO export (coco/*.json, RLE): {counts}.")
    return sec


def _detection(detect_dir: Path) -> Section | None:
    report = _record(detect_dir, DETECT_JSON, "detect")
    if "skipped" in report:
        return None
    p = report["protocol"]
    sec = Section("Detection: do the synthetic images help a detector?")
    sec.paragraph(
        f"A detector per model, condition and seed ({len(p['seeds'])} paired seeds, "
        f"{p['steps']} SGD steps each), scored on {report['n_test']} real test images with "
        f"COCOeval; mean +- std over seeds. Classical: {p['classical']}. Synthetic images "
        f"inherit their parent's boxes up to strength {p['parent_boxes_up_to']}."
    )
    for model, conditions in report["models"].items():
        rows = []
        for c in report["order"]:
            e = conditions[c]
            cells = [
                Cell(f"{e[f'{m}_mean']:.3f} +- {e[f'{m}_std']:.3f}", numeric=True)
                for m in ("map", "map50")
            ]
            rows.append([model, c, Cell(str(e["n_train"]), numeric=True), *cells])
        sec.table(["model", "condition", "train images", "mAP@[.5:.95]", "mAP@.5"], rows)
        shown = _comparison_rows(report["comparisons"][model], ("map", "map50"), False)
        sec.table(COMPARISON_HEADERS, shown)
    sec.paragraph(report["headline"])
    for arm, dropped in report["left_out"].items():
        if dropped:
            why = ", ".join(f"{n} {k}" for k, n in dropped.items())
            sec.paragraph(f"{arm}: synthetic images left out for want of annotations: {why}.")
    for condition, why in report["not_trained"].items():
        sec.paragraph(f"{condition}: not trained, {why}.")
    if (detect_dir / BOXES_PNG).is_file():
        sec.figure(
            (detect_dir / BOXES_PNG).read_bytes(),
            "synthetic training images with the boxes they train with",
        )
    return sec


def _provenance(params: Params, preprocessed: Path | None) -> Section:
    from defectgen import tracking  # git and MLflow identities

    sec = Section("Provenance")
    ids = tracking.active_run_ids() if params.tracking.enabled else None
    path = preprocessed / manifest.MANIFEST_NAME if preprocessed else None
    digest = file_digest(path)[:16] if path and path.is_file() else "-"
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


def _summary(
    gate: tuple[Section, int, int] | None, n_classes: int, plain: str | None, tiny_prior: bool
) -> str:
    """The page's first lines: the answer in a plain sentence (summary.answer) and what
    its interval covers, the tiny prior's caveat where it made the images, then the
    gate's verdicts."""
    if gate is None:
        return "The run stopped before the quality gate: no synthetic image was judged."
    _, passed, kept = gate
    text = f"{passed} of {n_classes} classes passed the quality gate; {kept} synthetic images "
    if plain is None:
        return text + "were kept; no classifier was trained."
    covers = (
        " The interval covers this run's training seeds and test images; another "
        "few-shot draw or generator run can move it."
    )
    caveat = (
        (
            " The images come from the tiny CPU prior, which shows the pipeline working, "
            "not the quality a real prior gives."
        )
        if tiny_prior
        else ""
    )
    return f"{plain}{covers}{caveat} {text}entered real+synthetic."


def _answer(evaluation: dict, gate: dict | None, tiny_prior: bool) -> Section:
    """The first screen after the summary: per class the gate's verdict, the images
    kept and the class's effect, then what to do next."""
    sec = Section("The answer per class")
    rows = run_summary.per_class(evaluation, gate)
    arm = next((r["arm"] for r in rows if r["arm"]), None)
    found = run_summary.headline(evaluation)
    withheld = found is not None and found[1] is None  # the validity check failed

    def effect(row: dict | None) -> Cell:
        if row is None:
            return Cell("-")
        words = (
            "no verdict"
            if withheld
            else {"better": "better", "worse": "worse"}.get(row["verdict"], "not resolved")
        )
        return Cell(f"{stats.describe({**row, 'p_value': None})} ({words})", numeric=True)

    images = (
        "the gate-passed synthetic images"
        if arm == arms.GATED
        else "every generated image (the gate passed none)"
    )
    sec.paragraph(
        f"Each class's test F1 with {images} added, against as many classical copies of "
        "its real images and against the few-shot set alone (paired over seeds; 95 % "
        "interval over seeds)."
    )
    sec.table(
        ["class", "gate", "synthetic images kept", "F1 vs classical copies", "F1 vs real alone"],
        [
            [
                r["label"],
                Cell(r["gate"] or "-", style=r["gate"] or ""),
                Cell(
                    "-" if r["kept"] is None else f"{r['kept'][0]} / {r['kept'][1]}", numeric=True
                ),
                effect(r["vs_classical"]),
                effect(r["vs_real"]),
            ]
            for r in rows
        ],
    )
    steps = run_summary.next_steps(evaluation, gate, tiny_prior)
    if steps:
        sec.paragraph("What next: " + " ".join(steps))
    return sec


def _generator(params: Params) -> Section:
    """What made the synthetic images: for the tiny prior, that they demonstrate the
    pipeline and how to get real ones."""
    sec = Section("Generator")
    if params.model.profile == "tiny":
        sec.paragraph(
            "The tiny diffusion prior (64 px, a few million parameters), pretrained by this "
            "run on its own few-shot images on the CPU: its images show the pipeline working, "
            "not the quality a real prior gives. For real images use Stable Diffusion 1.5 on "
            "a GPU (README: Stable Diffusion 1.5 and GPUs)."
        )
    else:
        sec.paragraph(
            f"Stable Diffusion 1.5 from {params.model.base} (revision "
            f"{params.model.revision or 'not pinned'}), adapted per class."
        )
    return sec


def run(
    params: Params,
    *,
    out_dir: Path,
    ingested: Path | None = None,
    preprocessed: Path | None = None,
    sweep: Path | None = None,
    generated: Path | None = None,
    gated: Path | None = None,
    train: Path | None = None,
    masks: Path | None = None,
    pairs: Path | None = None,
    pairs_gated: Path | None = None,
    segment: Path | None = None,
    detect: Path | None = None,
) -> dict[str, float]:
    """Render report.html and report.md from the stages' outputs.

    An input that is None (its stage did not finish) leaves out the sections that need
    it; the page then opens with the stages it had no output from. The mask branch's
    inputs (`masks`, `pairs`, `pairs_gated`, `segment`) and `detect` are optional:
    without them there is no section for them, and nothing is missing.

    Also parent.json: the answer and the gate's verdicts as metrics and tags for the
    pipeline's MLflow parent run (summary.parent_record; the runner logs them there).

    Returns:
        n_passed_classes, n_kept (as the report states them; 0 without a gate), and
        n_missing_inputs.
    """
    given = dict(
        ingested=ingested,
        preprocessed=preprocessed,
        sweep=sweep,
        generated=generated,
        gated=gated,
        train=train,
    )
    have = {k: Path(v) for k, v in given.items() if v is not None}
    missing = [producer(key).name for key in given if key not in have]  # their stages
    sections = []
    if missing:
        sec = Section("Incomplete run")
        sec.paragraph(
            "This run did not finish. No output from: " + ", ".join(missing) + ". The "
            "sections that need them are left out; the run status names the stage that "
            "failed and why.",
        )
        sections.append(sec)
    if "ingested" in have and "preprocessed" in have:
        sections.append(_dataset(have["ingested"], have["preprocessed"]))
    gate, n_classes = None, 0
    if "sweep" in have and "gated" in have:
        gate = _gate(have["sweep"], have["gated"])
        n_classes = len(artifacts.read_gate(have["gated"])["classes"])
        sections.append(gate[0])
    if "sweep" in have and (heatmaps := _sweep(have["sweep"])) is not None:
        sections.append(heatmaps)
    if "generated" in have:
        sections.append(_generator(params))
        sections.append(_images(have["generated"]))
    methods = None
    if "train" in have:
        clf_sec, _, methods = _classifiers(have["train"])
        sections.append(clf_sec)
    if masks is not None:  # the mask branch is optional: no section, no "missing" either
        sections.append(_masks(Path(masks)))
    if pairs is not None and (sec := _pairs(Path(pairs), pairs_gated and Path(pairs_gated))):
        sections.append(sec)
    if segment is not None and (sec := _segmentation(Path(segment))):
        sections.append(sec)
    if detect is not None and (sec := _detection(Path(detect))):
        sections.append(sec)
    if methods is not None:
        sections.append(methods)
    sections.append(_provenance(params, have.get("preprocessed")))
    title = f"defectgen report: {params.data.name}"
    evaluation = _record(have["train"], EVAL_JSON, "train") if "train" in have else None
    plain = run_summary.answer(evaluation) if evaluation else None
    tiny = params.model.profile == "tiny"
    summary = _summary(gate, n_classes, plain, tiny)
    verdicts = artifacts.read_gate(have["gated"]) if "gated" in have else None
    if evaluation is not None:  # the first screen: the answer per class, what next
        sections.insert(int(bool(missing)), _answer(evaluation, verdicts, tiny))
    parent = run_summary.parent_record(evaluation, verdicts)
    with atomic_dir(out_dir) as tmp:
        write_file(tmp / REPORT_HTML, page.render_html(title, summary, sections).encode())
        write_file(tmp / REPORT_MD, page.render_markdown(title, summary, sections).encode())
        atomic_write_json(tmp / PARENT_JSON, parent)
    return {
        "n_passed_classes": float(gate[1] if gate else 0),
        "n_kept": float(gate[2] if gate else 0),
        "n_missing_inputs": float(len(missing)),
    }
