"""Does synthetic data beat classical augmentation? One command per dataset.

    python -m experiments.expansion elpv              # ELPV, from its Python package
    python -m experiments.expansion neu-det           # ../shared/data/neu-det
    python -m experiments.expansion sd-saliency-900   # ../shared/data/sd-saliency-900
    python -m experiments.expansion mine --profile my.yaml   # any dataset: a profile

A profile (profiles/<dataset>.yaml) is a few overrides of params.yaml: the dataset,
the few-shot size, the expansion count and the seeds. The command copies the raw data
into the run folder (the source is never written to), runs every stage of the DAG in
order (the same `runner.execute` as `dvc repro` and KFP; MLflow off unless --track),
and writes

    results/<dataset>/results.json   per model and condition n_seeds, mean, sample std;
                                     the paired comparisons (delta, 95 % CI, p); the
                                     captured share of the oracle's gain; per class the
                                     gate's numbers and verdict; segmentation likewise
                                     when the data has masks; per-stage wall times; the
                                     exact params, data digests, git sha, machine
    results/<dataset>/results.md     the same, as tables, with the honest reading
    results/<dataset>/*.png          real vs synthetic grids

A killed run resumes: a stage whose output exists with the same params is not redone
(and inside a stage, finished units are kept, as in any run).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from defectgen import manifest
from defectgen.atomic import atomic_write_json
from defectgen.config import merge_overrides, parse_params
from defectgen.declarations import graph
from defectgen.resume import file_digest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
PROFILES = HERE / "profiles"
RESULTS = HERE / "results"

# (stage, {input artifact: upstream stage}) in DAG order, from the declarations, without
# register (it needs the MLflow registry, which is not what is measured here).
STAGES = [(name, inputs) for name, inputs in graph() if name != "register"]

# --toy: the same DAG at toy sizes (make test runs it; the numbers mean nothing).
TOY = {
    "preprocess": {"image_size": 32},
    "base": {"batch_size": 8, "vae_steps": 3, "unet_steps": 3},
    "finetune": {"batch_size": 2, "ti": {"steps": 2}, "lora": {"steps": 2}},
    "sweep": {"strengths": [0.5], "guidances": [2.0], "probe_images": 3},
    "generate": {"images_per_class": 4, "batch_size": 4, "steps": 4},
    "gate": {"kid_subsets": 5},
    "masks": {"per_class": 4, "methods": ["perturb"]},
    "pairs": {"per_class": 4, "steps": 2, "batch_size": 4, "sample_steps": 3,
              "generate_batch": 4},
    "segment": {"seeds": [0, 1], "steps": 3, "batch_size": 8, "widths": [8, 16]},
    "train": {"models": ["squeezenet1_1"], "seeds": [0, 1], "steps": 3, "evals": 1,
              "batch_size": 16},
    "detect": {"seeds": [0, 1], "steps": 2, "evals": 1, "batch_size": 4},
}  # fmt: skip


def setting(text: str) -> dict:
    """`--set pairs.background=real` -> {"pairs": {"background": "real"}} (the value
    read as YAML: numbers, lists and booleans keep their type)."""
    key, sep, value = text.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise argparse.ArgumentTypeError(f"--set {text!r}: expected SECTION.KEY=VALUE")
    out: dict = {}
    inner = out
    *parents, last = key.split(".")
    for part in parents:
        inner = inner.setdefault(part, {})
    inner[last] = yaml.safe_load(value)
    return out


def build_params(dataset: str, profile: Path, toy: bool, track: bool,
                 settings: tuple[dict, ...] = ()) -> dict:  # fmt: skip
    """params.yaml + the profile (+ TOY) + `settings` (--set), tracking as asked;
    validated."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    over = yaml.safe_load(profile.read_text(encoding="utf-8")) or {}
    raw = merge_overrides(raw, over)
    if toy:
        raw = merge_overrides(raw, TOY)
    for extra in settings:
        raw = merge_overrides(raw, extra)
    raw = merge_overrides(raw, {"tracking": {"enabled": track}})
    raw["data"]["name"] = raw["data"].get("name") or dataset
    parse_params(raw, str(profile))  # every error before any work
    return raw


