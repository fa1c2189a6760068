"""The whole DAG on a GPU, through report: NEU-DET at 128 px with the GPU profile
(gpu_neu.yaml).

Each stage runs as `dvc repro` runs it (the `defectgen` CLI, one process per stage;
cpu_pipeline.run_stage), with params.yaml + gpu_neu.yaml merged and the data folder
set. After every stage the results are rewritten, so a run cut at `--deadline` keeps
every stage that finished:

    gpu_pipeline-<device>.json   per stage: wall s, throughput, peak RSS, metrics;
                                 gate.json and train's eval.json when they exist
    gpu_pipeline-<device>.md     the same as tables

    python benchmarks/gpu_pipeline.py --data .gpudata/neu-det-128 --out OUT
    python benchmarks/gpu_pipeline.py --smoke --data DIR --out OUT   # CPU, toy sizes

NEU-DET has no masks, so the mask branch (masks, pairs, pairs_gate, segment) would
only record "skipped"; it is not run here.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cpu_pipeline import BENCHED, REPO, STAGES, machine, run_stage, throughput  # noqa: E402

from defectgen.config import merge_overrides as merged  # noqa: E402
from defectgen.declarations import get_stage, upstream  # noqa: E402

PROFILE = REPO / "benchmarks" / "gpu_neu.yaml"
# cpu_pipeline's stages, then the report over what they wrote
DAG = [
    *STAGES,
    ("report", [(a, s) for a, s in upstream(get_stage("report")).items() if s in BENCHED]),
]
# --smoke: the same DAG at toy size on the CPU (checks the harness, not the GPU).
SMOKE = {
    "preprocess": {"image_size": 32, "split": {"train": 0.5, "val": 0.25, "test": 0.25}},
    "model": {"device": "cpu", "dtype": "bfloat16", "tiny": {
        "vae_channels": [16, 32, 32], "unet_channels": [32, 64], "unet_layers_per_block": 1,
        "unet_heads": 2, "text_hidden": 32, "text_layers": 2, "text_heads": 4}},
    "base": {"batch_size": 8, "vae_steps": 3, "unet_steps": 3},
    "finetune": {"batch_size": 2, "ti": {"steps": 2}, "lora": {"steps": 2}},
    "sweep": {"strengths": [0.5], "guidances": [2.0], "probe_images": 3},
    "generate": {"images_per_class": 4, "batch_size": 4, "steps": 4},
    "train": {"models": ["squeezenet1_1"], "seeds": [0], "steps": 4, "evals": 1,
              "batch_size": 16},
}  # fmt: skip


def device_name() -> str:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"


def markdown(record: dict) -> str:
    m = record["machine"]
    lines = [
        f"# The DAG on NEU-DET, {record['device']} ({record['date']}, git {record['git']})",
        "",
        f"{m['cpu']}, {m['cores']} cores; torch {m['torch']}. Profile: params.yaml + "
        f"{record['profile']}; data {record['data']} ({record['n_images']} images).",
        "",
        "| stage | wall s | throughput | unit | peak RSS MiB |",
        "|---|---:|---:|---|---:|",
    ]
    for stage, s in record["stages"].items():
        if s.get("cut") or s.get("skipped"):
            lines.append(
                f"| {stage} | {s.get('wall_s', 0):.1f} | "
                f"{s.get('why', 'cut at the deadline')} | | |"
            )
            continue
        lines.append(
            f"| {stage} | {s['wall_s']:.1f} | {s['per_s']:.1f}/s | {s['unit']} | "
            f"{s['peak_rss_mib']} |"
        )
    done = [s["wall_s"] for s in record["stages"].values()]
    lines.append(f"| **total** | **{sum(done):.1f}** | | | |")
    gate = record.get("gate")
    if gate:
        lines += ["", f"Gate ({gate['extractor']}):", "",
                  "| class | distance | real vs real | ratio | passed | kept |",
                  "|---|---:|---:|---:|---|---:|"]  # fmt: skip
        for label, e in gate["classes"].items():
            fd = next((k[: -len("_real")] for k in e if k.endswith("_real")), None)
            dist, real = (e[fd], e[f"{fd}_real"]) if fd else (None, None)
            ratio = e.get("ratio")
            lines.append(
                f"| {label} | {dist if dist is None else f'{dist:.1f}'} | "
                f"{real if real is None else f'{real:.1f}'} | "
                f"{ratio if ratio is None else f'{ratio:.2f}'} | {e['passed']} | "
                f"{e.get('n_kept', 0)} |"
            )
    evaluation = record.get("eval")
    if evaluation:
        lines += ["", "Classifiers on the real test split (mean +- std over seeds):", "",
                  "| model | condition | accuracy | macro-F1 | train images | seeds |",
                  "|---|---|---:|---:|---:|---:|"]  # fmt: skip
        for model, conditions in evaluation["models"].items():
            for condition, e in conditions.items():
                lines.append(
                    f"| {model} | {condition} | {e['accuracy_mean']:.3f} +- "
                    f"{e['accuracy_std']:.3f} | {e['macro_f1_mean']:.3f} | "
                    f"{sum(e['n_train'].values())} | {e['n_seeds']} |"
                )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="NEU-DET class folders")
    ap.add_argument("--out", type=Path, required=True, help="where the two result files go")
    ap.add_argument("--work", type=Path, default=Path("/tmp/defectgen-gpu-pipeline"))
    ap.add_argument("--deadline", type=float, default=None, help="Unix time to stop at")
    ap.add_argument("--smoke", action="store_true", help="toy sizes on the CPU")
    args = ap.parse_args(argv)

    p = merged(
        yaml.safe_load((REPO / "params.yaml").read_text()), yaml.safe_load(PROFILE.read_text())
    )
    if args.smoke:
        p = merged(p, SMOKE)
    p["data"]["root"] = str(args.data.resolve())
    work = args.work.resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    params = work / "params.yaml"
    params.write_text(yaml.safe_dump(p))
    args.out.mkdir(parents=True, exist_ok=True)

    device = "CPU (smoke)" if args.smoke else device_name()
    stem = "gpu_pipeline-" + ("smoke" if args.smoke else device.replace(" ", "_"))
    record = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "git": _git(),
        "device": device,
        "profile": "benchmarks/gpu_neu.yaml" + (" + smoke" if args.smoke else ""),
        "data": str(args.data),
        "n_images": sum(1 for _ in args.data.rglob("*.jpg")),
        "machine": machine(),
        "stages": {},
    }

    def save() -> None:
        for key, path in (
            ("gate", work / "gate" / "gate.json"),
            ("eval", work / "train" / "eval.json"),
        ):
            if path.is_file():
                record[key] = json.loads(path.read_text())
        (args.out / f"{stem}.json").write_text(json.dumps(record, indent=2) + "\n")
        (args.out / f"{stem}.md").write_text(markdown(record))

    for stage, inputs in DAG:
        left = None if args.deadline is None else args.deadline - time.time()
        if left is not None and left < 5:
            record["stages"][stage] = {"wall_s": 0.0, "skipped": True, "why": "not run: deadline"}
            save()
            continue
        print(f"[gpu pipeline] {stage} ...", flush=True)
        try:
            result = run_stage(stage, params, work, inputs, REPO, timeout=left)
        except SystemExit as exc:  # the stage failed: keep what finished, say which
            record["stages"][stage] = {"wall_s": 0.0, "skipped": True, "why": f"failed: {exc}"}
            save()
            print(f"[gpu pipeline] {exc}", flush=True)
            return 1
        if not result.get("cut"):
            units, unit = (
                (1.0, "report") if stage == "report" else throughput(stage, p, work, result)
            )
            result.update(units=units, unit=unit, per_s=units / max(result["wall_s"], 1e-9))
        record["stages"][stage] = result
        save()
        print(
            f"[gpu pipeline] {stage}: {result['wall_s']} s"
            + (" (cut)" if result.get("cut") else ""),
            flush=True,
        )
        if result.get("cut"):
            break
    grid = work / "generate" / "samples.png"
    if grid.is_file():
        shutil.copyfile(grid, args.out / f"{stem}-samples.png")
    save()
    print(markdown(record))
    return 0


def _git() -> str:
    import subprocess

    res = subprocess.run(
        ["git", "describe", "--always", "--dirty"], cwd=REPO, capture_output=True, text=True
    )
    return res.stdout.strip() or "unknown"


if __name__ == "__main__":
    sys.exit(main())
