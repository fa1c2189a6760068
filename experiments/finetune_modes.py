"""Finetune modes side by side: StableSDG's Table II ablations and Valvano et al.'s
DreamBooth, on the same preprocessed data and base.

    python -m experiments.finetune_modes --preprocessed data/preprocessed --base data/base \
        --modes ti_lora,dreambooth

A finished run's preprocess and base outputs (make demo's, or an expansion run's) are
read, never written. Per mode, the finetune -> sweep -> generate -> gate stages run into
`--work/<mode>/` with params.yaml (or `--params`) plus the mode (`dreambooth-unet` is
dreambooth with the full UNet; DreamBooth's identifier starts from `--identifier`). Per
mode and class the table gives the adapters' wall time, the generated batch's Frechet
distance on the gate's extractor's features (EfficientNet-Lite0 offline) to the gate's
val half, its ratio to the real-vs-real distance there, the gate's no-harm check and
verdict. Results: `--out` (results.json, results.md). A rerun keeps finished stages.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import subprocess
from pathlib import Path

import yaml

from defectgen.atomic import atomic_write_json
from defectgen.config import merge_overrides, parse_params
from defectgen.declarations import graph, path

REPO = Path(__file__).resolve().parents[1]
MODES = {
    "ti_lora": {"mode": "ti_lora"},
    "ti": {"mode": "ti"},
    "lora": {"mode": "lora"},
    "full_attn": {"mode": "full_attn"},
    "dreambooth": {"mode": "dreambooth", "dreambooth": {"train": "lora"}},
    "dreambooth-unet": {"mode": "dreambooth", "dreambooth": {"train": "unet"}},
}
# (stage, {input artifact: its stage}) from the declarations: each input a folder of the
# mode's work dir (what these stages write) or of the finished run (the rest)
STAGES = [(n, up) for n, up in graph() if n in path("finetune", "gate")]


def run_mode(raw: dict, mode: str, identifier: str, given: dict[str, Path], work: Path) -> dict:
    """The four stages for one mode; a stage whose output exists is kept."""
    from defectgen.runner import execute, get_stage

    over = {"finetune": MODES[mode], "tracking": {"enabled": False}}
    if mode.startswith("dreambooth"):
        over["finetune"] = merge_overrides(over["finetune"], {"initializer": identifier})
    params = parse_params(merge_overrides(raw, over), f"mode {mode}")
    walls = {}
    for name, inputs in STAGES:
        out = work / mode / name
        marker = work / mode / f".{name}.json"
        if out.is_dir() and marker.is_file():
            walls[name] = json.loads(marker.read_text(encoding="utf-8"))["wall_s"]
            continue
        paths = {opt: given.get(opt, work / mode / up) for opt, up in inputs.items()}
        print(f"[finetune_modes] {mode}: {name} ...", flush=True)
        _, wall = execute(get_stage(name), params, out_dir=out, inputs=paths, track=False)
        walls[name] = round(wall, 1)
        atomic_write_json(marker, {"wall_s": walls[name]})
    gate = json.loads((work / mode / "gate" / "gate.json").read_text(encoding="utf-8"))
    adapters = json.loads((work / mode / "finetune" / "finetune.json").read_text("utf-8"))
    fd = next(k for k in next(iter(gate["classes"].values())) if k.endswith("_real"))[:-5]
    classes = {}
    for label, g in gate["classes"].items():
        check = g.get("no_harm") or {}  # core.no_harm: synthetic - classical on val
        classes[label] = {
            "distance": fd,  # fd_<extractor>: Frechet distance on that extractor's features
            "fd": g[fd],
            "fd_real": g[f"{fd}_real"],
            "ratio": g["ratio"],
            "no_harm_delta": check.get("delta"),
            "no_harm_ci": check.get("ci"),
            "verdict": g.get("verdict", "pass" if g["passed"] else "fail"),
            "phases": {k: v["steps"] for k, v in adapters[label]["phases"].items()},
        }
    return {"wall_s": walls, "classes": classes, "finetune": params.finetune.model_dump()}


def markdown(result: dict) -> str:
    lines = [
        f"# Finetune modes ({result['date']}, git {result['git']})",
        "",
        f"Data and base: `{result['preprocessed']}`, `{result['base']}`; params "
        f"`{result['params']}`; the sweep picks each class's strength and guidance per mode."
        " Distances: Frechet distance on the gate's extractor's features to its val half"
        " (`fd_effnet_lite0`: EfficientNet-Lite0), ratio to"
        " the real-vs-real distance there; no harm: the gate's val score with the class's"
        " images minus with as many classical copies (95 % interval, pp).",
        "",
        "| mode | class | finetune s (all classes) | distance | real-vs-real | ratio "
        "| no harm [CI] | verdict |",
        "|---|---|---:|---:|---:|---:|---|---|",
    ]
    for mode, r in result["modes"].items():
        for label, c in r["classes"].items():
            ci, d = c.get("no_harm_ci"), c.get("no_harm_delta")
            util = "-" if ci is None else f"{100 * d:+.1f} [{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]"
            lines.append(
                f"| {mode} | {label} | {r['wall_s']['finetune']:.0f} | "
                f"{c['fd']:.1f} ({c['distance']}) | {c['fd_real']:.1f} | "
                f"{c['ratio']:.2f} | {util} | {c['verdict']} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiments.finetune_modes")
    ap.add_argument("--preprocessed", type=Path, required=True, help="a finished preprocess")
    ap.add_argument("--base", type=Path, required=True, help="a finished base stage's folder")
    ap.add_argument("--modes", default="ti_lora,dreambooth", help=f"of {', '.join(MODES)}")
    ap.add_argument("--params", type=Path, default=REPO / "params.yaml")
    ap.add_argument("--identifier", default="sks", help="DreamBooth's rare token")
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "finetune_modes")
    ap.add_argument("--out", type=Path, default=REPO / "experiments" / "results" / "finetune-modes")
    args = ap.parse_args(argv)
    modes = args.modes.split(",")
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        raise SystemExit(f"--modes: unknown {unknown}; known: {sorted(MODES)}")
    given = {"preprocessed": args.preprocessed.resolve(), "base": args.base.resolve()}
    for name, folder in given.items():
        if not folder.is_dir():
            raise SystemExit(f"{folder}: no such folder; --{name} is a finished stage's output")
    raw = yaml.safe_load(args.params.read_text(encoding="utf-8"))
    result = {
        "date": dt.date.today().isoformat(),
        "git": subprocess.run(
            ["git", "describe", "--always", "--dirty"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip(),  # fmt: skip
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        **{name: str(folder) for name, folder in given.items()},
        "params": str(args.params),
        "identifier": args.identifier,
        "modes": {m: run_mode(raw, m, args.identifier, given, args.work) for m in modes},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "results.json", result)
    (args.out / "results.md").write_text(markdown(result), encoding="utf-8")
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