def copy_data(raw: dict, run_dir: Path) -> dict:
    """Copy the dataset into the run folder (never touching the source); data.root is
    pointed at the copy. Returns where it came from. ELPV is read from its package."""
    root = raw["data"].get("root")
    if root is None:
        import elpv_dataset  # noqa: F401  (the embedded default's package)

        return {"source": "the elpv-dataset package", "copied": None}
    source = Path(root)
    if not source.is_absolute():
        source = (REPO / source).resolve()
    if not source.is_dir():
        raise SystemExit(
            f"{source}: dataset folder not found (data.root in the profile); "
            "point it at the dataset, e.g. ../shared/data/<name> beside the repository"
        )
    dest = run_dir / "raw"
    done = run_dir / ".raw-copied"
    if not done.is_file():
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(source, dest)
        done.write_text(str(source))
    raw["data"]["root"] = str(dest)
    return {"source": str(source), "copied": str(dest)}


def run_stages(
    raw: dict,
    run_dir: Path,
    *,
    keep_finished: bool = False,
    only: tuple[str, ...] = (),
    skip: tuple[str, ...] = (),
) -> dict[str, dict]:
    """Every stage in order, in this process; a stage done with the same values of the
    params it reads (its declaration's sections) is skipped (its recorded wall time
    kept). Returns per stage wall_s, whether it was resumed, and the params key and git
    sha it ran with.

    A stage downstream of one that ran here runs again. keep_finished: a finished stage
    is kept even if it ran with other params or code (to add a stage, e.g. detect, to a
    finished run); its entry says so (`other_params`). only: just these stages (their
    upstream must be among them). skip: not these stages, nor any stage downstream of one
    (their results read "not run")."""
    from defectgen.runner import execute, get_stage

    params = parse_params(raw, "experiment params")
    markers = run_dir / ".done"
    markers.mkdir(parents=True, exist_ok=True)
    times: dict[str, dict] = {}
    skipped = set(skip)
    for name, inputs in STAGES:
        if only and name not in only:
            continue
        if name in skipped or skipped & set(inputs.values()):
            skipped.add(name)
            continue
        marker = markers / f"{name}.json"
        key = get_stage(name).params_hash(params)  # what the stage reads, as dvc.yaml has it
        out = run_dir / name
        upstream_ran = any(times[up]["resumed"] is False for up in inputs.values())
        if marker.is_file() and out.is_dir() and not upstream_ran:
            done = json.loads(marker.read_text(encoding="utf-8"))
            if done["key"] == key or keep_finished:
                times[name] = {
                    "wall_s": done["wall_s"], "resumed": True, "key": done["key"],
                    "git": done.get("git"), "other_params": done["key"] != key,
                }  # fmt: skip
                continue
        print(f"[expansion] {name} ...", flush=True)
        paths = {opt: run_dir / up for opt, up in inputs.items()}
        _, wall = execute(get_stage(name), params, out_dir=out, inputs=paths)
        record = {"key": key, "wall_s": round(wall, 1), "git": _git()}
        atomic_write_json(marker, record)
        times[name] = {**record, "resumed": False, "other_params": False}
        print(f"[expansion] {name}: {wall:.1f} s", flush=True)
    return times


def _json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _utility_row(u: dict) -> dict:
    from defectgen.core import stats

    keys = ("delta", "ci", "mde", "sd", "n_images", "n_folds", "n_repeats", "n_needed")
    row = {k: u.get(k) for k in keys}
    if row["n_needed"] is None and row["sd"] is not None:  # a gate.json from before it
        row["n_needed"] = stats.n_to_resolve(row["delta"], row["sd"])
    return row


def _gate_rows(gate: dict) -> dict[str, dict]:
    out = {}
    for label, e in gate["classes"].items():
        fd = next((k[: -len("_real")] for k in e if k.endswith("_real")), None)
        u = e.get("utility")
        out[label] = {
            "distance_name": fd,
            "distance": e.get(fd) if fd else None,
            "real_vs_real": e.get(f"{fd}_real") if fd else None,
            "blurred": e.get(f"{fd}_blur") if fd else None,
            "ratio": e.get("ratio"),
            "fidelity_passed": e.get("fidelity_passed", False),  # the FD-ratio rule
            "knn_precision": e.get("knn_precision"),
            "knn_recall": e.get("knn_recall"),
            "near_duplicates": e.get("near_duplicates", 0),
            # a gate.json from before the no-harm check (2026-12-07) has a utility instead
            "utility": None if u is None or u.get("delta") is None else _utility_row(u),
            "no_harm": e.get("no_harm"),
            "verdict": e.get("verdict", "pass" if e["passed"] else "fail"),
            "rule": e.get("rule"),
            "passed": e["passed"],
            "reason": e.get("reason"),
            "change": e.get("change"),
            "n_synthetic": e["n_synthetic"],
            "n_kept": e.get("n_kept", 0),
        }  # fmt: skip
    return out


