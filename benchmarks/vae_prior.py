"""The tiny VAE's objective and latent shape, A/B at equal wall time (issue: a better prior).

    .venv/bin/python benchmarks/vae_prior.py --preprocessed data/preprocessed \
        --label elpv --seconds 120 [--variants mse,l1-ssim-fft,...]

Each variant builds the tiny VAE from params.yaml's model.tiny (with its overrides),
trains it for the same wall time on the base stage's images (base.data, the few-shot
subset by default) with `train.train_vae`, and is measured on what it was not trained on:
val PSNR and SSIM (64 val images), and the Frechet distance on EfficientNet-Lite0 features
of its reconstructions of N train images to N val images (`fd_effnet_lite0_recon`), next
to the real train images' own distance at the same N (`fd_effnet_lite0_real`: a perfect
VAE). Results: results/vae_prior.md (a block per run) and results/vae_prior-<label>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import time
from pathlib import Path

import torch
import yaml

from defectgen.config import merge_overrides, parse_params
from defectgen.core.diffusion import models, train, vae_loss
from defectgen.stages.base import _val_images, recon_distance, reconstruct
from defectgen.stages.diffusion_common import derive_seed, train_images

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

# name -> (base.vae_loss overrides, model.tiny overrides)
VARIANTS = {
    "mse": ({}, {}),  # today's objective and shape
    "l1": ({"pixel": "l1"}, {}),
    "l1-ssim-fft": ({"pixel": "l1", "ssim": 0.5, "fft": 0.5}, {}),
    "l1-ssim-fft-adversarial": (
        {"pixel": "l1", "ssim": 0.5, "fft": 0.5, "adversarial": 0.05, "adversarial_start": 0.3},
        {},
    ),
    "l1-adversarial": ({"pixel": "l1", "adversarial": 0.05, "adversarial_start": 0.3}, {}),
    "l1-perceptual": ({"pixel": "l1", "perceptual_effnet_lite0": 0.1}, {}),
    "l1-ssim-fft-perceptual": (
        {"pixel": "l1", "ssim": 0.5, "fft": 0.5, "perceptual_effnet_lite0": 0.1},
        {},
    ),
    "latent8": ({}, {"latent_channels": 8}),
    "factor2": ({}, {"vae_channels": [16, 32]}),
    "factor2-l1-ssim-fft": ({"pixel": "l1", "ssim": 0.5, "fft": 0.5}, {"vae_channels": [16, 32]}),
}


def run_variant(raw: dict, name: str, preprocessed: Path, seconds: float, work: Path) -> dict:
    loss_over, arch_over = VARIANTS[name]
    params = parse_params(
        merge_overrides(raw, {"base": {"vae_loss": loss_over}, "model": {"tiny": arch_over}}),
        name,
    )
    rt = models.runtime(params.model)
    per_class = train_images(preprocessed, data=params.base.data)
    images = [px for items in per_class.values() for _, px in items]
    models.quiet()
    pipe = models.build_tiny_pipeline(
        params.model.tiny, image_size=params.preprocess.image_size, work_dir=work, seed=params.seed
    )
    started = time.perf_counter()
    steps = train.train_vae(
        pipe.vae, train.to_pixels(images), steps=1_000_000, batch_size=params.base.batch_size,
        lr=params.base.vae_lr, gen=torch.Generator().manual_seed(derive_seed(params.seed, "vae")),
        rt=rt, log=lambda step, loss: None, objective=params.base.vae_loss, seconds=seconds,
    )  # fmt: skip
    wall = time.perf_counter() - started
    val = _val_images(preprocessed, params.base.fd_images)
    x = train.to_pixels(val[:64])
    recon = train.to_pixels(reconstruct(pipe.vae, val[:64], rt))
    out = recon_distance(pipe.vae, images, val, rt, seed=derive_seed(params.seed, "base-fd"))
    return {
        "variant": name,
        "vae_loss": loss_over,
        "tiny": arch_over,
        "steps": steps,
        "train_s": round(wall, 1),
        "latent": list(pipe.vae.encode(x[:1]).latent_dist.mean.shape[1:]),
        "psnr_val_db": train.reconstruction_psnr(pipe.vae, x, rt),
        "ssim_val": float(vae_loss.ssim(recon, x)),
        **out,
    }


def markdown(run: dict) -> str:
    lines = [
        f"## {run['label']} ({run['date']}, {run['machine']}, {run['threads']} threads)",
        "",
        f"Data `{run['preprocessed']}`; {run['seconds']} s of VAE training per variant; "
        f"{run['note']}",
        "",
        "| variant | latent | steps | fd_effnet_lite0_recon | fd_effnet_lite0_real | N "
        "| val PSNR dB | val SSIM |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in run["variants"]:
        lines.append(
            f"| {r['variant']} | {'x'.join(map(str, r['latent']))} | {r['steps']} | "
            f"{r['fd_effnet_lite0_recon']:.1f} | {r['fd_effnet_lite0_real']:.1f} | "
            f"{r['fd_images']} | {r['psnr_val_db']:.2f} | {r['ssim_val']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preprocessed", type=Path, required=True)
    ap.add_argument("--label", required=True)
    ap.add_argument("--seconds", type=float, default=120.0)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--params", type=Path, default=REPO / "params.yaml")
    ap.add_argument("--note", default="", help="anything a reader must know (e.g. contention)")
    args = ap.parse_args()
    raw = yaml.safe_load(args.params.read_text(encoding="utf-8"))
    work = HERE / "work" / "vae_prior"
    work.mkdir(parents=True, exist_ok=True)
    run = {
        "label": args.label,
        "date": dt.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "threads": torch.get_num_threads(),
        "preprocessed": str(args.preprocessed),
        "seconds": args.seconds,
        "note": args.note,
        "variants": [],
    }
    for name in args.variants.split(","):
        result = run_variant(raw, name, args.preprocessed, args.seconds, work)
        print(json.dumps(result), flush=True)
        run["variants"].append(result)
    results = HERE / "results"
    (results / f"vae_prior-{args.label}.json").write_text(json.dumps(run, indent=1) + "\n")
    with open(results / "vae_prior.md", "a", encoding="utf-8") as f:
        f.write("\n" + markdown(run))
    print(markdown(run))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
