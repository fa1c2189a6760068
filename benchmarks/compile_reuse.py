"""Does `model.compile` pay its compile once per process, or once per class?

finetune builds a fresh pipeline per class (`prior.open_base`); `models.prepare` compiles
its UNet and text encoder in place. This runs two classes' textual inversion and LoRA
(the production `adapt.train`) on the tiny profile, eager and compiled, and records for
each phase the first step (compile included) and the steady seconds per step after it.
On a CUDA machine it runs there (bf16); elsewhere on the CPU (float32, inductor's C++).

    .venv/bin/python benchmarks/compile_reuse.py [--steps 10] [--mode default]

Writes benchmarks/results/compile_reuse-<device>.json and .md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from defectgen.config import ModelConfig, TinyArchConfig  # noqa: E402
from defectgen.core.diffusion import adapt, loops, models  # noqa: E402

SIZE = 32


def one_class(base: Path, cfg: ModelConfig, label: str, rt, steps: int) -> dict:
    pipe = models.prepare(models.load_pipeline(base, revision=None, rt=rt), cfg)
    token_id = adapt.add_token(pipe, f"<{label}>", None)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8) for _ in range(8)]
    cache = loops.encode_latents(pipe.vae, loops.to_pixels(images), rt, flip=False)
    ids, sched = loops.prompt_ids(pipe, f"a photo of <{label}>"), models.training_scheduler(pipe)
    row, commit = adapt.token_parameters(pipe, token_id)
    out = {}
    for phase in ("ti", "lora"):
        if phase == "lora":
            commit()
        params = row if phase == "ti" else adapt.add_lora(pipe, 1, None, seed=0)
        timings = []
        for k in (1, steps):  # the first step (tracing and compiling), then the steady rate
            if rt.device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
            adapt.train(
                pipe, params, ids, cache, sched, steps=k, batch_size=4, lr=1e-2,
                gen=torch.Generator().manual_seed(0), rt=rt, log=lambda s, v: None,
            )  # fmt: skip
            if rt.device.type == "cuda":
                torch.cuda.synchronize()
            timings.append(time.perf_counter() - started)
        out[phase] = {"first_step_s": timings[0], "steady_s_per_step": timings[1] / steps}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--mode", default="default", help="the torch.compile mode measured")
    args = ap.parse_args(argv)
    cuda = torch.cuda.is_available()
    rt = models.Runtime(
        torch.device("cuda" if cuda else "cpu"), torch.bfloat16 if cuda else torch.float32
    )
    device = torch.cuda.get_device_name() if cuda else "CPU"
    models.quiet()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        pipe = models.build_tiny_pipeline(
            TinyArchConfig(), image_size=SIZE, work_dir=Path(tmp), seed=0
        )
        pipe.save_pretrained(Path(tmp) / "base")
        for compile_ in ("off", args.mode):
            cfg = ModelConfig(compile=compile_)
            for label in ("first", "second"):
                result = one_class(Path(tmp) / "base", cfg, label, rt, args.steps)
                for phase, r in result.items():
                    rows.append({"compile": compile_, "class": label, "phase": phase, **r})
                    print(json.dumps(rows[-1]), flush=True)
    record = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "device": device,
        "torch": torch.__version__,
        "model": f"tiny profile (params.yaml model.tiny), {SIZE} px, batch 4",
        "steps": args.steps,
        "rows": rows,
    }
    out = REPO / "benchmarks" / "results"
    stem = "compile_reuse-" + device.replace(" ", "_")
    (out / f"{stem}.json").write_text(json.dumps(record, indent=2) + "\n")
    lines = [
        f"# Compile once per process ({device}, {record['date']})",
        "",
        f"`benchmarks/compile_reuse.py`: {record['model']}; torch {torch.__version__}. Two "
        "classes, each on a fresh pipeline as finetune builds them.",
        "",
        "| compile | class | phase | first step (s) | steady (ms/step) |",
        "|---|---|---|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['compile']} | {r['class']} | {r['phase']} | {r['first_step_s']:.2f} | "
            f"{1000 * r['steady_s_per_step']:.1f} |"
        )
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