# The arm whose outcome a gate verdict predicts: it adds every class's synthetic images
# whatever the gate said, so each class's effect is measured for passed and failed alike.
OUTCOME_ARM = "real+ungated"


def agreement(gate: dict[str, dict], per_class: dict[str, list[dict]]) -> dict:
    """How often each gate rule predicted the test outcome, per class.

    Outcome: the class's test F1 with its synthetic images minus with as many classical
    copies (OUTCOME_ARM vs its classical arm, paired seeds, 95 % t interval): 'better'
    means the synthetic images helped. A rule is right on a class when it passed a class
    whose images helped or kept out one whose images did not (not distinguishable or
    worse: keeping them out costs nothing against plain augmentation). Rules: the old
    FD ratio (`fidelity_passed`) and the gate's verdict (an inconclusive verdict keeps
    the class out under the default policy, and is counted as such). Each rule's rate is
    given over all classes and over those whose outcome was resolved (better or worse),
    where being right is not just keeping an undecided class out.
    """
    rows = {r["label"]: r for r in per_class.get(OUTCOME_ARM, [])}
    if not rows:
        return {"classes": {}, "rules": {}, "why": f"{OUTCOME_ARM} was not trained"}
    classes = {}
    for label, g in gate.items():
        if label not in rows:
            continue
        r = rows[label]
        helped = r["verdict"] == "better"
        old = "pass" if g["fidelity_passed"] else "fail"
        classes[label] = {
            "outcome_f1_delta": r["delta"], "outcome_ci": r["ci"], "n_seeds": r["n_seeds"],
            "outcome": r["verdict"], "fd_ratio": g["ratio"], "fd_ratio_verdict": old,
            "gate_verdict": g["verdict"], "fd_ratio_right": (old == "pass") == helped,
            "gate_right": (g["verdict"] == "pass") == helped,
        }  # fmt: skip
    n = len(classes)
    resolved = [c for c in classes.values() if c["outcome"] in ("better", "worse")]
    rules = {}
    for name in ("fd_ratio", "gate"):
        right = sum(c[f"{name}_right"] for c in classes.values())
        right_resolved = sum(c[f"{name}_right"] for c in resolved)
        rules[name] = {
            "right": right, "n": n, "rate": right / n if n else None,
            "right_resolved": right_resolved, "n_resolved": len(resolved),
            "rate_resolved": right_resolved / len(resolved) if resolved else None,
        }  # fmt: skip
    inconclusive = sum(c["gate_verdict"] == "inconclusive" for c in classes.values())
    rules["gate"]["inconclusive"] = inconclusive
    rules["gate"]["inconclusive_share"] = inconclusive / n if n else None
    return {"outcome_arm": OUTCOME_ARM, "classes": classes, "rules": rules, "why": None}


def _classification(evaluation: dict) -> dict:
    models = {}
    for model, conditions in evaluation["models"].items():
        models[model] = {
            c: {
                "n_seeds": e["n_seeds"],
                **{
                    m: {"mean": e[f"{m}_mean"], "std": e[f"{m}_std"]}
                    for m in ("accuracy", "balanced_accuracy", "macro_f1")
                },
                "n_train": sum(e["n_train"].values()),
                "n_train_per_class": e["n_train"],
                "steps": e["steps"],
                "epochs_equivalent": e["epochs_equivalent"],
                "best_steps": e.get("best_steps", []),
                "budget_bound": e.get("budget_bound", False),
            }
            for c, e in conditions.items()
        }
    keep = ("headline", "primary_metric", "validity", "protocol", "order", "comparisons",
            "captured", "oracle_shortfall", "skipped", "test_images", "labels",
            "per_class_vs_classical")  # fmt: skip
    return {"models": models, **{k: evaluation.get(k) for k in keep}}


