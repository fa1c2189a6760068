"""Where time goes in the CPU demo: every compute stage of the DAG, one process each.

Runs the stages as `dvc repro` does (the `defectgen` CLI, one process per stage, each
stage's outputs feeding the next) on params.yaml's demo, with tracking off, and records
per stage: wall time, throughput in the stage's natural unit, and peak RSS (the stage
process's own, from wait4). Results: benchmarks/results/cpu_pipeline-<label>.json and
a row block in benchmarks/results/cpu_pipeline.md.

    python benchmarks/cpu_pipeline.py --label before              # the whole DAG
    python benchmarks/cpu_pipeline.py --label after --stages base,train
                                      # only these, on the earlier run's upstream outputs

Stages not listed must have their outputs in --work from an earlier run. A listed
stage's output (and its resume state) is deleted first, so it runs from scratch. The
real-feature cache (`.features`, shared by sweep and gate) is cleared with sweep, as on
a fresh clone.

This machine's speed drifts by tens of percent over a day, so compare one stage's code
before and after a change interleaved, on the same inputs: `--src` runs the stages
from another checkout (a `git worktree` of the old commit), e.g.

    git worktree add /tmp/old <commit>
    for i in 1 2; do
      python benchmarks/cpu_pipeline.py --label train-old --stages train --src /tmp/old
      python benchmarks/cpu_pipeline.py --label train-new --stages train
    done
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

from defectgen.declarations import graph, path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"

# (stage, CLI inputs as (artifact, upstream stage)) in DAG order, from the declarations:
# the classification path, what the CPU benchmark times.
BENCHED = path("ingest", "train")
STAGES = [(name, list(inputs.items())) for name, inputs in graph() if name in BENCHED]


def machine() -> dict[str, object]:
    import torch

    cpu = "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        mem_kb = int(meminfo.read_text().split("MemTotal:")[1].split()[0])
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kb / 2**20, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "os": platform.platform(),
    }


def run_stage(
    stage: str,
    params: Path,
    work: Path,
    inputs: list[tuple[str, str]],
    src: Path,
    timeout: float | None = None,
) -> dict:
    """One stage as its own process; wall seconds, peak RSS and the stage's metrics.
    Past `timeout` seconds the stage is killed and the record says `cut` (its finished
    units stay in its resume folder, as after any killed run)."""
    out = work / stage
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(work / f".{stage}.resume", ignore_errors=True)
    if stage == "sweep":
        shutil.rmtree(work / ".features", ignore_errors=True)
    metrics = work / "metrics" / f"{stage}.json"
    cmd = [
        sys.executable,
        "-m",
        "defectgen.cli",
        stage,
        "--params",
        str(params),
        "--out",
        str(out),
        "--metrics",
        str(metrics),
    ]
    for option, upstream in inputs:
        cmd += [f"--{option}", str(work / upstream)]
    started = time.perf_counter()
    # our sources ahead of the editable install (and of any carried wheels' folder)
    path = os.pathsep.join(p for p in (str(src / "src"), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path}
    proc = subprocess.Popen(cmd, cwd=work, env=env)
    timer = None
    if timeout is not None:
        timer = threading.Timer(max(timeout, 0.0), proc.kill)
        timer.start()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if timer is not None:
        timer.cancel()
        if timeout is not None and wall >= timeout and proc.returncode != 0:
            return {"wall_s": round(wall, 1), "cut": True}
    if proc.returncode != 0:
        raise SystemExit(f"{stage} failed (exit {proc.returncode}): {' '.join(cmd)}")
    return {
        "wall_s": round(wall, 1),
        "peak_rss_mib": round(usage.ru_maxrss / 1024),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
        "metrics": json.loads(metrics.read_text()),
    }


def _manifest_rows(folder: Path) -> int:
    import pyarrow.parquet as pq

    return pq.read_metadata(folder / "manifest.parquet").num_rows


def throughput(stage: str, p: dict, work: Path, result: dict) -> tuple[float, str]:
    """(units processed, unit name) for the stage, from params and its outputs."""
    m = result["metrics"]
    if stage in ("ingest", "preprocess"):
        return float(m["n_images"]), "images"
    if stage == "base":
        b = p["base"]
        steps = b["vae_steps"] + b["unet_steps"]
        return float(steps * b["batch_size"]), "images (train steps x batch)"
    if stage == "finetune":
        f = p["finetune"]
        steps = f["ti"]["steps"] + (f["lora"]["steps"] if f["mode"] == "ti_lora" else 0)
        return float(m["n_classes"] * steps * f["batch_size"]), "images (train steps x batch)"
    if stage == "sweep":
        s = p["sweep"]
        cells = len(s["strengths"]) * len(s["guidances"])
        n_classes = len(json.loads((work / "sweep" / "chosen.json").read_text())["classes"])
        return float(n_classes * cells * s["probe_images"]), "probe images generated"
    if stage == "generate":
        return float(_manifest_rows(work / "generate")), "images generated"
    if stage == "gate":
        gate = json.loads((work / "gate" / "gate.json").read_text())["classes"].values()
        # synthetic + reference (val) + real/blurred/noised train sets, as featurised
        n = sum(e["n_synthetic"] + e["n_reference"] + 3 * e["n_compared"] for e in gate)
        return float(n), "images featurised (upper bound: cached real features count)"
    if stage == "train":
        evaluation = json.loads((work / "train" / "eval.json").read_text())
        n = sum(
            e["steps"] * e["n_seeds"]
            for conditions in evaluation["models"].values()
            for e in conditions.values()
        )
        return float(n * p["train"]["batch_size"]), "training images seen (steps x batch x runs)"
    raise KeyError(stage)


def markdown(label: str, record: dict) -> str:
    m = record["machine"]
    lines = [
        f"## {label} ({record['date']}, git {record['git']})",
        "",
        f"{m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; torch {m['torch']} "
        f"({m['torch_threads']} threads), Python {m['python']}. Params: {record['params']}.",
        "",
        "| stage | wall s | share | throughput | unit | peak RSS MiB | CPU s |",
        "|---|---:|---:|---:|---|---:|---:|",
    ]
    total = sum(s["wall_s"] for s in record["stages"].values())
    for stage, s in record["stages"].items():
        lines.append(
            f"| {stage} | {s['wall_s']:.1f} | {s['wall_s'] / total:.0%} | "
            f"{s['per_s']:.1f}/s | {s['unit']} | {s['peak_rss_mib']} | {s['cpu_s']:.1f} |"
        )
    lines.append(f"| **total** | **{total:.1f}** | | | | | |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--label", required=True, help="names the result files (before, after, ...)")
    ap.add_argument("--params", type=Path, default=REPO / "params.yaml")
    ap.add_argument("--work", type=Path, default=REPO / "benchmarks" / "work")
    ap.add_argument("--stages", default=",".join(s for s, _ in STAGES))
    ap.add_argument("--src", type=Path, default=REPO, help="the checkout whose code runs")
    args = ap.parse_args(argv)
    wanted = args.stages.split(",")
    unknown = set(wanted) - {s for s, _ in STAGES}
    if unknown:
        ap.error(f"unknown stages {sorted(unknown)}; stages: {[s for s, _ in STAGES]}")

    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    p = yaml.safe_load(args.params.read_text())
    p["tracking"]["enabled"] = False  # MLflow is not what is measured
    params = work / "params.yaml"
    params.write_text(yaml.safe_dump(p))

    src = args.src.resolve()
    git = subprocess.run(
        ["git", "describe", "--always", "--dirty"], cwd=src, capture_output=True, text=True
    ).stdout.strip()
    record = {
        "label": args.label,
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "git": git or "unknown",
        "params": str(
            args.params.relative_to(REPO) if args.params.is_relative_to(REPO) else args.params
        ),
        "machine": machine(),
        "stages": {},
    }
    for stage, inputs in STAGES:
        for _, upstream in inputs if stage in wanted else []:
            if upstream not in wanted and not (work / upstream).is_dir():
                ap.error(f"{stage} needs {work / upstream}: list {upstream} too")
    for stage, inputs in STAGES:
        if stage not in wanted:
            continue
        print(f"[bench] {stage} ...", flush=True)
        result = run_stage(stage, params, work, inputs, src)
        units, unit = throughput(stage, p, work, result)
        result.update(units=units, unit=unit, per_s=units / result["wall_s"])
        record["stages"][stage] = result
        print(
            f"[bench] {stage}: {result['wall_s']} s, {result['per_s']:.1f} {unit}/s, "
            f"peak RSS {result['peak_rss_mib']} MiB",
            flush=True,
        )

    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"cpu_pipeline-{args.label}.json").write_text(json.dumps(record, indent=2) + "\n")
    table = RESULTS / "cpu_pipeline.md"
    blocks = table.read_text() if table.is_file() else "# CPU pipeline benchmark\n\n"
    table.write_text(blocks + markdown(args.label, record) + "\n")
    print(markdown(args.label, record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