def _machine() -> dict:
    import torch

    cpu = "unknown"
    if Path("/proc/cpuinfo").is_file():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }


def _git(repo: Path = REPO) -> str:
    res = subprocess.run(
        ["git", "describe", "--always", "--dirty"], cwd=repo, capture_output=True, text=True
    )
    return res.stdout.strip() or "unknown"


# Where committed results live: changes there are earlier runs' outputs, not code, so
# they do not make a run's commit dirty (each lands as its run finishes).
RESULT_PATHS = ("experiments/expansion/results",)


def clean_commit(exploratory: bool, repo: Path = REPO) -> str:
    """The commit a result comes from, read before any work. A result meant to be
    committed comes from one clean commit, so a tree with uncommitted changes to tracked
    files outside RESULT_PATHS is refused unless the run is `exploratory` (then the
    commit reads '<sha>-dirty' in the result)."""

    def git(*args: str) -> str:
        res = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True)
        return res.stdout.strip()

    sha = git("rev-parse", "--short", "HEAD") or "unknown"
    outside = [f":(exclude){p}" for p in RESULT_PATHS]
    changed = git("status", "--porcelain", "--untracked-files=no", "--", ".", *outside)
    if changed:
        sha += "-dirty"
    if changed and not exploratory:
        raise SystemExit(
            f"{repo}: the working tree has uncommitted changes (git {sha}); a committed "
            "result comes from one clean commit: commit or stash them, or pass "
            "--exploratory for a result that is not to be committed"
        )
    return sha


def collect(dataset: str, raw: dict, run_dir: Path, times: dict, data: dict, argv: list,
            git: str) -> dict:  # fmt: skip
    """results.json's content from the finished run's outputs."""
    pre = run_dir / "preprocess"
    rows = manifest.read_rows(pre)
    counts: dict[str, dict[str, int]] = {}
    for r in rows:
        split = "few-shot" if r["in_subset"] else r["split"]
        counts.setdefault(r["label"], {}).setdefault(split, 0)
        counts[r["label"]][split] += 1
    generated = manifest.read_rows(run_dir / "generate")
    added = {label: sum(1 for g in generated if g["label"] == label) for label in counts}
    result = {
        "dataset": dataset,
        "command": "python -m experiments.expansion " + " ".join(argv),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "git": git,
        "machine": _machine(),
        "params": raw,
        "data": {
            **data,
            "ingested_manifest_sha256": file_digest(run_dir / "ingest" / manifest.MANIFEST_NAME),
            "preprocessed_manifest_sha256": file_digest(pre / manifest.MANIFEST_NAME),
            "images_per_class": counts,
            "generated_per_class": added,
        },
        "stages": times,
        "wall_s_total": round(sum(t["wall_s"] for t in times.values()), 1),
        "classification": _classification(_json(run_dir / "train" / "eval.json")),
        "gate": _gate_rows(_json(run_dir / "gate" / "gate.json")),
    }
    per_class = result["classification"]["per_class_vs_classical"] or {}
    first = next(iter(per_class.values()), {})  # the first model's, as the headline's
    result["agreement"] = agreement(result["gate"], first)
    not_run = {"skipped": "left out of this run with --skip"}
    segment = _json(run_dir / "segment" / "segment.json") if "segment" in times else not_run
    if "skipped" in segment:
        result["segmentation"] = {"skipped": segment["skipped"]}
    else:
        keep = ("headline", "validity", "protocol", "order", "conditions", "comparisons",
                "n_train_real", "n_test", "primary_metric", "primary_metric_reason")  # fmt: skip
        result["segmentation"] = {k: segment[k] for k in keep}
        result["pairs_gate"] = _gate_rows(_json(run_dir / "pairs_gate" / "gate.json"))
    detection = _json(run_dir / "detect" / "detect.json") if "detect" in times else not_run
    keep = ("headline", "validity", "protocol", "order", "models", "comparisons", "left_out",
            "not_trained", "n_test")  # fmt: skip
    result["detection"] = (
        {"skipped": detection["skipped"]} if "skipped" in detection
        else {k: detection[k] for k in keep}
    )  # fmt: skip
    return result


def _pm(e: dict, scale: float = 100.0, digits: int = 1) -> str:
    return f"{e['mean'] * scale:.{digits}f} ± {e['std'] * scale:.{digits}f}"


def markdown(result: dict) -> str:
    from defectgen.core import stats

    clf = result["classification"]
    metric = clf["primary_metric"]
    lines = [
        f"# Expansion value on {result['dataset']} ({result['date']}, git {result['git']})",
        "",
        *(f"Validity ({model}): {check['statement']}" for model, check in clf["validity"].items()),
        "",
        f"**{clf['headline']}**",
    ]
    seg = result["segmentation"]
    if "headline" in seg:
        lines += ["", f"**{seg['headline']}**"]
    data = result["data"]
    lines += [
        "",
        f"Command: `{result['command']}`. Data: {data['source']}; preprocessed manifest "
        f"sha256 {data['preprocessed_manifest_sha256'][:16]}. Machine: "
        f"{result['machine']['cpu']}, {result['machine']['cores']} cores, torch "
        f"{result['machine']['torch']}. All stages: {result['wall_s_total'] / 60:.1f} min.",
        "",
        "| class | " + " | ".join(["few-shot", "train outside", "val", "test", "generated"]) + " |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, c in data["images_per_class"].items():
        lines.append(
            f"| {label} | {c.get('few-shot', 0)} | {c.get('train', 0)} | {c.get('val', 0)} | "
            f"{c.get('test', 0)} | {data['generated_per_class'].get(label, 0)} |"
        )
    p = clf["protocol"]
    lines += [
        "",
        "## Classifiers (real test split)",
        "",
        f"{len(p['seeds'])} paired seeds, {p['steps']} optimizer steps at batch "
        f"{p['batch_size']} in every condition ({p['optimizer']}, {p['schedule']}; "
        f"{p['selection']}); primary metric {metric}; scores in % (mean ± sample std). "
        f"Classical augmentation: {p['classical']}.",
        "",
        *(f"- {model}: {text}." for model, text in p.get("models", {}).items()),
        "",
        "| model | condition | train images | epochs | accuracy | balanced accuracy | "
        "macro-F1 | best steps | budget-bound | seeds |",
        "|---|---|---:|---:|---:|---:|---:|---|---|---:|",
    ]
    for model, conditions in clf["models"].items():
        for c in clf["order"]:
            e = conditions[c]
            best = ", ".join(map(str, e["best_steps"])) or "-"
            lines.append(
                f"| {model} | {c} | {e['n_train']} | {e['epochs_equivalent']:.1f} | "
                f"{_pm(e['accuracy'])} | {_pm(e['balanced_accuracy'])} | {_pm(e['macro_f1'])} "
                f"| {best} | {'yes' if e['budget_bound'] else 'no'} | {e['n_seeds']} |"
            )
    interval = (clf.get("protocol") or {}).get("interval", "95 % t interval over seeds")
    lines += ["", f"Paired differences in test {metric} (interval: {interval}; p and "
              "the synthetic arms' Holm adjustment per model; their verdicts from it):", "",
              "| model | arm | control | difference | p (Holm) | verdict |",
              "|---|---|---|---:|---:|---|"]  # fmt: skip
    for model, comparisons in clf["comparisons"].items():
        for c in comparisons:
            if c["metric"] == metric:
                lines.append(
                    f"| {model} | {c['arm']} | {c['control']} | "
                    f"{stats.describe({**c, 'p_value': None})} | {stats.p_text(c)} | "
                    f"{c['verdict']} |"
                )
    for model, captured in clf["captured"].items():
        for arm, cap in captured.items():
            if cap["fraction"] is None:
                lines += ["", f"{model} {arm}: no share of the oracle's gain: {cap['why']}."]
            else:
                ci = cap["ci"]
                span = f" (95 % bootstrap CI {ci[0]:.2f} to {ci[1]:.2f})" if ci else ""
                lines += ["", f"{model} {arm} captures {cap['fraction']:.2f} of the oracle's "
                          f"gain over real{span}."]  # fmt: skip
    for condition, reason in clf["skipped"].items():
        lines += ["", f"{condition}: not trained, {reason}."]
    lines += ["", "## Gate (per class)", "",
              "| class | distance | real vs real | ratio | k-NN precision / recall | "
              "no harm on val (synthetic - classical) or, before it, the utility | train "
              "images to resolve the utility | verdict (rule) | kept / generated |",
              "|---|---:|---:|---:|---:|---:|---:|---|---:|"]  # fmt: skip
    for label, g in result["gate"].items():
        dist = "-" if g["distance"] is None else f"{g['distance']:.1f}"
        rvr = "-" if g["real_vs_real"] is None else f"{g['real_vs_real']:.1f}"
        ratio = "-" if g["ratio"] is None else f"{g['ratio']:.2f}"
        pr = ("-" if g["knn_precision"] is None
              else f"{g['knn_precision']:.2f} / {g['knn_recall']:.2f}")  # fmt: skip
        u, check = g["utility"], g.get("no_harm")
        util = "-" if u is None else stats.describe({**u, "p_value": None}, points=False)
        if u is not None and u.get("mde") is not None:
            util += f", MDE {u['mde']:.3f}"
        if check is not None:
            util = stats.describe({**check, "p_value": None})
        need = "-" if u is None or u.get("n_needed") is None else str(u["n_needed"])
        rule = f" ({g['rule']})" if g.get("rule") else ""
        lines.append(
            f"| {label} | {dist} | {rvr} | {ratio} | {pr} | {util} | {need} | {g['verdict']}"
            f"{rule} | {g['n_kept']} / {g['n_synthetic']} |"
        )
    lines += agreement_lines(result["agreement"])
    if "headline" in seg:
        lines += ["", "## Segmentation (real test split)", "",
                  f"{len(seg['protocol']['seeds'])} paired seeds, {seg['protocol']['steps']} "
                  f"steps per U-Net. Classical: {seg['protocol']['classical']}.", "",
                  "| condition | train pairs | S-measure | Dice | MAE |",
                  "|---|---:|---:|---:|---:|"]  # fmt: skip
        for c in seg["order"]:
            e = seg["conditions"][c]
            if "skipped" in e:
                lines.append(f"| {c} | - | {e['skipped']} | | |")
                continue
            lines.append(
                f"| {c} | {e['n_train']} | {_pm(e['s_measure'], 1, 3)} | "
                f"{_pm(e['dice'], 1, 3)} | {_pm(e['mae'], 1, 3)} |"
            )
        lines += ["", f"Validity: {seg['validity']['statement']}", "",
                  "| arm | control | metric | difference | p (Holm) | verdict |",
                  "|---|---|---|---:|---:|---|"]  # fmt: skip
        for c in seg["comparisons"]:
            if c["metric"] in ("s_measure", "dice"):
                p_text = stats.p_text(c)
                lines.append(
                    f"| {c['arm']} | {c['control']} | {c['metric']} | "
                    f"{stats.describe({**c, 'p_value': None}, points=False)} | {p_text} | "
                    f"{c['verdict']} |"
                )
    elif "skipped" in seg:
        lines += ["", f"Segmentation: skipped ({seg['skipped']})."]
    lines += detection_lines(result.get("detection", {"skipped": "not run"}))
    lines += ["", "## Wall time per stage", "", "| stage | s | git | params |"]
    lines.append("|---|---:|---|---|")
    for stage, t in result["stages"].items():
        params = "earlier params (kept: --keep-finished)" if t.get("other_params") else "these"
        lines.append(f"| {stage} | {t['wall_s']:.1f} | {t.get('git') or '?'} | {params} |")
    return "\n".join(lines) + "\n"


def detection_lines(det: dict) -> list[str]:
    """results.md's detection tables: mAP per model and condition, paired differences."""
    from defectgen.core import stats

    if "skipped" in det:
        return ["", f"Detection: skipped ({det['skipped']})."]
    p = det["protocol"]
    lines = ["", "## Detectors (real test split, COCOeval)", "", f"**{det['headline']}**", "",
             f"{len(p['seeds'])} paired seeds, {p['steps']} SGD steps at batch "
             f"{p['batch_size']} per detector. Classical: {p['classical']}.", "",
             "| model | condition | train images | mAP@[.5:.95] | mAP@.5 |",
             "|---|---|---:|---:|---:|"]  # fmt: skip
    for model, conditions in det["models"].items():
        for c in det["order"]:
            e = conditions[c]
            lines.append(
                f"| {model} | {c} | {e['n_train']} | {e['map_mean']:.3f} ± {e['map_std']:.3f} "
                f"| {e['map50_mean']:.3f} ± {e['map50_std']:.3f} |"
            )
    lines += [""] + [f"Validity ({m}): {c['statement']}" for m, c in det["validity"].items()]
    lines += ["", "| model | arm | control | metric | difference | verdict |",
              "|---|---|---|---|---:|---|"]  # fmt: skip
    for model, comparisons in det["comparisons"].items():
        for c in comparisons:
            if c["metric"] in ("map", "map50"):
                lines.append(f"| {model} | {c['arm']} | {c['control']} | {c['metric']} | "
                             f"{stats.describe(c, points=False)} | {c['verdict']} |")  # fmt: skip
    for arm, dropped in det["left_out"].items():
        if dropped:
            lines += ["", f"{arm}: left out for want of annotations: {dropped}."]
    return lines


def agreement_lines(agree: dict) -> list[str]:
    """results.md's table: each rule's verdict per class against the test outcome."""
    from defectgen.core import stats

    if agree["why"]:
        return ["", f"Gate agreement: not measured ({agree['why']})."]
    lines = [
        "",
        f"Did the verdict predict the test outcome? Outcome: the class's test F1 in "
        f"{agree['outcome_arm']} minus in its classical arm (paired seeds, 95 % t "
        "interval); a rule is right when it passed a class whose images helped or kept "
        "out one whose images did not.",
        "",
        "| class | outcome (F1) | FD ratio rule | gate verdict |",
        "|---|---:|---|---|",
    ]
    for label, c in agree["classes"].items():
        delta = stats.describe({"delta": c["outcome_f1_delta"], "ci": c["outcome_ci"],
                                "p_value": None}, points=False)  # fmt: skip
        lines.append(
            f"| {label} | {delta} ({c['outcome']}) | {c['fd_ratio_verdict']} "
            f"({'right' if c['fd_ratio_right'] else 'wrong'}) | {c['gate_verdict']} "
            f"({'right' if c['gate_right'] else 'wrong'}) |"
        )
    r = agree["rules"]
    f, g = r["fd_ratio"], r["gate"]
    lines += ["", f"FD ratio rule right on {f['right']} of {f['n']} classes "
              f"({f['right_resolved']} of the {f['n_resolved']} with a resolved outcome); "
              f"the gate on {g['right']} of {g['n']} ({g['right_resolved']} of "
              f"{g['n_resolved']} resolved; {g['inconclusive']} inconclusive, kept "
              "out)."]  # fmt: skip
    return lines


def replicate_params(dataset: str, profile: Path, toy: bool, track: bool,
                     settings: tuple[dict, ...], replicate: int) -> dict:  # fmt: skip
    """build_params for replicate `replicate` of the whole expansion: the seed (of the
    split, the few-shot draw and every stage) plus the replicate's number, all else
    equal; replicate 0 is the params as they are."""
    raw = build_params(dataset, profile, toy, track, settings)
    if not replicate:
        return raw
    return build_params(dataset, profile, toy, track,
                        (*settings, {"seed": raw["seed"] + replicate}))  # fmt: skip


# every unit's score, copied beside results.json: (stage output, name in the results)
UNIT_SCORES = (("train/test_predictions.parquet", "train-test_predictions.parquet"),
               ("train/runs.parquet", "train-runs.parquet"),
               ("segment/runs.parquet", "segment-runs.parquet"),
               ("segment/test_scores.parquet", "segment-test_scores.parquet"),
               ("detect/runs.parquet", "detect-runs.parquet"))  # fmt: skip


def copy_unit_scores(run_dir: Path, out: Path) -> list[str]:
    """Each trained model's scores (per seed; the classifiers' per test image too), so
    the result's intervals can be recomputed from the committed files."""
    copied = []
    for src, name in UNIT_SCORES:
        if (run_dir / src).is_file():
            shutil.copyfile(run_dir / src, out / name)
            copied.append(name)
    return copied


def copy_grids(run_dir: Path, out: Path) -> list[str]:
    """The real-vs-synthetic grids a reader judges the images by."""
    copied = []
    for src, name in ((run_dir / "generate" / "samples.png", "generated.png"),
                      (run_dir / "detect" / "boxes.png", "detect-boxes.png")):  # fmt: skip
        if src.is_file():
            shutil.copyfile(src, out / name)
            copied.append(name)
    grids = (
        sorted((run_dir / "pairs" / "grids").glob("*.png")) if (run_dir / "pairs").is_dir() else []
    )
    for src in grids[:3]:
        shutil.copyfile(src, out / f"pairs-{src.name}")
        copied.append(f"pairs-{src.name}")
    return copied


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(
        prog="python -m experiments.expansion", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("dataset", help="elpv | neu-det | sd-saliency-900 | a name with --profile")
    ap.add_argument("--profile", type=Path, help="overrides of params.yaml (default: "
                    "experiments/expansion/profiles/<dataset>.yaml)")  # fmt: skip
    ap.add_argument("--run-dir", type=Path, help="work folder (default: runs/expansion/<dataset>)")
    ap.add_argument("--results", type=Path, help="default: experiments/expansion/results/<dataset>")
    ap.add_argument("--toy", action="store_true", help="toy sizes: checks the harness only")
    ap.add_argument("--track", action="store_true", help="log to MLflow ($MLFLOW_TRACKING_URI)")
    ap.add_argument("--keep-finished", action="store_true", help="keep finished stages even if "
                    "they ran with other params or code (to add a stage to a finished run); "
                    "results record each stage's params key and git sha")  # fmt: skip
    ap.add_argument("--skip", nargs="+", default=[], choices=[n for n, _ in STAGES],
                    metavar="STAGE", help="stages not to run, with everything downstream of "
                    "them (e.g. --skip detect); their results read 'not run'")  # fmt: skip
    ap.add_argument("--set", type=setting, action="append", default=[], metavar="KEY=VALUE",
                    help="one more override after the profile's, e.g. --set "
                    "pairs.background=real (recorded in results.json's command)")  # fmt: skip
    ap.add_argument("--exploratory", action="store_true", help="run on a tree with "
                    "uncommitted changes (the result says so; not to be committed)")  # fmt: skip
    ap.add_argument("--replicate", type=int, default=0, metavar="K",
                    help="replicate K > 0 of the whole expansion: the params' seed plus K, so "
                    "a fresh split, few-shot draw and generator run; into replicate-K/ "
                    "folders beside replicate 0's")  # fmt: skip
    args = ap.parse_args(argv)
    if args.replicate < 0:
        raise SystemExit(f"--replicate {args.replicate}: a replicate is a number from 0")
    profile = (args.profile or PROFILES / f"{args.dataset}.yaml").resolve()
    if not profile.is_file():
        known = sorted(p.stem for p in PROFILES.glob("*.yaml"))
        raise SystemExit(f"{profile}: no such profile; datasets with one: {known}, or --profile")
    git = clean_commit(args.exploratory or args.toy)  # toy sizes check the harness only
    part = f"replicate-{args.replicate}" if args.replicate else ""
    run_dir = (args.run_dir or REPO / "runs" / "expansion" / args.dataset / part).resolve()
    out = (args.results or RESULTS / args.dataset / part).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    raw = replicate_params(args.dataset, profile, args.toy, args.track, tuple(args.set),
                           args.replicate)  # fmt: skip
    data = copy_data(raw, run_dir)
    (run_dir / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    started = time.perf_counter()
    times = run_stages(raw, run_dir, keep_finished=args.keep_finished, skip=tuple(args.skip))
    result = collect(args.dataset, raw, run_dir, times, data, argv, git)
    result["profile"] = (
        str(profile.relative_to(REPO)) if profile.is_relative_to(REPO) else str(profile)
    )
    result["profile_sha256"] = hashlib.sha256(profile.read_bytes()).hexdigest()
    out.mkdir(parents=True, exist_ok=True)
    result["not_run"] = [name for name, _ in STAGES if name not in times]
    result["grids"] = copy_grids(run_dir, out)
    result["replicate"] = args.replicate
    result["unit_scores"] = copy_unit_scores(run_dir, out)
    atomic_write_json(out / "results.json", result)
    (out / "results.md").write_text(markdown(result), encoding="utf-8")
    print(f"[expansion] {args.dataset}: {time.perf_counter() - started:.0f} s -> {out}")
    print(result["classification"]["headline"])
    return 0
